"""The contract between a data config (the ``data`` group) and the tasks above it.

Training, evaluation and the callbacks talk to a data module only through :class:`TaskData`: its
splits, a cheap check of its own configuration and of the model it will feed (both before any
text is read or a weight is drawn), the metrics that suit it, and how to score a whole split. A
new task (a corpus, a synthetic benchmark) subclasses it; nothing above changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import lightning as L
from torchmetrics import Metric

from ..errors import UserError

__all__ = ["ScoreOptions", "TaskData", "ModelLimits"]


@dataclass(frozen=True)
class ModelLimits:
    """What a data module needs to know of the model before it is built.

    Args:
        max_positions: the model's context (``max_position_embeddings``); None: unlimited.
        vocab_size: the model's vocabulary; None: taken from the data's tokenizer.
    """

    max_positions: Optional[int] = None
    vocab_size: Optional[int] = None

    @classmethod
    def from_config(cls, model: dict) -> "ModelLimits":
        """From the keyword arguments of ``HyenaRTFConfig`` (the ``model`` config group)."""
        vocab = model.get("vocab_size")
        return cls(model.get("max_position_embeddings"), None if vocab in (None, "auto") else int(vocab))


@dataclass(frozen=True)
class ScoreOptions:
    """How evaluate.py scores a split (options that do not apply to a task are ignored by it).

    Args:
        batch_size: sequences (or windows) per forward.
        device: where the model runs.
        context: tokens per scored window (None: the model's context).
        stride: sliding-window stride (None: non-overlapping windows).
        include_tail: score the last, shorter window too.
        progress: show a progress bar.
    """

    batch_size: int = 8
    device: str = "cpu"
    context: Optional[int] = None
    stride: Optional[int] = None
    include_tail: bool = True
    progress: bool = True


class TaskData(L.LightningDataModule):
    """A LightningDataModule that also states what the tasks above it need.

    Subclasses set ``seq_len`` (tokens per training sequence) and ``batch_size`` (sequences per
    batch per device), provide ``tokenizer``, and implement :meth:`available_splits`,
    :meth:`check`, :meth:`check_model` and :meth:`score`; the other methods have defaults.
    """

    seq_len: int = 0
    batch_size: int = 1
    # Prompts of the text samples shown during training (None: the callback's default).
    sample_prompts: Optional[list[str]] = None

    def available_splits(self) -> tuple[str, ...]:
        """The splits this configuration can serve (a subset of train, validation, test)."""
        raise NotImplementedError

    def check(self, needed: Sequence[str]) -> None:
        """Raise :class:`UserError` now if a ``needed`` split cannot be served; cheap (no text is
        read, nothing is tokenised or generated)."""
        raise NotImplementedError

    def check_model(self, limits: ModelLimits) -> None:
        """Raise :class:`UserError` if the model cannot take this data (context, vocabulary),
        naming the option to change; called before the model is built."""
        if limits.max_positions is not None and self.seq_len > limits.max_positions:
            raise UserError(
                f"data.seq_len={self.seq_len} exceeds the model's context model.max_position_embeddings="
                f"{limits.max_positions}; lower data.seq_len to at most {limits.max_positions} or raise "
                "model.max_position_embeddings"
            )

    def eval_metrics(self) -> dict[str, Metric]:
        """Metrics beyond loss and perplexity, updated with ``(logits (B, L, V), targets (B, L))``
        at every validation/test batch and logged as ``val/<name>``, ``test/<name>``."""
        return {}

    def split_rates(self, split: str) -> Optional[dict[str, float]]:
        """``words_per_token`` and ``bytes_per_token`` of a prepared split, which turn a token loss
        into word perplexity and bits per byte; None where words and bytes mean nothing."""
        return None

    def baseline_ppl(self, split: str) -> Optional[tuple[str, float]]:
        """What a trivial model scores on ``split``, as (what it is, perplexity), printed beside the
        trained model's perplexity; None where there is no such yardstick."""
        return None

    def score(self, model, tokenizer, split: str, options: ScoreOptions):
        """Score the whole ``split`` with ``model`` (an HF causal LM) and its ``tokenizer``;
        returns a result with ``protocol()``, ``table()`` and ``token_ppl`` (what evaluate.py prints
        and writes)."""
        raise NotImplementedError
