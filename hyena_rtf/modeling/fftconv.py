"""Causal long convolution through the FFT, with a direct O(L^2) reference beside it.

Both functions take channel-last inputs ``u`` of shape (B, L, D) and per-channel kernels ``k`` of
shape (D, Lk) with ``Lk >= L`` (taps past L cannot reach any output and are ignored), and return
``y[b, t, d] = sum_{s <= t} k[d, t - s] * u[b, s, d]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fft_conv", "direct_conv", "fft_size", "polymul"]


def fft_size(n: int) -> int:
    """Smallest 5-smooth integer >= n (fast sizes for pocketfft and cuFFT alike)."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    # FFTs in half precision are unsupported on CPU and inaccurate on GPU: never go below fp32.
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def fft_conv(u: Tensor, k: Tensor) -> Tensor:
    """Causal convolution of ``u`` (B, L, D) with kernels ``k`` (D, >=L) via rFFT of size >= 2L-1.

    Computed in fp32 (or fp64 when an input is fp64) with autocast disabled, and cast back to
    ``u.dtype``, so bf16/fp16 training never runs a half-precision FFT.
    """
    if u.dim() != 3:
        raise ValueError(f"u must have shape (B, L, D), got {tuple(u.shape)}")
    B, L, D = u.shape
    if k.dim() != 2 or k.shape[0] != D or k.shape[1] < L:
        raise ValueError(f"k must have shape (D={D}, >= L={L}), got {tuple(k.shape)}")
    n = fft_size(2 * L - 1)
    dtype = _compute_dtype(u, k)
    with torch.autocast(device_type=u.device.type, enabled=False):
        u_f = torch.fft.rfft(u.to(dtype), n=n, dim=1)  # (B, n//2+1, D)
        k_f = torch.fft.rfft(k[:, :L].to(dtype), n=n, dim=1)  # (D, n//2+1)
        y = torch.fft.irfft(u_f * k_f.t(), n=n, dim=1)[:, :L]  # (B, L, D)
    return y.to(u.dtype)


def direct_conv(u: Tensor, k: Tensor) -> Tensor:
    """Reference for :func:`fft_conv`: the causal convolution as an explicit Toeplitz product."""
    B, L, D = u.shape
    t = torch.arange(L, device=u.device)
    lag = t[:, None] - t[None, :]  # (L, L): output t, input s
    taps = k[:, lag.clamp(min=0)] * (lag >= 0)  # (D, L, L)
    return torch.einsum("dts,bsd->btd", taps.to(u.dtype), u)


def polymul(p: Tensor, q: Tensor, n: int) -> Tensor:
    """First ``n`` coefficients of the product of polynomials ``p`` (..., P) and ``q`` (..., Q).

    A linear (not circular) convolution along the last dimension through the FFT; used for exact
    polynomial arithmetic on filter coefficients in fp64.
    """
    size = fft_size(p.shape[-1] + q.shape[-1] - 1)
    prod = torch.fft.irfft(torch.fft.rfft(p, n=size) * torch.fft.rfft(q, n=size), n=size)
    out = prod[..., :n]
    if out.shape[-1] < n:
        out = torch.nn.functional.pad(out, (0, n - out.shape[-1]))
    return out
