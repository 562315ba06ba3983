"""Language-model metrics as pure functions of summed negative log-likelihoods (in nats)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["perplexity", "word_perplexity", "bits_per_byte", "unigram_ppl"]

_MAX_EXP = 700.0  # exp() of more overflows a float; such perplexities are reported as inf


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < _MAX_EXP else float("inf")


def perplexity(nll_sum: float, tokens: float) -> float:
    """Token-level perplexity exp(total NLL / tokens)."""
    if tokens <= 0:
        raise ValueError(f"tokens must be > 0, got {tokens}")
    return _safe_exp(nll_sum / tokens)


def word_perplexity(nll_sum: float, words: float) -> float:
    """Word-level perplexity exp(total NLL / words of the original text): tokenizer-independent."""
    if words <= 0:
        raise ValueError(f"words must be > 0, got {words}")
    return _safe_exp(nll_sum / words)


def bits_per_byte(nll_sum: float, n_bytes: float) -> float:
    """Total NLL in bits divided by the UTF-8 bytes of the original text."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be > 0, got {n_bytes}")
    return nll_sum / (math.log(2.0) * n_bytes)


def unigram_ppl(train_ids: np.ndarray, eval_ids: np.ndarray, vocab_size: int) -> float:
    """Perplexity on ``eval_ids`` of an add-one smoothed unigram model fitted on ``train_ids``.

    The floor any language model must beat: it knows token frequencies and nothing about context.
    """
    counts = np.bincount(np.asarray(train_ids, dtype=np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    eval_ids = np.asarray(eval_ids, dtype=np.int64)
    return _safe_exp(-float(logp[eval_ids].mean()))
