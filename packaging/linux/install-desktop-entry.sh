#!/bin/sh
# Adds SpeechCT to the desktop menu of the current user: writes ~/.local/share/applications/speechct.desktop
# with this folder's absolute paths and installs the icon. Run it from the unpacked archive; run it again
# after moving the folder. `./install-desktop-entry.sh --remove` takes the entry out again.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
apps="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
icons="${XDG_DATA_HOME:-$HOME/.local/share}/icons/hicolor/256x256/apps"
if [ "${1:-}" = "--remove" ]; then
    rm -f "$apps/speechct.desktop" "$icons/speechct.png"
    echo "removed $apps/speechct.desktop"
    exit 0
fi
mkdir -p "$apps" "$icons"
cp "$here/speechct.png" "$icons/speechct.png"
sed -e "s|^Exec=.*|Exec=\"$here/speechct-app\" %f|" \
    -e "s|^TryExec=.*|TryExec=$here/speechct-app|" \
    -e "s|^Icon=.*|Icon=$here/speechct.png|" \
    "$here/speechct.desktop" > "$apps/speechct.desktop"
chmod 644 "$apps/speechct.desktop"
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$apps" || true
echo "installed $apps/speechct.desktop -> $here/speechct-app"
