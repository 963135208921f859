"""Where training runs: one device, the paper's two towers on two GPUs, or DDP under torchrun.

- ``--device cpu`` or ``cuda:0``: both towers on that device.
- ``--device cuda:0,cuda:1``: model parallel as in the paper (tower 0 and tower 1 on
  their own GPU, exchanging activations at conv3, fc6, fc7 and fc8).
- under ``torchrun`` (WORLD_SIZE > 1): data parallel with DistributedDataParallel, one
  process per GPU (or per CPU process with gloo), across machines too; each process may
  itself hold two towers on two GPUs if LOCAL_RANK-relative devices are given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistInfo", "agree", "setup", "teardown", "wrap"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    tower_devices: tuple[str, str]

    @property
    def device(self) -> torch.device:
        """Where inputs go (tower 0's device)."""
        return torch.device(self.tower_devices[0])

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def parse_devices(spec: str, local_rank: int = 0) -> tuple[str, str]:
    devs = [d.strip() for d in spec.split(",") if d.strip()]
    if not 1 <= len(devs) <= 2:
        raise ValueError(f"--device takes one or two devices (e.g. cpu, cuda:0, cuda:0,cuda:1), got {spec!r}")
    for d in devs:
        dev = torch.device(d)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"--device {spec}: CUDA is not available on this machine")
            idx = dev.index or 0
            if idx >= torch.cuda.device_count():
                raise ValueError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) here")
    if local_rank and all(torch.device(d).type == "cuda" for d in devs):
        # under torchrun, process k uses the k-th group of GPUs
        per = len(devs)
        devs = [f"cuda:{local_rank * per + i}" for i in range(per)]
    return (devs[0], devs[-1])


def setup(devices: str) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    towers = parse_devices(devices, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if towers[0].startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(torch.device(towers[0]))
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local, tower_devices=towers)


def wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    if not info.distributed:
        return model
    # device_ids=None: the module may span two devices (two towers), which DDP supports this way
    one_device = info.tower_devices[0] == info.tower_devices[1] and info.device.type == "cuda"
    return DistributedDataParallel(model, device_ids=[info.device] if one_device else None)


def agree(info: DistInfo, elapsed_s: float, stop: bool) -> tuple[float, bool]:
    """One decision for every process, taken once per step: rank 0's elapsed time, and stop if any rank
    asks to (Ctrl-C reaches ranks at different moments). A no-op without DDP."""
    if not info.distributed:
        return elapsed_s, stop
    device = info.device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([elapsed_s if info.rank == 0 else 0.0, 1.0 if stop else 0.0], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0]), bool(t[1] > 0)


def teardown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
