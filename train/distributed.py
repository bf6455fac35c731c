"""torchrun-compatible data parallelism: process group set-up, an autograd-aware all-gather,
gradient averaging and the global-batch sharding that makes N processes equal one.

Launch with ``torchrun --nproc_per_node N -m train.cli teacher ...``: torchrun sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``); without them the run is a
single process and nothing here communicates. NCCL on CUDA, gloo on CPU.

Why gradients are averaged by hand rather than by wrapping models in ``DistributedDataParallel``:
the trainable part of a recipe is spread over several modules (a CT encoder, a text projection,
a logit scale, or the top Whisper layers) some of which may receive no gradient in a step (a VQ
codebook); one flat all-reduce after ``backward`` computes exactly what DDP computes (the mean
of the per-rank gradients) without DDP's unused-parameter bookkeeping.

Equivalence with one process: every rank scores its local rows against the embeddings gathered
from all ranks (:func:`gather_with_grad`, whose backward sums the gathered gradient over ranks
and returns each rank its own slice), so the sum of the per-rank local losses divided by the
world size is the single-process loss over the global batch, and so is its gradient once the
per-rank parameter gradients are averaged (:func:`average_gradients`).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_from_environ(device: str | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment variables (0, 1, 0 without them)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def pick_device(local_rank: int = 0, prefer: str | None = None) -> torch.device:
    """``prefer`` ("cpu", "cuda") or CUDA when present (one GPU per local rank), else CPU."""
    if prefer == "cpu" or (prefer is None and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA was asked for but is not available")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(device: str | None = None, timeout_s: float = 1800.0) -> DistEnv:
    """Join torchrun's process group if ``WORLD_SIZE > 1`` (NCCL on CUDA, gloo on CPU)."""
    rank, world, local = env_from_environ()
    dev = pick_device(local, device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gradient of the gathered tensor over ranks and
    hands each rank the slice of its own rows (gloo has no reduce_scatter, so all_reduce + slice)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        world = dist.get_world_size()
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: Tensor, env: DistEnv) -> Tensor:
    """``[world · n, ...]`` rows of every rank in rank order, differentiable w.r.t. the local ``x``.

    Every rank must pass the same ``n`` (the trainer drops a ragged last global batch). A single
    process gets ``x`` back unchanged.
    """
    if not env.distributed:
        return x
    return _GatherWithGrad.apply(x)


def average_gradients(parameters: Iterable[torch.nn.Parameter], env: DistEnv) -> None:
    """Replace each gradient by its mean over ranks (what DDP does), in one flat all-reduce.

    A parameter without a gradient on this rank counts as a zero gradient, so ranks stay in step.
    """
    if not env.distributed:
        return
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= env.world_size
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def mean_over_ranks(value: Tensor, env: DistEnv) -> Tensor:
    """Mean of a (detached) tensor over ranks, for logging the global loss."""
    if not env.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / env.world_size


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def broadcast_object(obj, env: DistEnv, src: int = 0):
    """Rank ``src``'s Python object on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def global_batches(n_items: int, global_batch: int, epoch: int, seed: int) -> list[list[int]]:
    """The epoch's global batches: a permutation seeded by ``(seed, epoch)``, cut into full batches.

    The same on every rank and for every world size, so N processes see exactly the batches one
    process sees (the ragged tail is dropped: InfoNCE needs equal rows per rank).
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_items, generator=gen).tolist()
    usable = (n_items // global_batch) * global_batch
    return [order[i : i + global_batch] for i in range(0, usable, global_batch)]


def local_rows(batch: list[int], env: DistEnv) -> tuple[list[int], int]:
    """This rank's contiguous share of a global batch and the offset of its first row."""
    if len(batch) % env.world_size:
        raise ValueError(f"global batch of {len(batch)} does not split over {env.world_size} processes")
    n = len(batch) // env.world_size
    return batch[env.rank * n : (env.rank + 1) * n], env.rank * n
