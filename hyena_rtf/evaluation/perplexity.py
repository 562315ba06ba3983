"""Perplexity of a model on a whole tokenised split (chunks or sliding windows), with the protocol
stated beside the numbers."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .metrics import bits_per_byte, perplexity

log = logging.getLogger(__name__)

__all__ = ["EvalResult", "windows", "score_tokens"]


@dataclass
class EvalResult:
    """Perplexities of one split and the protocol that produced them."""

    split: str
    context: int
    stride: int
    tokens_scored: int
    nll_sum: float
    token_ppl: float
    word_ppl: Optional[float]
    bits_per_byte: Optional[float]
    words: Optional[int]
    bytes: Optional[int]

    def protocol(self) -> str:
        kind = "non-overlapping chunks" if self.stride == self.context else f"sliding window, stride {self.stride}"
        return (
            f"split={self.split}, context={self.context}, {kind}; every token after the first is scored "
            f"exactly once ({self.tokens_scored:,} tokens)"
        )

    def table(self) -> str:
        rows = [("token ppl", f"{self.token_ppl:.3f}")]
        if self.word_ppl is not None:
            rows.append((f"word ppl ({self.words:,} words)", f"{self.word_ppl:.3f}"))
        if self.bits_per_byte is not None:
            rows.append((f"bits per byte ({self.bytes:,} bytes)", f"{self.bits_per_byte:.4f}"))
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{name:<{width}} : {val}" for name, val in rows)


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Evaluation windows over a token stream of length ``n_tokens``.

    Each window is ``(start, end, first)``: inputs are tokens[start:end], targets tokens[start+1:end+1],
    and only targets at input positions >= ``first`` are scored, so every token after the first is
    scored exactly once. ``stride == context`` gives non-overlapping chunks (the paper's protocol);
    a smaller stride gives every scored token at least ``context - stride`` tokens of context.
    """
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be in [1, context={context}], got {stride}")
    out, scored_until, start = [], 0, 0
    last = n_tokens - 1  # number of targets
    while scored_until < last:
        end = min(start + context, last)
        out.append((start, end, scored_until))
        scored_until = end
        start += stride
    return out


@torch.no_grad()
def score_tokens(model, ids: np.ndarray, context: int, stride: int, batch_size: int = 8,
                 device: str | torch.device = "cpu", progress: bool = True) -> tuple[float, int]:
    """Total NLL (nats, fp64) and number of scored tokens of ``ids`` under ``model`` (HF causal LM)."""
    wins = windows(len(ids), context, stride)
    full = [w for w in wins if w[1] - w[0] == context]
    rest = [w for w in wins if w[1] - w[0] != context]
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[w] for w in rest]
    nll, count = 0.0, 0
    for batch in tqdm(batches, desc="evaluating", unit="batch", disable=not progress):
        x = torch.stack([torch.from_numpy(np.asarray(ids[s:e], dtype=np.int64)) for s, e, _ in batch]).to(device)
        y = torch.stack([torch.from_numpy(np.asarray(ids[s + 1 : e + 1], dtype=np.int64)) for s, e, _ in batch]).to(device)
        logits = model(input_ids=x).logits.float()  # (B, T, V)
        lp = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).double()
        for row, (s, _, first) in enumerate(batch):
            scored = lp[row, first - s :]
            nll += scored.sum().item()
            count += scored.numel()
    return nll, count


def evaluate_ids(model, ids: np.ndarray, split: str, context: int, stride: Optional[int], meta: Optional[dict],
                 batch_size: int, device, progress: bool = True) -> EvalResult:
    """Score a whole tokenised split and convert to token ppl, word ppl and bits per byte."""
    stride = context if stride is None else stride
    nll, count = score_tokens(model, ids, context, stride, batch_size, device, progress)
    words = meta.get("words") if meta else None
    nbytes = meta.get("bytes") if meta else None
    return EvalResult(
        split=split, context=context, stride=stride, tokens_scored=count, nll_sum=nll,
        token_ppl=perplexity(nll, count),
        word_ppl=math.exp(min(nll / words, 700.0)) if words else None,
        bits_per_byte=bits_per_byte(nll, nbytes) if nbytes else None,
        words=words, bytes=nbytes,
    )
