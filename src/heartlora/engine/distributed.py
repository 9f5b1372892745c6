"""Data-parallel training of one run under ``torchrun`` (DDP), and the batch order every run uses.

``torchrun --nproc_per_node K -m heartlora train ...`` (or ``heartlora train --nproc K``) starts K
processes; each reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` from the environment and joins one
process group (gloo on CPU, nccl on CUDA, one GPU per local rank). ``batch_size`` stays the
*global* batch: every rank draws the same seeded order of the training set, cuts it into the
same global batches, and takes its own contiguous slice of each, so the union over ranks of one
step is exactly the single-process batch. Each rank's loss is its slice's summed loss divided by
the global batch size and multiplied by the world size, so DDP's gradient average equals the
single-process mean-loss gradient, whatever the slice sizes. DDP wraps only the trainable
parameters (the frozen backbone needs no all-reduce). Evaluation is sharded and its counts
summed. Only rank 0 writes checkpoints, adapters and ``run.json``.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn
from torch.utils.data import Sampler

__all__ = ["Distributed", "GlobalBatchSampler", "from_environment"]


@dataclass
class Distributed:
    """This process's place in a torchrun job (world size 1: a plain run)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None
    nodes: list[str] = field(default_factory=lambda: [platform.node()])
    # a group of its own for the loop's measurements (losses, counts, a method schedule's statistics), so they never
    # interleave with DDP's gradient all-reduces on the default group
    group: object = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return tensor
        import torch.distributed as dist

        out = tensor.detach().clone()
        if self.backend == "nccl" and out.device.type != "cuda":  # nccl reduces GPU tensors only
            on_gpu = out.to(f"cuda:{self.local_rank}")
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM, group=self.group)
            return on_gpu.to(out.device)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.all_reduce_sum(tensor) / self.world_size if self.enabled else tensor

    def wrap(self, model: nn.Module, device: torch.device, unused_parameters: bool = False) -> nn.Module:
        """DDP over the trainable parameters (``model`` itself when not distributed);
        ``unused_parameters``: some trainable parameters may get no gradient in a step."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # buffers (gates, accumulated statistics) are equal on every rank by construction: never re-sent
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False,
                                       find_unused_parameters=unused_parameters)

    def record(self) -> dict:
        return {"world_size": self.world_size, "nodes": self.nodes, "backend": self.backend}

    def __reduce__(self):  # never pickled with its process group (e.g. into a checkpoint)
        return (Distributed, (self.world_size, self.rank, self.local_rank, self.backend, self.nodes))

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def from_environment(device_spec: str) -> tuple[Distributed, str]:
    """The torchrun job this process belongs to (from its environment) and the device it uses."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), device_spec
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_spec.startswith("cuda") or (device_spec == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
        device_spec = f"cuda:{local_rank}"
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    nodes: list = [None] * world
    dist.all_gather_object(nodes, platform.node())
    group = dist.new_group(backend=backend)
    return Distributed(world, rank, local_rank, backend, sorted(set(nodes)), group), device_spec


class GlobalBatchSampler(Sampler[list[int]]):
    """Seeded global batches of a dataset of ``size`` items, and this rank's slice of each.

    The order is ``torch.randperm(size, generator=seeded)``; batches of ``batch_size`` follow it
    (the last one dropped when ``drop_last`` and incomplete); rank ``r`` of ``W`` takes the r-th of
    W near-equal contiguous slices of every batch. With W = 1 these are simply the batches."""

    def __init__(self, size: int, batch_size: int, drop_last: bool, seed: int, world_size: int = 1, rank: int = 0):
        self.size, self.batch_size, self.drop_last = size, batch_size, drop_last
        self.seed, self.world_size, self.rank = seed, world_size, rank
        self.global_sizes: list[int] = []

    def batches(self) -> list[list[int]]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed)).tolist()
        out = [order[i:i + self.batch_size] for i in range(0, self.size, self.batch_size)]
        if out and self.drop_last and len(out[-1]) < self.batch_size:
            out.pop()
        return out

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches():
            n, w = len(batch), self.world_size
            start, stop = (self.rank * n) // w, ((self.rank + 1) * n) // w
            yield batch[start:stop]

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)
