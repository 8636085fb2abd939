"""Data parallelism across processes started by torchrun (gloo on CPU, NCCL on GPUs).

Every process builds the same model from the same seed and computes the same step's batches (the
sampler is a pure function of the step), then keeps its own rows. After the backward pass the
gradients of every optimizer parameter are summed across processes in one flat all-reduce. We sum
gradients by hand rather than wrapping the model in `DistributedDataParallel` so the MTP heads, the
QK-clip hooks and checkpointing all see the plain module; the price is no overlap of communication
with the backward pass, which matters on large GPU jobs and not at this scale.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from smolforge.tasks.train.data import Batch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def init_from_env(device: torch.device) -> World:
    """Join the process group torchrun describes in the environment; a plain run is a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size())


def local_rows(batch: Batch, world: World) -> Batch:
    """This process's share of a micro-batch: rows rank, rank + size, ..."""
    if world.size == 1:
        return batch
    rows = slice(world.rank, None, world.size)
    return Batch(
        batch.input_ids[rows], batch.labels[rows], batch.doc_ids[rows], batch.sources[rows], batch.stage, batch.step, batch.micro
    )


def sum_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    if world.size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    for p, synced in zip(params, torch._utils._unflatten_dense_tensors(flat, grads)):
        if p.grad is None:
            p.grad = synced
        else:
            p.grad.copy_(synced)


def sum_scalar(value: float, world: World) -> float:
    if world.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()
