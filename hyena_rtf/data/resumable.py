"""The training-data order of every data module: a seeded permutation per epoch that a resumed run
re-enters mid-epoch, so an interrupted and an uninterrupted run see the same batches."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

__all__ = ["ResumableSampler", "ResumableLoader"]


class ResumableLoader(DataLoader):
    """The training loader. Its position is saved by :meth:`LMDataModule.state_dict` (which knows
    how many batches the trainer consumed, unlike the loader, which prefetches); these methods only
    tell Lightning that the loader resumes mid-epoch correctly."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass



class ResumableSampler(DistributedSampler):
    """Shuffles with a permutation that depends only on (seed, epoch), and can start mid-epoch.

    Resuming a run from a checkpoint taken after k batches of an epoch skips exactly the samples
    those batches used, so the resumed run sees the same batches as an uninterrupted one.
    Under DDP each rank takes every world_size-th index of the same permutation. (It subclasses
    DistributedSampler only so that Lightning keeps it instead of wrapping it in another one.)
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1):  # noqa: D107
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0  # a skip applies to the epoch it was saved in only
        self.epoch = epoch

    def _indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        usable = self.n - self.n % self.world_size
        return perm[self.rank : usable : self.world_size]

    def __iter__(self):
        indices = self._indices()[self.skip :]
        self.skip = 0
        return iter(indices)

    def __len__(self) -> int:
        return (self.n - self.n % self.world_size) // self.world_size - self.skip
