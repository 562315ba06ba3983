"""Causal long convolution through the FFT, with a direct O(L^2) reference beside it.

Both functions take channel-last inputs ``u`` of shape (B, L, D) and per-channel kernels ``k`` of
shape (D, Lk) with ``Lk >= L`` (taps past L cannot reach any output and are ignored), and return
``y[b, t, d] = sum_{s <= t} k[d, t - s] * u[b, s, d]``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["fft_conv", "direct_conv", "fft_size", "polymul"]


def fft_size(n: int) -> int:
    """Fast FFT length >= n: the smallest 2^a 3^b 5^c >= n that is a multiple of 16 (n > 16).

    Any 5-smooth length is supported by pocketfft/MKL and cuFFT, but real FFTs of lengths with few
    factors of two are much slower per point (measured on CPU: odd lengths ~3x, lengths with a
    single factor 2 ~1.5x), so a slightly longer multiple of 16 wins. Small n get a power of two.
    """
    if n <= 16:
        return 1 << max(n - 1, 0).bit_length()
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while 16 * p5 < best:
        p35 = p5
        while 16 * p35 < best:
            m = 16 * p35
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


class _CausalFFTConv(torch.autograd.Function):
    """Causal convolution of channel-first ``u`` (B, D, L) with ``k`` (D, L), both in one dtype.

    The backward is written by hand: autograd through ``rfft`` pads the incoming gradient to a full
    complex spectrum and runs a complex FFT of twice the size, which made the backward 7x slower
    than the forward. The adjoint of a causal convolution is a correlation with the same kernel,
    i.e. a product with the conjugate spectrum, so the backward reuses the forward's spectra and
    needs one rFFT of the gradient and one irFFT per input gradient.
    """

    @staticmethod
    def forward(ctx, u: Tensor, k: Tensor) -> Tensor:
        L = u.shape[-1]
        n = fft_size(2 * L - 1)  # >= 2L-1: the circular product never wraps onto t < L
        u_f = torch.fft.rfft(u, n=n)  # (B, D, n//2+1); any strides, the FFT reads them in place
        k_f = torch.fft.rfft(k, n=n)  # (D, n//2+1)
        # The spectra serve the backward; u and k only a backward that is itself differentiated.
        ctx.save_for_backward(u_f, k_f, u, k)
        return torch.fft.irfft(u_f * k_f, n=n)[..., :L]  # (B, D, L), a view of (B, D, n)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Optional[Tensor], Optional[Tensor]]:
        u_f, k_f, u, k = ctx.saved_tensors
        L = u.shape[-1]
        n = fft_size(2 * L - 1)
        create_graph = torch.is_grad_enabled()
        if create_graph:
            # The saved spectra carry no graph: rebuild them from the inputs, and no in-place ops.
            u_f, k_f = torch.fft.rfft(u, n=n), torch.fft.rfft(k, n=n)
        g_f = torch.fft.rfft(grad, n=n)  # (B, D, n//2+1)
        grad_u = grad_k = None
        if ctx.needs_input_grad[1]:
            grad_k = torch.fft.irfft((g_f * u_f.conj()).sum(0), n=n)[..., :L]  # (D, L): batch summed first
        if ctx.needs_input_grad[0]:
            prod = g_f * k_f.conj() if create_graph else g_f.mul_(k_f.conj())
            grad_u = torch.fft.irfft(prod, n=n)[..., :L]  # (B, D, L)
        return grad_u, grad_k


def fft_conv(u: Tensor, k: Tensor) -> Tensor:
    """Causal convolution of ``u`` (B, L, D) with kernels ``k`` (D, >=L) via rFFT of size >= 2L-1.

    Computed in fp32 (or fp64 when an input is fp64) with autocast disabled, and cast back to
    ``u.dtype``, so bf16/fp16 training never runs a half-precision FFT. The FFTs run along the last
    axis of the channel-first view ``u.transpose(1, 2)`` and the result is returned as such a view
    (not contiguous): a caller that keeps its activations channel-first, like
    :class:`~.hyena.HyenaOperator`, passes ``x.transpose(1, 2)`` and gets no copy at either end.
    """
    if u.dim() != 3:
        raise ValueError(f"u must have shape (B, L, D), got {tuple(u.shape)}")
    B, L, D = u.shape
    if k.dim() != 2 or k.shape[0] != D or k.shape[1] < L:
        raise ValueError(f"k must have shape (D={D}, >= L={L}), got {tuple(k.shape)}")
    dtype = _compute_dtype(u, k)
    with torch.autocast(device_type=u.device.type, enabled=False):
        u_cf = u.to(dtype).transpose(1, 2)  # (B, D, L) view
        y = _CausalFFTConv.apply(u_cf, k[:, :L].to(dtype))  # (B, D, L)
    return y.transpose(1, 2).to(u.dtype)  # (B, L, D)


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
