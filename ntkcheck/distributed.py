"""Ranks under torchrun: who this process is, its process group, and the order in which it takes work.

    torchrun --nproc-per-node K -m ntkcheck run ...            # sweep points over K ranks
    torchrun --nproc-per-node K -m ntkcheck lm solve ...       # kernel row blocks over K ranks (GPUs: cuda:LOCAL_RANK)
    torchrun --nnodes 2 --node-rank R --master-addr HOST --nproc-per-node K -m ntkcheck lm kernel ...

The work itself is split through the run store, not through messages: every
finished sweep point or kernel block is a file written atomically, and a
point or block is computed only by the rank holding its lock file
(ntkcheck.store). A rank takes its own share first (units rank, rank + K,
rank + 2K, ...), then any unit nobody has taken yet, so ranks start on
disjoint work, a fast rank helps a slow one, and a resumed run may use any
world size (it sees the finished files and takes what is left). Rank 0 writes
results and reports; the other ranks compute and stop at the closing barrier.
torch.distributed (gloo on CPUs, NCCL on GPUs) provides the process group,
its environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, set by torchrun)
and that barrier; a multi-node run needs its --out on a file system every
node sees.
"""
from __future__ import annotations

import os
from typing import Sequence, TypeVar

T = TypeVar("T")


def rank() -> int:
    """This process's global rank (torchrun's RANK; 0 outside torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    """The number of ranks (torchrun's WORLD_SIZE; 1 outside torchrun)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    """True on rank 0, the rank that writes results, reports and plots."""
    return rank() == 0


def rank_device(device: str | None) -> str | None:
    """'cuda' under torchrun with several ranks becomes this rank's GPU, cuda:LOCAL_RANK; else unchanged."""
    if device == "cuda" and world_size() > 1:
        return f"cuda:{local_rank()}"
    return device


def init(device: str | None = None) -> bool:
    """Join the process group when torchrun started several ranks (NCCL for a CUDA device, else gloo).

    Returns True when a group is (now) initialized. Idempotent; a no-op for one process."""
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if str(device or "").startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    import torch.distributed as dist

    if world_size() > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


def finish() -> None:
    """The closing barrier, then leave the process group."""
    import torch.distributed as dist

    if world_size() > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def take_order(units: Sequence[T]) -> list[T]:
    """``units`` in the order this rank takes them: its share units[rank::K] first, then the others'
    (taken only if still free when reached; see the module docstring)."""
    r, k = rank(), world_size()
    if k <= 1:
        return list(units)
    mine = list(units[r::k])
    others = [u for i, u in enumerate(units) if i % k != r]
    # the others' units from the far end of their shares, where their owners arrive last
    return mine + others[::-1]
