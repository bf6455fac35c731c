"""Our CT encoder vs CT-CLIP's own CTViT, equal weights, one 240x480x480 volume.

The reference is CT-CLIP's code from a scratch checkout outside the repository (default
/work/scratch/CT-CLIP, with the two hard-coded ``cuda`` device arguments of its encode
path replaced by ``cpu``); it needs ``einops``, ``beartype`` and
``vector-quantize-pytorch==1.1.2`` (its pinned version). ``torchvision``, imported by
ctvit.py only for its GAN losses, is stubbed if absent.

Each side runs in its own process (so peak RSS is its own): the reference builds CTViT
with random weights (seeded) and a random ``to_visual_latent``, saves them in CT-CLIP's
key names, and times ``CTViT(x, return_encoded_tokens=True)`` -> mean over t ->
projection; ours imports that file through ``engine.weights.ctclip.import_ctclip`` and
times ``CTEncoder.forward``. Peak memory is the RSS high-water mark over the timed
encodes (reset after the model is built) and over the process's whole life.

    .venv/bin/python bench/ct_encoder.py [--repeats 3] [--threads 2] [--stages]
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

PAPER = dict(dim=512, codebook_size=8192, image_size=480, patch_size=20, temporal_patch_size=10,
             spatial_depth=4, temporal_depth=4, dim_head=32, heads=8)
SHAPE = (1, 1, 240, 480, 480)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _input(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(SHAPE, generator=gen) * 2 - 1


def _import_reference(src: Path):
    pkg_dir = src / "transformer_maskgit" / "transformer_maskgit"
    if not (pkg_dir / "ctvit.py").is_file():
        raise SystemExit(f"no CT-CLIP checkout at {src} (fetch ibrahimethemhamamci/CT-CLIP there)")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torchvision")
        stub.transforms, stub.utils = types.ModuleType("transforms"), types.ModuleType("utils")
        sys.modules["torchvision"] = stub
    # A bare package object, so that its __init__ (datasets, trainers, T5) is not run.
    pkg = types.ModuleType("transformer_maskgit")
    pkg.__path__ = [str(pkg_dir)]
    sys.modules["transformer_maskgit"] = pkg
    return importlib.import_module("transformer_maskgit.ctvit").CTViT


def _timed(fn, repeats: int) -> tuple[list[float], object]:
    out = fn()  # warm-up
    _reset_peak_rss()
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    _timed.cpu_seconds = cpu
    return times, out


def worker_reference(args, tmp: Path) -> dict:
    ctvit_cls = _import_reference(Path(args.ctclip_src))
    torch.manual_seed(args.seed)
    ctvit = ctvit_cls(**PAPER).eval()
    proj = torch.nn.Linear(24 * 24 * 512, 512, bias=False)
    state = {"visual_transformer." + k: v for k, v in ctvit.state_dict().items()}
    state["to_visual_latent.weight"] = proj.weight.detach()
    state["temperature"] = torch.tensor(1.0)
    torch.save(state, tmp / "weights.pt")
    del state
    x = _input(args.seed)

    def run():
        with torch.no_grad():
            tokens = ctvit(x, return_encoded_tokens=True)
            return tokens, proj(tokens.mean(dim=1).reshape(1, -1))

    times, (tokens, latent) = _timed(run, args.repeats)
    torch.save({"tokens": tokens, "latent": latent}, tmp / "reference_out.pt")
    return {"times": times, "cpu": _timed.cpu_seconds}


def stage_times(encoder, x: torch.Tensor) -> dict[str, float]:
    """Seconds per stage of our encoder (bias cache already warm)."""
    out, t = {}, time.perf_counter()

    def lap(name):
        nonlocal t
        now = time.perf_counter()
        out[name] = now - t
        t = now

    with torch.no_grad():
        tokens = encoder.patch_embed(x)
        lap("patch embedding")
        b, tt, h, w, d = tokens.shape
        bias = encoder.rel_pos_bias(h, w, x.device, x.dtype)
        lap("relative position bias (cached)")
        seq = encoder.spatial(tokens.reshape(b * tt, h * w, d), (b, tt, h, w), bias)
        lap("spatial layers")
        seq = seq.reshape(b, tt, h, w, d).permute(0, 2, 3, 1, 4).reshape(b * h * w, tt, d)
        seq = encoder.temporal(seq, (b, tt, h, w))
        tokens = seq.reshape(b, h, w, tt, d).permute(0, 3, 1, 2, 4).contiguous()
        lap("temporal layers")
        tokens = encoder.codebook(tokens)
        lap("VQ codebook")
        encoder.pool(tokens)
        lap("pooling")
    return out


def worker_ours(args, tmp: Path) -> dict:
    from engine.weights.ctclip import import_ctclip

    imp = import_ctclip(tmp / "weights.pt")
    encoder = imp.build_encoder()
    del imp
    x = _input(args.seed)

    def run():
        with torch.no_grad():
            tokens = encoder.encode_tokens(x)
            return tokens, encoder.pool(tokens)

    times, (tokens, latent) = _timed(run, args.repeats)
    torch.save({"tokens": tokens, "latent": latent}, tmp / "ours_out.pt")
    result = {"times": times, "cpu": _timed.cpu_seconds}
    if args.stages:
        result["stages"] = stage_times(encoder, x)
    return result


def _run_worker(kind: str, args, tmp: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--tmp", str(tmp), "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--seed", str(args.seed), "--ctclip-src", args.ctclip_src]
    if args.stages:
        cmd.append("--stages")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ctclip-src", default="/work/scratch/CT-CLIP")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", action="store_true", help="also print our per-stage seconds")
    parser.add_argument("--worker", choices=["reference", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.worker:
        fn = worker_reference if args.worker == "reference" else worker_ours
        result = fn(args, Path(args.tmp))
        result["peak_rss_encode_gib"] = _status_kib("VmHWM") / 2**20
        import resource

        result["peak_rss_process_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="ct_bench_") as tmp_name:
        tmp = Path(tmp_name)
        ref = _run_worker("reference", args, tmp)
        ours = _run_worker("ours", args, tmp)
        r_out = torch.load(tmp / "reference_out.pt", weights_only=True)
        o_out = torch.load(tmp / "ours_out.pt", weights_only=True)

    same_code = (r_out["tokens"] == o_out["tokens"]).all(dim=-1).float().mean().item()
    token_diff = (r_out["tokens"] - o_out["tokens"]).abs().max().item()
    norm = torch.nn.functional.normalize
    latent_diff = (norm(r_out["latent"], dim=-1) - norm(o_out["latent"], dim=-1)).abs().max().item()
    r_med, o_med = statistics.median(ref["times"]), statistics.median(ours["times"])
    print(f"CT encoder, CT-CLIP paper config, input {SHAPE}, {args.threads} threads, "
          f"median of {args.repeats} after 1 warm-up")
    print(f"{'':10}{'median s':>10}{'all runs (s)':>26}{'median CPU s':>14}{'peak RSS encode':>18}"
          f"{'peak RSS process':>18}")
    for name, res in (("CT-CLIP", ref), ("ours", ours)):
        runs = ", ".join(f"{t:.2f}" for t in res["times"])
        print(f"{name:10}{statistics.median(res['times']):>10.2f}{runs:>26}{statistics.median(res['cpu']):>14.2f}"
              f"{res['peak_rss_encode_gib']:>14.2f} GiB{res['peak_rss_process_gib']:>14.2f} GiB")
    cpu_ratio = statistics.median(ref["cpu"]) / statistics.median(ours["cpu"])
    print(f"speed-up (CT-CLIP / ours): wall {r_med / o_med:.2f}x, CPU time {cpu_ratio:.2f}x "
          f"(CPU time is the steadier figure on a shared machine); "
          f"peak RSS ratio (encode): {ref['peak_rss_encode_gib'] / ours['peak_rss_encode_gib']:.2f}x")
    print(f"outputs: tokens with the same code {same_code * 100:.3f}%, max |token diff| {token_diff:.2e}, "
          f"max |normalised latent diff| {latent_diff:.2e}")
    if "stages" in ours:
        print("our stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in ours["stages"].items()))
    if same_code < 1.0 or latent_diff > 1e-4:
        raise SystemExit("outputs differ")


if __name__ == "__main__":
    main()
