#!/usr/bin/env bash
# Installs the Debian packages SpeechCT needs (idempotent). As root it installs them;
# with passwordless sudo it uses sudo; otherwise it prints the exact command and fails.
#   main:       espeak-ng (TTS), libportaudio2 (sounddevice), libosmesa6 (offscreen VTK),
#               Qt offscreen runtime libraries, xvfb for a virtual display,
#               desktop-file-utils (validates the installer's .desktop entry);
#               for the app's X session test: xdotool (X input events), x11-xserver-utils (xset:
#               key auto-repeat), pulseaudio + pulseaudio-utils (null-sink microphone, paplay),
#               libasound2-plugins (PortAudio's ALSA reaches PulseAudio);
#               for the department tests: orthanc + orthanc-dicomweb (the PACS they run on loopback;
#               the Debian service this installs is stopped and disabled: the tests start their own)
#               and dcmtk (dsrdump checks the DICOM SR we write)
# Under CI=true every tool the tests need must be on PATH afterwards, or the script fails
# (the tests skip without them elsewhere, and a skipped check would pass CI silently).
#   non-free:   MBROLA voices (Debian contrib/non-free, enabled through a private
#               sources list so the system's apt configuration is never edited)
set -euo pipefail

MAIN_PKGS=(espeak-ng libportaudio2 libosmesa6 libgl1 libegl1 libxkbcommon0 libxkbcommon-x11-0
           libfontconfig1 libdbus-1-3 xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0
           libxcb-render-util0 libxcb-xinerama0 libxcb-cursor0 libxcb-shape0 libxcb-randr0 desktop-file-utils
           xdotool x11-xserver-utils pulseaudio pulseaudio-utils libasound2-plugins
           orthanc orthanc-dicomweb dcmtk)
TEST_TOOLS=(Xvfb xset xdotool pulseaudio paplay espeak-ng Orthanc dsrdump)

check_tools() {
  [ "${CI:-}" = "true" ] || return 0
  local absent=()
  for t in "${TEST_TOOLS[@]}"; do command -v "$t" >/dev/null 2>&1 || absent+=("$t"); done
  if [ ${#absent[@]} -gt 0 ]; then
    echo "CI: tools the tests need are missing after installing: ${absent[*]}" >&2
    exit 1
  fi
}
MBROLA_PKGS=(mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1)

missing=()
for p in "${MAIN_PKGS[@]}" "${MBROLA_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then check_tools; exit 0; fi

if [ "$(id -u)" -eq 0 ]; then SUDO=""
elif sudo -n true 2>/dev/null; then SUDO="sudo"
else
  echo "Missing Debian packages: ${missing[*]}" >&2
  echo "Run as root: apt-get install -y ${MAIN_PKGS[*]}" >&2
  echo "and for the MBROLA voices (contrib/non-free): apt-get install -y ${MBROLA_PKGS[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || true
had_orthanc=$(dpkg-query -W -f='${Status}' orthanc 2>/dev/null | grep -c "install ok installed" || true)
$SUDO apt-get install -y -qq "${MAIN_PKGS[@]}" >/dev/null
if [ "$had_orthanc" = 0 ]; then
  # Installed just now: the package's own service (ports 8042/4242) is not ours to run; the test fixtures
  # start an Orthanc of their own on free loopback ports. A machine's existing Orthanc is left alone.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true
  else
    $SUDO service orthanc stop >/dev/null 2>&1 || true
  fi
fi

# MBROLA: repeat the machine's own Debian entries with contrib + non-free, privately.
work=$(mktemp -d)
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
src="$work/sources.list"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
uris=$(grep -h -E '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
       | grep -o 'https\?://[^ ]*debian[^ ]*' | sort -u || true)
main_uri=$(echo "$uris" | grep -v security | head -n1)
sec_uri=$(echo "$uris" | grep security | head -n1)
main_uri=${main_uri:-http://deb.debian.org/debian}
sec_uri=${sec_uri:-http://deb.debian.org/debian-security}
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
{
  echo "deb [signed-by=$keyring] $main_uri $codename main contrib non-free"
  echo "deb [signed-by=$keyring] $main_uri $codename-updates main contrib non-free"
  echo "deb [signed-by=$keyring] $sec_uri $codename-security main contrib non-free"
} > "$src"
opts=(-o "Dir::Etc::SourceList=$src" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
$SUDO apt-get "${opts[@]}" update -qq
$SUDO apt-get "${opts[@]}" install -y -qq "${MBROLA_PKGS[@]}" >/dev/null
rm -rf "$work"
check_tools
