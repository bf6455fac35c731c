"""Embed a 10 s and a 60 s spoken report on CPU: our unpadded student against padded peers.

    .venv/bin/python bench/speech_encoder.py [--runs 5] [--threads 2] [--durations 10 60]

The dictations are real speech made by espeak-ng (en-us, 150 wpm) reading CT findings, cut to
the exact duration. Each row is the median wall time over ``--runs`` after one warm-up run:

- ``log-mel``: ``engine.audio.log_mel`` (unpadded);
- ``ours``: ``SpeechStudent.embed_audio`` (whisper-base, log-mel + unpadded 30 s / 2 s windows
  + pooling + projection), the path training and inference share;
- ``hf padded``: transformers' ``WhisperEncoder.forward`` on every window padded to 30 s (what
  the encoder insists on), plus log-mel: the naive way;
- ``ct2 padded``: CTranslate2's Whisper encoder (faster-whisper's engine, float32, same thread
  count) on the same padded windows, plus log-mel: the fastest peer.

Prints median wall and process-CPU milliseconds and the ratios ours / peer (below 1.0 = faster).
Wall times depend on what else the machine runs; CPU times much less so.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

FINDINGS = (
    "Trachea and both main bronchi are in the midline and their lumens are open. "
    "The heart size is normal and there is no pericardial effusion. "
    "Calcified atherosclerotic plaques are seen in the thoracic aorta and the coronary arteries. "
    "There is a small sliding hiatal hernia. Mediastinal lymph nodes are not enlarged. "
    "Centrilobular emphysema is present in both upper lobes. "
    "A four millimetre solid nodule is seen in the superior segment of the right lower lobe. "
    "There are subsegmental atelectatic changes in both lower lobes. "
    "No consolidation, no pleural effusion and no pneumothorax is detected. "
    "Mild interlobular septal thickening is noted at the lung bases. "
    "The visualised upper abdominal organs are unremarkable. "
)


def spoken_report(seconds: float) -> np.ndarray:
    """espeak-ng speech of the findings text, repeated as needed and cut to ``seconds`` (16 kHz)."""
    import soundfile

    from engine.audio import SAMPLE_RATE, to_16k

    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed to make the dictations (apt-get install espeak-ng)")
    wav = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "150", "--stdout", FINDINGS], check=True, capture_output=True
    ).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    speech = to_16k(samples, rate)
    needed = int(seconds * SAMPLE_RATE)
    return np.tile(speech, needed // speech.size + 1)[:needed]


def median_ms(function, runs: int) -> tuple[float, float]:
    """Median (wall ms, process CPU ms) over ``runs`` calls after one warm-up call.

    CPU time (all threads of this process, CTranslate2's included) is the steadier figure on a
    shared machine: other processes stretch wall time but not the work done here.
    """
    function()  # warm-up: first calls allocate and pick kernels
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--durations", type=float, nargs="+", default=[10.0, 60.0])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import ctranslate2

    from engine import audio
    from engine.models.speech import SpeechStudent, load_speech_config, pool_frames
    from engine.weights.whisper import packaged_ct2_folder

    start = time.perf_counter()
    student = SpeechStudent.from_backbone(load_speech_config("whisper-base-top2")).eval()
    load_s = time.perf_counter() - start
    ct2 = ctranslate2.models.Whisper(
        str(packaged_ct2_folder()), device="cpu", compute_type="float32", intra_threads=args.threads
    )

    def hf_padded(waveform):
        windows = audio.split_windows(audio.log_mel(waveform), pad=True)
        with torch.no_grad():
            pooled = []
            for window, real in windows:
                hidden = student.encoder(torch.from_numpy(window[None])).last_hidden_state
                pooled.append(pool_frames(hidden, torch.tensor([(real + 1) // 2])))
            return student.projection(torch.cat(pooled).mean(0))

    def ct2_padded(waveform):
        windows = audio.split_windows(audio.log_mel(waveform), pad=True)
        batch = np.ascontiguousarray(np.stack([w for w, _ in windows]))
        return ct2.encode(ctranslate2.StorageView.from_array(batch), to_cpu=True)

    print(f"whisper-base student loaded in {load_s:.2f} s; torch threads {args.threads}, runs {args.runs}")
    print("median wall ms (process CPU ms in brackets)")
    print(f"{'audio':>6} {'win':>3} {'log-mel':>15} {'ours':>17} {'hf padded':>17} {'ct2 padded':>17}"
          f" {'ours/hf':>13} {'ours/ct2':>13}")
    for seconds in args.durations:
        waveform = spoken_report(seconds)
        windows = len(audio.split_windows(audio.log_mel(waveform)))
        mel = median_ms(lambda w=waveform: audio.log_mel(w), args.runs)
        ours = median_ms(lambda w=waveform: student.embed_audio(w), args.runs)
        hf = median_ms(lambda w=waveform: hf_padded(w), args.runs)
        ct = median_ms(lambda w=waveform: ct2_padded(w), args.runs)

        def cell(t):
            return f"{t[0]:>7.0f} ({t[1]:>6.0f})"

        def ratio(a, b):
            return f"{a[0] / b[0]:>5.2f} ({a[1] / b[1]:>4.2f})"

        print(f"{seconds:>5.0f}s {windows:>3d} {cell(mel):>15} {cell(ours):>17} {cell(hf):>17} {cell(ct):>17}"
              f" {ratio(ours, hf):>13} {ratio(ours, ct):>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
