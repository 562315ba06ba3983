"""Evaluation windows and checkpoint resolution (no model needed)."""

import os
import time

import numpy as np
import pytest
import torch

from hyena_rtf.checkpoints.loading import is_intact, resolve_ckpt_path
from hyena_rtf.errors import UserError
from hyena_rtf.evaluation.perplexity import score_tokens, windows


@pytest.mark.parametrize("n,context,stride", [(2, 4, 4), (10, 4, 4), (11, 4, 4), (100, 16, 16), (100, 16, 5), (37, 8, 1)])
def test_every_target_scored_once_with_context_limit(n, context, stride):
    scored = []
    for start, end, first in windows(n, context, stride):
        assert 0 < end - start <= context
        assert start <= first < end
        scored += list(range(first + 1, end + 1))  # token indices predicted
    assert scored == list(range(1, n))


def test_non_overlapping_windows_are_the_chunk_protocol():
    # stride == context: inputs tokens[i*L:(i+1)*L] predicting tokens[i*L+1:(i+1)*L+1]
    assert windows(9, 4, 4) == [(0, 4, 0), (4, 8, 4)]


def test_bad_stride():
    with pytest.raises(ValueError, match="stride"):
        windows(10, 4, 5)


class _Bigram(torch.nn.Module):
    """A model whose log-probabilities depend on the previous token only: scores are exact."""

    def __init__(self, vocab):
        super().__init__()
        self.table = torch.randn(vocab, vocab)

    def forward(self, input_ids):
        return type("Out", (), {"logits": self.table[input_ids]})()


def test_score_tokens_matches_direct_sum():
    torch.manual_seed(0)
    model = _Bigram(7)
    ids = np.random.default_rng(0).integers(0, 7, size=50)
    logp = torch.log_softmax(model.table, -1)
    ref = -sum(logp[ids[i - 1], ids[i]].item() for i in range(1, 50))
    for context, stride in [(8, 8), (8, 3), (49, 49), (64, 64)]:
        nll, count = score_tokens(model, ids, context, stride, batch_size=3, progress=False)
        assert count == 49
        assert abs(nll - ref) < 1e-9


def _fake_ckpt(path, payload=b"x" * 1000):
    torch.save({"w": torch.arange(100)}, path)


def test_resolve_last_and_damaged_fallback(tmp_path):
    task = tmp_path / "logs" / "train"
    old = task / "runs" / "2026-01-01" / "checkpoints"
    new = task / "runs" / "2026-01-02" / "checkpoints"
    old.mkdir(parents=True)
    new.mkdir(parents=True)
    _fake_ckpt(old / "last.ckpt")
    time.sleep(0.01)
    _fake_ckpt(new / "step_0000010.ckpt")
    time.sleep(0.01)
    _fake_ckpt(new / "last.ckpt")
    os.utime(new, None)
    assert resolve_ckpt_path("last", task) == str(new / "last.ckpt")
    # Truncate the newest file: resume falls back to the intact one beside it.
    data = (new / "last.ckpt").read_bytes()
    (new / "last.ckpt").write_bytes(data[: len(data) // 2])
    assert not is_intact(new / "last.ckpt")
    assert resolve_ckpt_path("last", task) == str(new / "step_0000010.ckpt")
    assert resolve_ckpt_path(str(new / "last.ckpt"), task) == str(new / "step_0000010.ckpt")
    with pytest.raises(UserError, match="not found"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), task)
    with pytest.raises(UserError, match="no intact checkpoint"):
        resolve_ckpt_path("last", tmp_path / "logs" / "other")
    assert resolve_ckpt_path(None, task) is None
