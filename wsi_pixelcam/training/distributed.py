"""Data-parallel training over the processes torchrun starts: who this process is and on which
device, its share of every epoch's patches and of the CAM dump, and sums across processes.

Without torchrun (no ``WORLD_SIZE`` above 1 in the environment) the context is one process of
one, no process group exists and every helper is the identity, so single-process training
runs the same code. Ranks on GPUs talk over ``nccl``, on CPUs over ``gloo``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from wsi_pixelcam.errors import ConfigError, ModelError
from wsi_pixelcam.model.device import resolve_device

logger = logging.getLogger(__name__)

T = TypeVar("T")

_RANK_SALT = 7919
"""Rank r seeds its augmentation and dropout with ``seed + r * _RANK_SALT``: rank 0 draws as
one process does, and no two ranks draw the same crops, flips or dropout masks."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run (rank 0 of 1 without torchrun)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, ``metrics.jsonl``, summaries and progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def per_rank_batch(self, global_batch: int) -> int:
        """The batch each rank trains on, so that the ranks' batches make the global one."""
        if global_batch % self.world_size:
            raise ConfigError(
                f"optim.batch_size={global_batch} is not divisible by the {self.world_size} "
                "training processes; set it to a multiple of --nproc_per_node x --nnodes"
            )
        return global_batch // self.world_size

    def rank_seed(self, seed: int) -> int:
        """The seed of this rank's own random draws (augmentation, dropout) in one epoch."""
        return (seed + self.rank * _RANK_SALT) % 2**31

    def barrier(self) -> None:
        """Wait until every rank is here (e.g. until rank 0 has written a checkpoint)."""
        if self.is_distributed:
            dist.barrier()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums of ``values`` over all ranks (float64)."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, value: float) -> float:
        """The largest ``value`` over all ranks."""
        return self._reduce([value], dist.ReduceOp.MAX)[0]

    def _reduce(self, values: Sequence[float], op: Any) -> list[float]:
        if not self.is_distributed:
            return [float(v) for v in values]
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=op)
        reduced: list[float] = tensor.tolist()
        return reduced

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.is_distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def share_of(self, sizes: Sequence[int]) -> list[int]:
        """Indices of the items (of these sizes) this rank works on; see balanced_shares."""
        return list(balanced_shares(sizes, self.world_size)[self.rank])

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` (on this rank's device) as DistributedDataParallel, or as is alone.

        On GPUs BatchNorm becomes SyncBatchNorm first, so batch statistics are taken over the
        global batch as one process would; torch has no SyncBatchNorm on CPUs, where each
        rank normalises its own share of the batch.
        """
        if not self.is_distributed:
            return model
        if self.device.type == "cuda":
            from timm.layers import convert_sync_batchnorm

            model = convert_sync_batchnorm(model)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

        After a CPU epoch each rank's running statistics follow its own last batch; the
        model rank 0 saves is the one every rank validates.
        """
        if self.is_distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)


def single_process(device: torch.device) -> DistContext:
    """The context of a run without torchrun."""
    return DistContext(rank=0, world_size=1, local_rank=0, device=device)


@contextmanager
def process_group(requested_device: str) -> Iterator[DistContext]:
    """This process's context; under torchrun, joins the process group and leaves it after.

    ``requested_device`` is the config's ``device``: its type decides the backend (``cuda``:
    nccl, one GPU per local rank; ``cpu``: gloo). ModelError for a device DDP cannot use.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield single_process(resolve_device(requested_device))
        return
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _rank_device(resolve_device(requested_device), local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    context = DistContext(rank, world_size, local_rank, device)
    if context.is_main:
        logger.info(
            "data-parallel training: %d processes (%s, %s)",
            world_size,
            dist.get_backend(),
            device.type,
        )
    try:
        yield context
    finally:
        dist.destroy_process_group()


def _rank_device(resolved: torch.device, local_rank: int) -> torch.device:
    """Local rank i trains on GPU i of its node, or on the CPU."""
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise ModelError(
            f"device={resolved.type!r}: data-parallel training runs on CUDA GPUs (nccl) or on "
            "CPUs (gloo); use device: cuda or cpu"
        )
    if local_rank >= torch.cuda.device_count():
        raise ModelError(
            f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible on this "
            "node; start at most that many processes per node (--nproc_per_node)"
        )
    return torch.device("cuda", local_rank)


def balanced_shares(sizes: Sequence[int], world_size: int) -> tuple[tuple[int, ...], ...]:
    """Split items of these sizes between ranks: largest first, each to the least-loaded.

    The same on every rank (ties go to the lower rank), so no coordination is needed; each
    item goes to exactly one rank.
    """
    loads = [0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = loads.index(min(loads))
        shares[rank].append(index)
        loads[rank] += sizes[index]
    return tuple(tuple(sorted(share)) for share in shares)


def class_balance_weights(labels: np.ndarray) -> np.ndarray:
    """Sampling weight 1 / (count of its class) per item: every class is drawn equally often."""
    counts = np.bincount(labels)
    weights: np.ndarray = 1.0 / counts[labels]
    return weights


class EpochSampler(Sampler[int]):
    """This rank's share of one epoch's order of items.

    Every rank draws the same order from the shared ``seed``: a permutation (``shuffle``),
    draws with replacement by ``weights`` (an epoch keeps its length), or the items in
    order. The order is cut to a multiple of ``whole`` (the global batch to drop a last
    partial batch; the world size to give every rank the same count) and rank r takes
    items r, r + world_size, ... So at every step the ranks' batches of
    ``whole / world_size`` together hold exactly the global batch one process would train
    on, which :func:`global_position` names.
    """

    def __init__(
        self,
        n_items: int,
        *,
        seed: int,
        shuffle: bool,
        weights: np.ndarray | None = None,
        whole: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.n_items = n_items
        self.seed = seed
        self.shuffle = shuffle
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.used = n_items // whole * whole
        self.rank = rank
        self.world_size = world_size

    def order(self) -> torch.Tensor:
        """The epoch's full order of item indices, the same on every rank."""
        generator = torch.Generator().manual_seed(self.seed)
        if self.weights is not None:
            drawn = torch.multinomial(self.weights, self.n_items, True, generator=generator)
        elif self.shuffle:
            drawn = torch.randperm(self.n_items, generator=generator)
        else:
            drawn = torch.arange(self.n_items)
        return drawn[: self.used]

    def __iter__(self) -> Iterator[int]:
        yield from self.order()[self.rank :: self.world_size].tolist()

    def __len__(self) -> int:
        return len(range(self.rank, self.used, self.world_size))


def global_position(step: int, item: int, batch_per_rank: int, context: DistContext) -> int:
    """Where item ``item`` of this rank's batch ``step`` (from 0) stands in the epoch's order
    (see EpochSampler): the same for a patch whichever rank trains it."""
    return (step * batch_per_rank + item) * context.world_size + context.rank
