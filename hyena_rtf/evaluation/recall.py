"""Scoring of the synthetic recall tasks: greedy accuracy at the positions where an answer is due,
as counts for a batch, as torchmetrics for training, and over a whole split for evaluate.py."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from torchmetrics import Metric
from tqdm.auto import tqdm

from ..errors import UserError

__all__ = ["IGNORE", "recall_counts", "RecallAccuracy", "ExactRecall", "RecallResult", "score_recall"]

# Targets at positions that are not scored (the cross-entropy ignore index).
IGNORE = -100


# ---------------------------------------------------------------------- metrics
def recall_counts(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy-decoding counts of a batch: (correct scored tokens, exactly right sequences, sequences
    with at least one scored token). Positions with target -100 are ignored."""
    mask = targets != IGNORE  # (B, L)
    hit = (logits.argmax(-1) == targets) & mask  # (B, L)
    scored = mask.any(-1)  # (B,)
    exact = (hit | ~mask).all(-1) & scored  # (B,)
    return hit.sum(), exact.sum(), scored.sum()



# ---------------------------------------------------------------------- evaluation
@dataclass
class RecallResult:
    """Recall accuracy of one split (greedy decoding at the scored positions)."""

    split: str
    sequences: int
    tokens_scored: int
    nll_sum: float
    token_ppl: float
    acc: float
    exact: float

    def protocol(self) -> str:
        return (f"split={self.split}, {self.sequences:,} sequences, {self.tokens_scored:,} scored positions "
                "(argmax prediction at every position whose target is not -100)")

    def table(self) -> str:
        rows = [("acc (per token)", f"{self.acc:.4f}"), ("exact (per sequence)", f"{self.exact:.4f}"),
                ("loss (nats/token)", f"{self.nll_sum / max(self.tokens_scored, 1):.4f}")]
        return "\n".join(f"{name:<21}: {val}" for name, val in rows)



@torch.no_grad()
def score_recall(model, data, split: str, batch_size: int, device, progress: bool = True) -> RecallResult:
    """Score every sequence of ``split`` of a recall data module (``data.datasets[split]``,
    ``data.seq_len``, ``data.vocab_size``) with ``model`` (an HF causal LM): loss, acc and exact."""
    data.setup()
    if model.config.vocab_size < data.vocab_size:
        raise UserError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the task's ({data.vocab_size})")
    l_max = model.config.max_position_embeddings
    if data.seq_len > l_max:
        raise UserError(f"the task's sequences ({data.seq_len} tokens) exceed the model's l_max={l_max}")
    loader = DataLoader(data.datasets[split], batch_size=batch_size, shuffle=False)
    nll, tokens, correct, exact, seqs = 0.0, 0, 0, 0, 0
    for batch in tqdm(loader, desc=f"scoring {split}", unit="batch", disable=not progress):
        x, y = batch["input_ids"].to(device), batch["targets"].to(device)
        logits = model(input_ids=x).logits.float()  # (B, L, V)
        nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum",
                                                 ignore_index=IGNORE).item()
        c, e, s = recall_counts(logits, y)
        tokens += int((y != IGNORE).sum())
        correct, exact, seqs = correct + int(c), exact + int(e), seqs + int(s)
    return RecallResult(split=split, sequences=seqs, tokens_scored=tokens, nll_sum=nll,
                        token_ppl=math.exp(min(nll / max(tokens, 1), 700.0)), acc=correct / max(tokens, 1),
                        exact=exact / max(seqs, 1))


class _RecallRatio(Metric):
    """A ratio of two counts summed over batches (and devices) of greedy recall."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("hits", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def counts(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hits, total) of one batch."""
        raise NotImplementedError

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:  # (B, L, V), (B, L)
        hits, total = self.counts(logits, targets)
        self.hits += hits.double()
        self.total += total.double()

    def compute(self) -> torch.Tensor:
        return self.hits / self.total.clamp_min(1)


class RecallAccuracy(_RecallRatio):
    """Share of scored positions (target != -100) whose argmax prediction is the target."""

    def counts(self, logits, targets):
        correct, _, _ = recall_counts(logits, targets)
        return correct, (targets != IGNORE).sum()


class ExactRecall(_RecallRatio):
    """Share of sequences with at least one scored position whose every scored position is right."""

    def counts(self, logits, targets):
        _, exact, sequences = recall_counts(logits, targets)
        return exact, sequences
