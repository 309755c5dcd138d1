"""Data-parallel training under torchrun: every process draws the same batches and takes its share;
gradients are averaged before each step (gloo on CPU, nccl on GPU). One process: all no-ops."""

from __future__ import annotations

import os

import torch


def rank_and_world() -> tuple[int, int]:
    dist = torch.distributed
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def sync_parameters(net: torch.nn.Module) -> None:
    if torch.distributed.is_initialized():
        for p in net.parameters():
            torch.distributed.broadcast(p.data, src=0)


def average_gradients(net: torch.nn.Module, world: int) -> None:
    if world > 1:
        for p in net.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world


def sum_over_processes(value: float, world: int) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device())
    torch.distributed.all_reduce(t)
    return float(t.item())


def device() -> torch.device:
    """The GPU this process trains on (torchrun: one per local rank), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())


def start() -> tuple[int, int]:
    """Join torchrun's process group when launched by it (gloo on CPU, nccl on GPU); (rank, world)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(device())
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank_and_world()
