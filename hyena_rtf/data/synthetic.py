"""Synthetic memory tasks (copying, associative recall) served like a corpus.

Both tasks put a question in the input and score only the positions where the answer is due:
``targets`` is -100 everywhere else, so the loss, ``val/acc`` (per scored token) and ``val/exact``
(whole sequences right) measure recall and nothing else. Targets are aligned with the inputs
(position t is scored on ``targets[t]``; no next-token shift), as in the state-space literature.

- **Copying**: ``mem_len`` random tokens, ``delay`` blanks, then ``mem_len`` copy markers; at the
  i-th marker the model must output the i-th memorised token. The answer lies ``mem_len + delay``
  steps back, so a single linear filter needs that much memory.
- **Associative recall**: ``num_pairs`` key-value pairs (distinct keys), blanks, then
  ``num_queries`` keys drawn from the pairs; at each query the model must output that key's value.

Every split is generated from ``seed`` alone (its own stream per split, no files); validation and
test sequences that also occur in an earlier split are redrawn, so the splits are disjoint.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from ..errors import UserError
from ..evaluation.recall import IGNORE, ExactRecall, RecallAccuracy, RecallResult, score_recall
from .protocol import ModelLimits, ScoreOptions, TaskData
from .resumable import ResumableLoader, ResumableSampler

__all__ = [
    "copying", "associative_recall", "RecallDataset", "RecallDataModule", "CopyingDataModule",
    "AssociativeRecallDataModule",
]

BLANK = 0
SPLITS = ("train", "validation", "test")


# ---------------------------------------------------------------------- generators
def copying(rng: np.random.Generator, n: int, mem_len: int, delay: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` copying sequences of length ``2 * mem_len + delay``: inputs and aligned targets.

    Token 0 is the blank, ``vocab_size - 1`` the copy marker, 1..vocab_size-2 the memorised symbols.
    """
    seq_len = 2 * mem_len + delay
    tokens = rng.integers(1, vocab_size - 1, size=(n, mem_len))  # (n, M)
    x = np.full((n, seq_len), BLANK, dtype=np.int64)
    x[:, :mem_len] = tokens
    x[:, mem_len + delay :] = vocab_size - 1
    y = np.full((n, seq_len), IGNORE, dtype=np.int64)
    y[:, mem_len + delay :] = tokens
    return x, y


def associative_recall(rng: np.random.Generator, n: int, seq_len: int, num_pairs: int, num_queries: int,
                       vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` associative-recall sequences of length ``seq_len``: inputs and aligned targets.

    Token 0 is the blank; keys are 1..K and values K+1..vocab_size-1 with K = (vocab_size - 1) // 2.
    The pairs come first (``k v k v ...``), the queries last, blanks in between.
    """
    n_keys = (vocab_size - 1) // 2
    keys = np.argsort(rng.random((n, n_keys)), axis=1)[:, :num_pairs] + 1  # (n, P), distinct per row
    values = rng.integers(n_keys + 1, vocab_size, size=(n, num_pairs))  # (n, P)
    asked = rng.integers(0, num_pairs, size=(n, num_queries))  # (n, Q) indices into the pairs
    x = np.full((n, seq_len), BLANK, dtype=np.int64)
    x[:, 0 : 2 * num_pairs : 2] = keys
    x[:, 1 : 2 * num_pairs : 2] = values
    x[:, seq_len - num_queries :] = np.take_along_axis(keys, asked, axis=1)
    y = np.full((n, seq_len), IGNORE, dtype=np.int64)
    y[:, seq_len - num_queries :] = np.take_along_axis(values, asked, axis=1)
    return x, y


# ---------------------------------------------------------------------- data
class RecallDataset(Dataset):
    """Fixed sequences in memory: item i is ``{"input_ids": (L,), "targets": (L,)}``."""

    def __init__(self, inputs: np.ndarray, targets: np.ndarray):
        self.inputs, self.targets = torch.from_numpy(inputs), torch.from_numpy(targets)

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.inputs[i], "targets": self.targets[i]}


class RecallDataModule(TaskData):
    """Base of the synthetic tasks: seeded splits, loaders and a word-level tokenizer of the symbols.

    Subclasses set ``seq_len`` and implement :meth:`generate`. Its metrics make the training
    module log ``val/acc`` and ``val/exact``; evaluate.py scores the same way (:meth:`score`).

    Args:
        vocab_size: number of token ids the task uses (the model's vocabulary follows it).
        train_size, eval_size: sequences in the training split and in each of validation and test.
        batch_size: training sequences per batch (per device).
        eval_batch_size: batch size of validation/test (default: batch_size).
        num_workers: DataLoader workers.
        seed: the seed every split is generated from (and of the training order).
    """

    def __init__(self, vocab_size: int, train_size: int = 10_000, eval_size: int = 1_000, batch_size: int = 32,
                 eval_batch_size: Optional[int] = None, num_workers: int = 0, seed: int = 0):
        super().__init__()
        if min(train_size, eval_size, batch_size) < 1:
            raise UserError(f"data.train_size, eval_size and batch_size must be >= 1, got {train_size}, {eval_size}, {batch_size}")
        if train_size < batch_size:  # the training loader drops incomplete batches: none would be left
            raise UserError(f"data.train_size={train_size} is smaller than data.batch_size={batch_size}")
        self.vocab_size, self.train_size, self.eval_size = vocab_size, train_size, eval_size
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.seq_len = 0
        self.datasets: dict[str, RecallDataset] = {}
        self._tokenizer = None
        self._resume: Optional[dict] = None

    def generate(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` sequences (inputs, targets), each of shape (n, seq_len)."""
        raise NotImplementedError

    def symbol_names(self) -> dict[int, str]:
        """Readable names of the token ids (the tokenizer's vocabulary)."""
        return {i: f"s{i}" for i in range(self.vocab_size)}

    # ------------------------------------------------------------------ splits
    def build_split(self, split: str, exclude: set[bytes]) -> RecallDataset:
        """Generate ``split`` from its own seed stream; eval rows found in ``exclude`` are redrawn."""
        rng = np.random.default_rng([self.seed, SPLITS.index(split)])
        if split == "train":
            return RecallDataset(*self.generate(rng, self.train_size))
        xs, ys, found = [], [], 0
        for _ in range(20):  # rounds of fresh rows, keeping those no earlier split holds
            x, y = self.generate(rng, self.eval_size)
            new = np.array([row.tobytes() not in exclude for row in x])
            xs.append(x[new])
            ys.append(y[new])
            found += int(new.sum())
            if found >= self.eval_size:
                return RecallDataset(np.concatenate(xs)[: self.eval_size], np.concatenate(ys)[: self.eval_size])
        raise UserError(
            f"the task has too few distinct sequences for {self.eval_size} {split} sequences disjoint from training; "
            "raise vocab_size or the sequence length, or lower eval_size"
        )

    def available_splits(self) -> tuple[str, ...]:
        return SPLITS

    def check(self, needed) -> None:
        """Fail now if a ``needed`` split is not one of train/validation/test (nothing else can be
        missing: the splits are generated)."""
        unknown = [s for s in needed if s not in SPLITS]
        if unknown:
            raise UserError(f"split {unknown[0]!r} does not exist; a synthetic task has the splits {', '.join(SPLITS)}")

    def check_model(self, limits: ModelLimits) -> None:
        """The sequences must fit the model's context and every symbol its vocabulary."""
        super().check_model(limits)
        if limits.vocab_size is not None and limits.vocab_size < self.vocab_size:
            raise UserError(f"model.vocab_size={limits.vocab_size} is smaller than the task's {self.vocab_size} symbols "
                            "(data.vocab_size); set model.vocab_size=null to take it from the task")

    def eval_metrics(self) -> dict:
        """Greedy recall: ``acc`` per scored position, ``exact`` per sequence."""
        return {"acc": RecallAccuracy(), "exact": ExactRecall()}

    def score(self, model, tokenizer, split: str, options: ScoreOptions) -> RecallResult:
        """Loss, accuracy and exact-sequence rate of the whole split (the tokenizer is not needed:
        the task's sequences are already token ids)."""
        return score_recall(model, self, split, options.batch_size, options.device, progress=options.progress)

    def prepare_data(self) -> None:
        """Nothing to download: every split is generated in :meth:`setup`."""

    def setup(self, stage: Optional[str] = None) -> None:
        if self.datasets:
            return
        exclude: set[bytes] = set()
        for split in SPLITS:
            ds = self.build_split(split, exclude)
            self.datasets[split] = ds
            exclude.update(row.tobytes() for row in ds.inputs.numpy())

    @property
    def tokenizer(self):
        """A word-level tokenizer over :meth:`symbol_names` (saved into checkpoints like a BPE)."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer
            from tokenizers.models import WordLevel
            from tokenizers.pre_tokenizers import WhitespaceSplit
            from transformers import PreTrainedTokenizerFast

            names = self.symbol_names()
            tok = Tokenizer(WordLevel({name: i for i, name in names.items()}, unk_token=names[BLANK]))
            tok.pre_tokenizer = WhitespaceSplit()
            self._tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=names[BLANK], pad_token=names[BLANK])
        return self._tokenizer

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_tokenizer"] = None
        return state

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = ResumableSampler(self.train_size, seed=self.seed, rank=rank, world_size=world)
        if self._resume is not None:
            sampler.epoch, sampler.skip = self._resume["epoch"], self._resume["batches"] * self.batch_size
            self._resume = None
        return ResumableLoader(self.datasets["train"], batch_size=self.batch_size, sampler=sampler, drop_last=True,
                                num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    # Lightning stores this in checkpoints: the position in the training data (as LMDataModule).
    def state_dict(self) -> dict:
        if self.trainer is None:
            return {}
        loop = self.trainer.fit_loop.epoch_loop
        return {"epoch": self.trainer.current_epoch, "batches": loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state) if state else None


class CopyingDataModule(RecallDataModule):
    """The copying task: remember ``mem_len`` tokens over ``delay`` blanks, then reproduce them.

    Args:
        mem_len: tokens to memorise (and to reproduce).
        delay: blanks between the memorised block and the copy markers.
        vocab_size: token ids including the blank (0) and the marker (vocab_size - 1); the block is
            drawn uniformly from the other ``vocab_size - 2``.
        **kwargs: :class:`RecallDataModule` arguments (sizes, batch sizes, workers, seed).
    """

    def __init__(self, mem_len: int = 64, delay: int = 0, vocab_size: int = 16, **kwargs):
        if mem_len < 1 or delay < 0 or vocab_size < 3:
            raise UserError(f"copying needs mem_len >= 1, delay >= 0, vocab_size >= 3; got {mem_len}, {delay}, {vocab_size}")
        super().__init__(vocab_size, **kwargs)
        self.mem_len, self.delay = mem_len, delay
        self.seq_len = 2 * mem_len + delay

    def check_model(self, limits: ModelLimits) -> None:
        """The block, the delay and the copies must fit the model's context."""
        if limits.max_positions is not None and self.seq_len > limits.max_positions:
            raise UserError(
                f"data=copying makes sequences of 2 * data.mem_len + data.delay = {self.seq_len} tokens, more than "
                f"model.max_position_embeddings={limits.max_positions}; lower data.mem_len or data.delay, or raise "
                "model.max_position_embeddings"
            )
        super().check_model(limits)

    def generate(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        return copying(rng, n, self.mem_len, self.delay, self.vocab_size)

    def symbol_names(self) -> dict[int, str]:
        names = {i: f"t{i}" for i in range(1, self.vocab_size - 1)}
        return {BLANK: "<blank>", **names, self.vocab_size - 1: "<copy>"}


class AssociativeRecallDataModule(RecallDataModule):
    """Associative recall: key-value pairs, then query keys whose values must be recalled.

    Args:
        seq_len: tokens per sequence (pairs first, queries last, blanks between).
        num_pairs: key-value pairs per sequence (distinct keys); at most (vocab_size - 1) // 2.
        num_queries: query keys at the end of each sequence (each scored).
        vocab_size: token ids: the blank (0), (vocab_size - 1) // 2 keys, the rest values.
        **kwargs: :class:`RecallDataModule` arguments (sizes, batch sizes, workers, seed).
    """

    def __init__(self, seq_len: int = 64, num_pairs: int = 8, num_queries: int = 4, vocab_size: int = 33, **kwargs):
        n_keys = (vocab_size - 1) // 2
        if vocab_size < 3 or not 1 <= num_pairs <= n_keys:
            raise UserError(f"associative recall needs vocab_size >= 3 and 1 <= num_pairs <= (vocab_size - 1) // 2 = {n_keys}; "
                            f"got vocab_size={vocab_size}, num_pairs={num_pairs}")
        if num_queries < 1 or seq_len < 2 * num_pairs + num_queries:
            raise UserError(f"associative recall needs num_queries >= 1 and seq_len >= 2 * num_pairs + num_queries "
                            f"= {2 * num_pairs + max(num_queries, 1)}; got seq_len={seq_len}, num_queries={num_queries}")
        super().__init__(vocab_size, **kwargs)
        self.seq_len, self.num_pairs, self.num_queries = seq_len, num_pairs, num_queries

    def generate(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        return associative_recall(rng, n, self.seq_len, self.num_pairs, self.num_queries, self.vocab_size)

    def symbol_names(self) -> dict[int, str]:
        n_keys = (self.vocab_size - 1) // 2
        names = {i: f"k{i}" for i in range(1, n_keys + 1)}
        names.update({i: f"v{i - n_keys}" for i in range(n_keys + 1, self.vocab_size)})
        return {BLANK: "<blank>", **names}
