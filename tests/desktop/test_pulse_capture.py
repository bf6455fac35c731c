"""Real-time capture through the sounddevice path: PulseAudio with a null sink plays the sample
dictation (paplay) while ``SoundDeviceSource`` + ``Recorder`` record the sink's monitor; the
recording must hold the played audio (normalised cross-correlation). Needs pulseaudio,
pulseaudio-utils and libasound2-plugins (ENVIRONMENT.md); skipped without them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
WAV = REPO / "assets" / "samples" / "study-001" / "dictation.wav"

RECORD = """
import sys, time
sys.path.insert(0, {repo!r})
from desktop.dictation.recorder import Recorder
from desktop.dictation.sources import SoundDeviceSource
rec = Recorder({folder!r})
rec.start(SoundDeviceSource(device="pulse"), {out!r})
print("recording", flush=True)
sys.stdin.readline()
rec.stop()
print("stopped", flush=True)
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("pulseaudio") and shutil.which("paplay")), reason="needs PulseAudio"),
]


@pytest.fixture
def pulse(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    env = dict(os.environ, HOME=str(tmp_path), XDG_RUNTIME_DIR=str(run), PULSE_SERVER=f"unix:{run}/pulse.sock")
    daemon = subprocess.Popen(
        ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--system=false",
         "-L", f"module-native-protocol-unix socket={run}/pulse.sock auth-anonymous=1",
         "-L", "module-null-sink sink_name=vsink rate=16000 channels=1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(100):
        if (run / "pulse.sock").exists():
            break
        time.sleep(0.1)
    else:
        daemon.kill()
        pytest.skip("pulseaudio did not start: " + daemon.stderr.read().decode()[-300:])
    yield env
    daemon.kill()
    daemon.wait(10)


def test_sounddevice_records_what_was_played(pulse, tmp_path):
    out = tmp_path / "captured.wav"
    env = dict(pulse, PULSE_SOURCE="vsink.monitor", PULSE_SINK="vsink")
    rec = subprocess.Popen([sys.executable, "-c", RECORD.format(repo=str(REPO), folder=str(tmp_path), out=str(out))],
                           env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = rec.stdout.readline().strip()
        assert line == "recording", rec.stderr.read()
        time.sleep(0.5)
        subprocess.run(["paplay", "--device=vsink", str(WAV)], env=env, check=True, timeout=120)
        time.sleep(0.5)
        rec.stdin.write("\n")
        rec.stdin.flush()
        assert rec.stdout.readline().strip() == "stopped"
    finally:
        if rec.poll() is None:
            rec.kill()
    got, sr = sf.read(out, dtype="float32")
    played, sr_played = sf.read(WAV, dtype="float32")
    assert sr == sr_played == 16_000
    assert len(got) >= len(played)  # real time: at least the whole playback was captured
    # where the playback sits in the capture, and how alike they are there
    from scipy.signal import correlate

    lag = int(np.argmax(correlate(got, played, mode="valid", method="fft")))
    seg = got[lag:lag + len(played)]
    r = float(np.dot(seg, played) / (np.linalg.norm(seg) * np.linalg.norm(played) + 1e-12))
    assert r > 0.95, f"correlation {r:.3f} at lag {lag / sr:.2f} s"
