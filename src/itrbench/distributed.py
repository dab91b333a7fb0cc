"""Data-parallel training under `torchrun`: process group, batch sharding, gathers, gradient averaging.

Design: one global batch of `train.batch_size` items per step, whatever the world size. Rank r takes the
contiguous slice [r * B/W, (r + 1) * B/W) of it, so concatenating the ranks' slices in rank order gives back
exactly the single-process batch. Methods whose loss compares every item of the batch with every other one
(VSE++, CODER) gather their embeddings *with gradient* and compute the loss of the whole global batch on
every rank; averaging the gradients over ranks then gives exactly the single-process gradient:
each rank's local embeddings receive the sum of all ranks' (identical) loss gradients, i.e. W times their
share, and the average divides the W back out. Methods that keep a per-rank loss get plain DDP semantics.

Gradients are averaged with one flattened all-reduce after backward (no overlap with backward, unlike
torch's DDP wrapper; the trainer calls model hooks that DDP's forward-only wrapper would not see).
Without torchrun (no WORLD_SIZE in the environment) every helper here is the identity.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from itrbench.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> World:
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes in the environment (NCCL on CUDA, gloo on CPU).

    Returns the world and this rank's device (cuda:LOCAL_RANK on GPUs). Without WORLD_SIZE > 1: no group.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local}: only {torch.cuda.device_count()} CUDA device(s) visible; "
                              "start torchrun with --nproc_per_node <= the GPUs of the job")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world(), device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (it may build caches or concept files), the others after it finished."""
    if not active():
        yield
        return
    if dist.get_rank() != 0:
        dist.barrier()
    try:
        yield
    finally:
        if dist.get_rank() == 0:
            dist.barrier()


# ------------------------------------------------------------------------------------------------ gathers
@torch.no_grad()
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (same shape on every rank) from all ranks along dim 0, in rank order; no gradient."""
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradient of every rank's copy and returns this rank's rows."""

    @staticmethod
    def forward(ctx, x):
        ctx.n = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # all_reduce + slice: gloo has no reduce_scatter
        r = dist.get_rank()
        return grad[r * ctx.n:(r + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The global batch's rows of `x`; gradients flow back to this rank's rows. Identity when not distributed."""
    return _GatherWithGrad.apply(x) if active() else x


def average_gradients(params) -> None:
    """Mean of every parameter's gradient over ranks, in one flattened all-reduce.

    A parameter no rank used keeps grad None (Adam then skips it, as in a single process); one that only
    some ranks used counts as 0 on the others.
    """
    if not active():
        return
    params = [p for p in params if p.requires_grad]
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                        device=params[0].device if params else "cpu")
    dist.all_reduce(used)
    params = [p for p, u in zip(params, used.tolist()) if u > 0]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
        offset += n


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (the seeds already agree; this makes it certain)."""
    if not active():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, 0)


def broadcast_array(a: np.ndarray) -> np.ndarray:
    """Rank 0's copy of a numpy array (same shape and dtype on every rank)."""
    if not active():
        return a
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    a = np.asarray(a)
    t = torch.from_numpy(np.ascontiguousarray(a.astype(np.uint8) if a.dtype == bool else a)).to(device)
    dist.broadcast(t, 0)
    out = t.cpu().numpy()
    return out.astype(bool) if a.dtype == bool else out


# ------------------------------------------------------------------------------------------------ sampling
class ShardedBatchSampler(Sampler):
    """Global batches of `batch_size` from a fixed order, each cut into `world_size` contiguous rank slices.

    `order` is the epoch's permutation of the whole data set (the same on every rank). Rank r yields
    order[i*B + r*B/W : i*B + (r+1)*B/W] for global batch i, so with world_size 1 it is plain batching.
    """

    def __init__(self, order: np.ndarray, batch_size: int, *, rank: int, world_size: int, drop_last: bool):
        if batch_size % world_size:
            raise ConfigError(f"train.batch_size: {batch_size} is not divisible by the {world_size} torchrun "
                              "processes (it is the global batch; each rank takes an equal share)")
        self.order, self.batch_size, self.drop_last = np.asarray(order), int(batch_size), drop_last
        self.rank, self.world_size = int(rank), int(world_size)
        self.local = self.batch_size // self.world_size

    def __iter__(self):
        n = len(self.order)
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            batch = self.order[start:start + self.batch_size]
            if len(batch) < self.batch_size:  # last partial batch: wrap around so every rank has equal rows
                batch = np.resize(self.order, start + self.batch_size)[start:]
            yield batch[self.rank * self.local:(self.rank + 1) * self.local].tolist()

    def __len__(self) -> int:
        n = len(self.order)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def make_sharded_loader(dataset, batch_size: int, *, seed: int, epoch: int, world: World, num_workers: int = 0,
                        drop_last: bool = False) -> DataLoader:
    """This rank's share of each global batch, in the order the single-process loader would use."""
    from itrbench.data.dataset import SeededSampler, _derive_seed, collate

    order = SeededSampler(len(dataset), shuffle=True, seed=seed, epoch=epoch).order()
    sampler = ShardedBatchSampler(order, batch_size, rank=world.rank, world_size=world.size, drop_last=drop_last)
    generator = torch.Generator().manual_seed(_derive_seed(seed, epoch) + world.rank)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      generator=generator, persistent_workers=False)
