"""Where dictation audio comes from: an ``AudioSource`` calls ``callback(block)`` with float32
mono blocks of shape (n,) from its own thread, and ``on_error(message)`` when the device fails.
``SoundDeviceSource`` is the microphone (sounddevice/PortAudio); ``FileSource`` replays a file
(tests, the self-test, demos)."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.errors import AudioError

SAMPLE_RATE = 16_000
BLOCK = 1600  # 0.1 s at 16 kHz

NO_MICROPHONE = "no microphone found: connect one, or choose one in File ▸ Settings ▸ Microphone"

Callback = Callable[[np.ndarray], None]
ErrorCallback = Callable[[str], None]


class AudioSource(ABC):
    sample_rate: int = SAMPLE_RATE

    @abstractmethod
    def start(self, callback: Callback, on_error: ErrorCallback) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @property
    @abstractmethod
    def name(self) -> str: ...


def input_devices() -> list[tuple[int, str]]:
    """(index, name) of every input device PortAudio sees; [] when none or PortAudio is missing."""
    try:
        import sounddevice as sd

        return [(i, d["name"]) for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]
    except Exception:  # no PortAudio library / no audio system: the app says "no microphone"
        return []


class SoundDeviceSource(AudioSource):
    """The microphone. ``device``: a PortAudio index or name, None for the system default."""

    def __init__(self, device: int | str | None = None, sample_rate: int = SAMPLE_RATE, block: int = BLOCK):
        self.device, self.sample_rate, self.block = device, sample_rate, block
        self._stream = None
        self._on_error: ErrorCallback | None = None

    @property
    def name(self) -> str:
        return f"microphone {self.device if self.device is not None else '(default)'}"

    def start(self, callback: Callback, on_error: ErrorCallback) -> None:
        try:
            import sounddevice as sd
        except OSError as exc:
            raise AudioError(f"no audio system (PortAudio not found: {exc})") from exc
        self._on_error = on_error
        if self.device is None and not input_devices():
            raise AudioError(NO_MICROPHONE)

        def audio_callback(indata, frames, time_info, status):
            # Runs on PortAudio's thread: copy and hand over, nothing else (no locks, no I/O).
            callback(indata[:, 0].copy())

        def finished():
            if self._stream is not None and self._on_error is not None:  # stopped by the device, not by us
                self._on_error(f"the {self.name} stopped (unplugged?); the recording so far is kept")

        try:
            self._stream = sd.InputStream(device=self.device, channels=1, samplerate=self.sample_rate,
                                          blocksize=self.block, dtype="float32", callback=audio_callback,
                                          finished_callback=finished)
            self._stream.start()
        except Exception as exc:  # PortAudioError, ValueError (no such device)
            self._stream = None
            if "querying device -1" in str(exc) or "No Default Input Device" in str(exc):
                raise AudioError(NO_MICROPHONE) from exc  # PortAudio's words for "there is none"
            raise AudioError(f"cannot open the {self.name}: {exc}") from exc

    def stop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
                stream.close()
            except Exception:  # a device that vanished cannot be stopped cleanly; it is gone anyway
                pass


class FileSource(AudioSource):
    """Replays a sound file as 0.1 s blocks, in real time (``realtime=True``) or as fast as possible."""

    def __init__(self, path: str | Path, realtime: bool = False, block: int = BLOCK):
        from engine.audio import load_audio

        self.path = Path(path)
        self.waveform = load_audio(self.path)  # 16 kHz mono float32
        self.realtime, self.block = realtime, block
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.finished = threading.Event()

    @property
    def name(self) -> str:
        return f"file {self.path.name}"

    def start(self, callback: Callback, on_error: ErrorCallback) -> None:
        self._stop.clear()
        self.finished.clear()

        def feed():
            t0 = time.perf_counter()
            for n, start in enumerate(range(0, len(self.waveform), self.block)):
                if self._stop.is_set():
                    break
                callback(self.waveform[start:start + self.block].copy())
                if self.realtime:
                    time.sleep(max(0.0, t0 + (n + 1) * self.block / self.sample_rate - time.perf_counter()))
            self.finished.set()

        self._thread = threading.Thread(target=feed, name="file-audio-source", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
