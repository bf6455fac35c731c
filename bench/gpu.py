"""Accelerator timings: the paper-config CT encoder in bf16 at batch 1 and 8, and the speech
student on 60 s of audio (if ``engine.models.speech`` offers ``SpeechStudent``).

Weights are random (timing does not depend on them), so nothing is downloaded or converted.

    python bench/gpu.py                         # CUDA, bf16, ctclip-paper, batches 1 and 8
    python bench/gpu.py --device cpu --quick    # a quick check that the script works anywhere

Prints milliseconds per call (median) and peak memory (CUDA: max allocated; CPU: RSS
high-water mark over the timed calls).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from engine.models.ct import CTEncoder, load_ct_config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM on Linux
        except OSError:
            pass


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _time(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    fn()  # warm-up (kernels, caches)
    _sync(device)
    _reset_peak(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, _peak_gib(device)


def bench_ct(config_name: str, batches: list[int], device, dtype, repeats: int) -> None:
    config = load_ct_config(config_name)
    torch.manual_seed(0)
    encoder = CTEncoder(config).to(device=device, dtype=dtype).eval()
    print(f"CT encoder {config.name} {config.input_size} (z, y, x), {dtype}, {device}:")
    for batch in batches:
        x = torch.rand(batch, 1, *config.input_size, device=device, dtype=dtype) * 2 - 1

        def run(x=x):
            with torch.inference_mode():
                return encoder(x)

        ms, peak = _time(run, device, repeats)
        print(f"  batch {batch:2d}: {ms:9.1f} ms/call  {ms / batch:8.1f} ms/volume  peak {peak:6.2f} GiB")
        del x


def bench_speech(seconds: float, device, dtype, repeats: int) -> None:
    try:
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        from engine.models.speech import SpeechStudent, SpeechStudentConfig
    except ImportError as exc:
        print(f"speech student: skipped ({exc})")
        return
    try:
        # whisper-base encoder shape, random weights.
        whisper = WhisperConfig(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
                                num_mel_bins=80, max_source_positions=1500)
        student = SpeechStudent(SpeechStudentConfig(), WhisperEncoder(whisper)).to(device=device, dtype=dtype).eval()
        wave = (np.random.default_rng(0).standard_normal(int(seconds * 16_000)) * 0.1).astype(np.float32)
        ms, peak = _time(lambda: student.embed_waveforms([wave]), device, repeats)
    except Exception as exc:  # someone else's API: report, don't crash the CT numbers
        print(f"speech student: skipped ({type(exc).__name__}: {exc})")
        return
    print(f"speech student (whisper-base shape) on {seconds:.0f} s, {dtype}, {device}: "
          f"{ms:9.1f} ms/call  peak {peak:6.2f} GiB")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--quick", action="store_true", help="cpu-small config, batches 1 and 2, one repeat, 10 s audio")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", default="ctclip-paper")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--speech-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; use --device cpu (with --quick for a check)")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if args.quick:
        args.config, args.batches, args.repeats, args.speech_seconds = "cpu-small", [1, 2], 1, 10.0
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    else:
        print(f"device: CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    bench_ct(args.config, args.batches, device, dtype, args.repeats)
    bench_speech(args.speech_seconds, device, dtype, args.repeats)


if __name__ == "__main__":
    main()
