"""Data-parallel training on PyTorch DDP (gloo on CPU, NCCL on GPU), launched by torchrun.

    torchrun --nproc_per_node=2 -m xmr train --model vsepp --preset cpu --data flickr8k --out runs/x
    # several machines: torchrun --nnodes=2 --node_rank=0|1 --rdzv_backend=c10d \\
    #     --rdzv_endpoint=HOST:29500 --nproc_per_node=N -m xmr train ...

Every rank builds the same global batch (the batch order depends only on the seed and epoch),
encodes its own contiguous slice of it through the DDP-wrapped model, and all-gathers the per-item
parts *with gradients*, as large contrastive trainers do; the in-batch loss (hardest negatives,
JGCAR's triplets and bi-rank sets) is then computed over the whole global batch on every rank.
Gradients flow back through the gather (a sum over ranks) and DDP averages them, which gives each
parameter exactly the gradient of the single-process loss on the global batch
(``tests/test_distributed.py``). The loss itself is replicated, so pairwise models gain speed
only in their encoders. Validation and checkpoints run on rank 0; the other ranks wait.
"""
from __future__ import annotations

import gc
import os
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
# Imported here, before any process group exists: its functions take ``group=group.WORLD`` as a
# default argument, evaluated at import, so importing it after init_process_group would pin the
# default group in those defaults for the life of the interpreter and ``teardown`` could never
# free it.
import torch.distributed.nn.functional as dist_nn

from xmr.interface import Reps


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup() -> Context:
    """Join the process group torchrun describes in the environment; a plain run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return Context(dist.get_rank(), dist.get_world_size())


def shard(n: int, ctx: Context) -> slice:
    """This rank's contiguous rows of a global batch of ``n`` (which must split evenly)."""
    if n % ctx.world:
        raise ValueError(f"batch size {n} does not split over {ctx.world} processes")
    size = n // ctx.world
    return slice(ctx.rank * size, (ctx.rank + 1) * size)


def part(n: int, ctx: Context, align: int = 1) -> slice:
    """This rank's contiguous share of ``n`` items (a sharded index build), none left empty.

    Boundaries fall on multiples of ``align`` where that still gives every rank an item, so that
    batches of ``align`` items are the ones a single process forms (equal batches, equal numbers);
    otherwise the shares are as even as possible."""
    if n < ctx.world:
        raise ValueError(f"{n} item(s) do not split over {ctx.world} processes; run fewer")
    size = -(-n // (ctx.world * align)) * align
    if size * (ctx.world - 1) >= n:
        return slice(ctx.rank * n // ctx.world, (ctx.rank + 1) * n // ctx.world)
    return slice(ctx.rank * size, min(n, (ctx.rank + 1) * size))


def share(obj, ctx: Context):
    """Rank 0's ``obj`` (picklable), on every rank."""
    if not ctx.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, 0)
    return box[0]


def gather_objects(obj, ctx: Context) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ctx.active:
        return [obj]
    out = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def _pad_to(t: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Zero-pad (False for masks) dims 1.. of ``t`` up to ``shape`` (per-rank text widths differ)."""
    pad = []
    for have, want in zip(reversed(t.shape[1:]), reversed(shape[1:])):
        pad += [0, want - have]
    return torch.nn.functional.pad(t, pad) if any(pad) else t


def gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0, keeping gradients for floating tensors."""
    shape = torch.tensor(t.shape, dtype=torch.long)
    dist.all_reduce(shape, op=dist.ReduceOp.MAX)
    t = _pad_to(t, shape.tolist())
    if t.is_floating_point():
        with warnings.catch_warnings():  # its suggested successor has no autograd on gloo yet
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(dist_nn.all_gather(t.contiguous()))
    carrier = t.to(torch.uint8) if t.dtype == torch.bool else t  # gloo has no bool collectives
    parts = [torch.empty_like(carrier) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, carrier.contiguous())
    return torch.cat(parts).to(t.dtype)


def gather_reps(reps: Reps) -> Reps:
    return {k: gather(v) for k, v in reps.items()}


def stop_flag(stop: bool, ctx: Context) -> bool:
    """Rank 0's decision (e.g. early stopping), shared with every rank."""
    if not ctx.active:
        return stop
    flag = torch.tensor([int(stop)])
    dist.broadcast(flag, 0)
    return bool(flag.item())


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()


def teardown(ctx: Context) -> None:
    """Leave the process group at the end of a run, after the caller has dropped its DDP wrapper.

    Gloo runs collectives on its own worker threads, and a worker destroys a finished collective
    only after waking the main thread waiting on it. The final barrier's work takes with it the
    gradient all-reduces DDP launched in backward, whose captured thread-local state holds a Python
    object (the autograd context torch stashes there during backward). If the main thread has
    meanwhile reached interpreter shutdown, that decref takes the GIL, CPython ends the thread with
    pthread_exit, and the unwind through a noexcept destructor aborts the process ("terminate
    called without an active exception", SIGABRT; more likely under CPU load). destroy_process_group
    does not stop gloo's threads; only freeing the group joins them. So: destroy it, collect the
    released DDP wrapper (its reducer holds the group) and drop the last reference here, from Python
    (whose binding releases the GIL while the group's destructor joins its threads), while the
    interpreter is fully alive."""
    if not ctx.active or not dist.is_initialized():
        return
    group = dist.group.WORLD
    dist.destroy_process_group()
    gc.collect()
    del group  # the last reference: ~ProcessGroupGloo joins the worker threads


def worker_threads(settle_s: float = 5.0) -> list[str]:
    """Names of this process's gloo threads still running after up to ``settle_s`` seconds (Linux;
    empty elsewhere).

    A joined thread can stay listed in /proc for a moment: pthread_join returns when the kernel
    clears the thread's tid, which it does before it unlinks the exiting task, and a loaded machine
    can preempt the thread in between (results/README.md, "Test stability"). So poll briefly; a
    thread nobody joined stays."""
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):
        return []
    deadline = time.monotonic() + settle_s
    while True:
        names = []
        for tid in os.listdir(tasks):
            try:
                with open(f"{tasks}/{tid}/comm") as f:
                    names.append(f.read().strip())
            except OSError:  # the thread ended meanwhile
                pass
        left = [n for n in names if "gloo" in n]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.01)
