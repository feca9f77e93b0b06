"""DistributedDataParallel helpers for ``torchrun``.

    torchrun --nproc_per_node 2 -m cellseg train --config unet_tiny --data data/synth/competition

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; ``init`` then joins the process group (nccl on
CUDA, gloo on CPU). Without those variables everything here is a no-op on a single process, so the
training code has one path. Only rank 0 writes checkpoints and logs and runs validation.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str | None = None) -> torch.device:
    """``preference`` ("cpu", "cuda", "cuda:1") or CUDA when available, else CPU."""
    if preference:
        dev = torch.device(preference)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {preference!r} requested but CUDA is not available; "
                               "use --set train.device=cpu")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def init(device_preference: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun, else describe the single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=pick_device(device_preference))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    base = pick_device(device_preference)
    if base.type == "cuda":
        # UNTESTED here (no GPU; docs/status.md): one GPU per local rank and nccl; the gloo
        # branch below is what tests/test_ddp.py and tests/test_faults.py run.
        # scripts/gpu_check.py runs 2-process nccl when two GPUs exist
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        # rank 0 validates alone while the others wait at a collective: allow it an hour
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=1))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from rank ``src`` to every rank (identity on one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks (same keys on every rank)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on any (a stop request seen by one rank)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)
