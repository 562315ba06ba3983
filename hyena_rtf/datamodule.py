"""LightningDataModule over the token caches of :mod:`hyena_rtf.data`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from .corpus import SPLITS, Corpus, load_corpus
from .data import TokenChunks, cache_key, open_tokens, prepare_cache
from .errors import UserError
from .tokenization import load_tokenizer

__all__ = ["LMDataModule"]


class LMDataModule(L.LightningDataModule):
    """Language-modelling data: a corpus, a tokenizer, fixed-length non-overlapping chunks.

    Args:
        corpus: ``shakespeare`` (offline default), ``wikitext103``, ``wikitext2`` or ``files``.
        train_path, validation_path, test_path: text files for ``corpus=files``.
        dataset_path, dataset_config, data_files: ``datasets.load_dataset`` arguments for the
            WikiText corpora (e.g. a local json/parquet dataset when the hub is unreachable).
        tokenizer: ``bpe`` (byte-level BPE trained on the train split) or ``gpt2``.
        vocab_size: size of the trained BPE vocabulary (ignored for gpt2).
        seq_len: tokens per training sequence (the model's context; <= the model's l_max).
        batch_size: sequences per batch *per device*; the global batch is
            ``batch_size * devices * num_nodes * accumulate_grad_batches``.
        eval_batch_size: batch size of validation/test (default: batch_size).
        num_workers: DataLoader workers.
        cache_dir: where token caches are kept.
        add_eos: append <|endoftext|> at the end of each split.
    """

    def __init__(
        self,
        corpus: str = "shakespeare",
        train_path: Optional[str] = None,
        validation_path: Optional[str] = None,
        test_path: Optional[str] = None,
        dataset_path: Optional[str] = None,
        dataset_config: Optional[str] = None,
        data_files: Optional[dict] = None,
        tokenizer: str = "bpe",
        vocab_size: Optional[int] = 4096,
        seq_len: int = 256,
        batch_size: int = 16,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        cache_dir: str = "data/cache",
        add_eos: bool = False,
    ):
        super().__init__()
        if seq_len < 1 or batch_size < 1:
            raise UserError(f"data.seq_len and data.batch_size must be >= 1, got {seq_len} and {batch_size}")
        self.save_hyperparameters()
        self.seq_len, self.batch_size = seq_len, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self._corpus: Optional[Corpus] = None
        self._tokenizer = None
        self.datasets: dict[str, TokenChunks] = {}

    # ------------------------------------------------------------------ preparation
    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            hp = self.hparams
            files = dict(hp.data_files) if hp.data_files is not None else None
            self._corpus = load_corpus(
                hp.corpus, hp.train_path, hp.validation_path, hp.test_path, hp.dataset_path, hp.dataset_config, files
            )
        return self._corpus

    def available_splits(self) -> tuple[str, ...]:
        hp = self.hparams
        if hp.corpus == "files":
            return tuple(s for s in SPLITS if getattr(hp, f"{s}_path"))
        return SPLITS

    @property
    def entry(self) -> Path:
        hp = self.hparams
        return Path(hp.cache_dir) / cache_key(self.corpus, hp.tokenizer, hp.vocab_size, hp.add_eos)

    def prepare_data(self) -> None:
        """Tokenise every split into the cache (once; rank 0 only under Lightning)."""
        hp = self.hparams
        prepare_cache(self.corpus, hp.cache_dir, hp.tokenizer, hp.vocab_size, hp.add_eos, self.available_splits())

    def setup(self, stage: Optional[str] = None) -> None:
        if not (self.entry / "meta.json").is_file():
            self.prepare_data()
        for split in self.available_splits():
            if split not in self.datasets:
                self.datasets[split] = TokenChunks(self.entry, split, self.seq_len)

    # ------------------------------------------------------------------ accessors
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.entry)
        return self._tokenizer

    def meta(self, split: str) -> dict:
        """Token, word and byte counts of ``split`` (from meta.json)."""
        meta = json.loads((self.entry / "meta.json").read_text())
        if split not in meta["splits"]:
            raise UserError(f"split {split!r} is not prepared for corpus {self.hparams.corpus}")
        return meta["splits"][split]

    def token_array(self, split: str) -> np.ndarray:
        """All token ids of ``split`` (a read-only memmap)."""
        return open_tokens(self.entry, split)

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        if split not in self.datasets:
            raise UserError(f"no {split} data: corpus={self.hparams.corpus} has no {split} split configured")
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)
