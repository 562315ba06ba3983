"""Analytic FLOP counts, FFTs included (torch's FLOP counter sees only matmuls and convolutions).

Used for MFU in the throughput monitor and in benchmarks. A multiply-add counts as 2 FLOPs; a
real FFT of size n as 2.5 n log2 n; a training step as 3x the forward pass.
"""

from __future__ import annotations

import math

from torch import nn

from ..modeling.attention import CausalSelfAttention
from ..modeling.fftconv import fft_size
from ..modeling.long_filter import LongFilter

__all__ = ["flops_per_token", "train_flops_per_token"]


def _rfft_flops(n: int) -> float:
    return 2.5 * n * math.log2(max(n, 2))


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Forward FLOPs per token of ``model`` on sequences of ``seq_len`` tokens.

    Counts every Linear (LM head included), the depthwise short convolutions, the long FFT
    convolutions (input rFFT + pointwise product + irFFT per channel) of every long filter, the
    filters' kernel generation (batch-independent, amortised over one sequence: two FFTs per
    channel unless the filter states its own cost in ``kernel_flops(L)``, as the S4D
    Vandermonde kernel does), and attention scores and values (2 matmuls of length ``seq_len``,
    no causal discount, as in the PaLM MFU convention).
    """
    total = 0.0
    n = fft_size(2 * seq_len - 1)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            total += 2 * m.in_features * m.out_features
        elif isinstance(m, nn.Conv1d):
            total += 2 * m.weight.numel()  # depthwise: (C, 1, K) multiply-adds per position
        elif isinstance(m, LongFilter):
            per_channel = 2 * _rfft_flops(n) + 6 * (n // 2 + 1)  # rfft(u), irfft(y), complex product
            if hasattr(m, "kernel_flops"):
                kernel = m.kernel_flops(seq_len)
            else:  # the kernel's spectrum (RTF: coefficient FFTs; implicit: its FFT), once per sequence
                kernel = m.d_model * 2 * _rfft_flops(n)
            total += (m.d_model * per_channel + kernel) / seq_len
        elif isinstance(m, CausalSelfAttention):
            total += 2 * 2 * m.d_model * seq_len
    return total


def train_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Forward + backward FLOPs per token (3x forward)."""
    return 3.0 * flops_per_token(model, seq_len)
