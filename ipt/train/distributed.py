"""Process-group plumbing for ``torchrun``: env:// rendezvous, gloo on CPU and NCCL on CUDA, and the collectives the
loop needs (a gradient-carrying all-gather for the contrastive loss, mean-reduced metrics, objects to rank 0)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ipt.train.errors import TrainingError


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this process initialised the default group and must destroy it
    loss_group: Any = None  # a second group for collectives issued inside backward, apart from DDP's

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """In a process group: DDP, the contrastive all-gather and the rank reductions are on (also for one rank)."""
        return self.loss_group is not None


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("device cuda asked for, but no CUDA device is available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    return dev


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ  # torchrun sets it for every worker, also for a single one


def setup(device: str = "auto") -> DistEnv:
    """Join the job ``torchrun`` describes in RANK/WORLD_SIZE/LOCAL_RANK; a plain process when not under torchrun.

    Under torchrun the process group is joined whatever the world size, so one rank runs the same code as many
    (DDP, the collectives on NCCL or gloo): a one-GPU machine exercises the NCCL path.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device(device, local_rank)
    env = DistEnv(rank=rank, world=world, local_rank=local_rank, device=dev)
    if world > 1 or launched_by_torchrun():
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
            env.owns_group = True
        env.rank, env.world = dist.get_rank(), dist.get_world_size()
        env.loss_group = dist.new_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return env


def backend(env: DistEnv) -> str:
    """'nccl' / 'gloo' in a process group, else 'none' (a plain process)."""
    return str(dist.get_backend()) if env.distributed else "none"


def teardown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient and returns this rank's slice, so the
    gradient is that of the sum of all ranks' losses (DDP's averaging then gives the global mean's)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.group, ctx.n = group, x.shape[0]
        ctx.rank = dist.get_rank(group)
        out = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(out, x.contiguous(), group=group)
        return torch.cat(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n], None


def gather_with_grad(env: DistEnv, x: Tensor) -> tuple[Tensor, int]:
    """(every rank's ``x`` concatenated in rank order, index of this rank's first row)."""
    return _GatherRows.apply(x, env.loss_group), env.rank * x.shape[0]


def mean_over_ranks(env: DistEnv, values: Tensor) -> Tensor:
    if not env.distributed:
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / env.world


def gather_objects(env: DistEnv, obj: Any) -> list[Any]:
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(env: DistEnv, obj: Any) -> Any:
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()
