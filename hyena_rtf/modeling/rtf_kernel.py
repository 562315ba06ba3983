"""Kernels and poles of rational transfer functions: the aliased spectral kernel, 1/A, poles.

The RTF's parallel mode (:mod:`.rtf`) samples ``H(z) = h0 + B(z) / A(z)`` at the ``n``-th roots
of unity with one rFFT of the zero-padded coefficients, divides, and returns to the time domain
with one irFFT: cost O(n log n) per channel whatever the order ``N`` is. Sampling on the unit
circle gives the *time-aliased* response ``sum_j h[t + j*n]``; the RTF reads its trained
numerator as the aliasing-corrected one, so the aliased kernel is the one it wants.

:class:`RationalKernel` is that computation with a hand-written backward;
:func:`inverse_impulse_response` is the exact (unaliased) response of ``1 / A``, which the
recurrent mode and the transfer-function constructor need; :func:`companion_poles` roots a
denominator (the RTF, its constructors and the distillation fit all check poles).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RationalKernel", "inverse_impulse_response", "companion_poles"]


def inverse_impulse_response(den: Tensor, n: int) -> Tensor:
    """First ``n`` taps of the impulse response of ``1 / den(z^-1)`` for monic ``den`` (R, N+1).

    Run as the plain recursion g_t = -sum_k a_k g_{t-k} (what scipy.signal.lfilter does): it is
    forward-stable for stable filters, unlike matrix powers or Newton series inversion, both of
    which lose every digit for high orders with poles near the unit circle. The loop runs over
    parameter-derived taps once per parameter change (results are cached), never over inputs.
    """
    R, N = den.shape[0], den.shape[1] - 1
    a_rev = den[:, 1:].flip(-1)  # (R, N): a_N, ..., a_1
    g = torch.zeros(R, N + n, dtype=den.dtype, device=den.device)  # N zeros of history first
    g[:, N] = 1.0
    for s in range(N + 1, N + n):
        g[:, s] = -(a_rev * g[:, s - N : s]).sum(-1)
    return g[:, N:]


def companion_poles(a: Tensor) -> Tensor:
    """Complex poles (R, N) of the monic denominators with coefficients a (R, N), in fp64: the
    eigenvalues of their companion matrices, i.e. the roots of z^N + a_1 z^(N-1) + ... + a_N."""
    R, N = a.shape
    comp = torch.zeros(R, N, N, dtype=torch.float64, device=a.device)
    comp[:, 0, :] = -a
    if N > 1:
        comp[:, 1:, :-1] = torch.eye(N - 1, dtype=torch.float64, device=a.device)
    return torch.linalg.eigvals(comp)  # (R, N)


def _spectra(b: Tensor, a: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Spectra on the n-th roots of unity: numerators (R, group, n//2+1) and 1/A (R, 1, n//2+1).

    ``a`` may be in a wider dtype than ``b`` (the RTF passes fp64 denominators: with poles near the
    circle, A(e^iw) is a small difference of large coefficients); 1/A is formed in that dtype and
    only then rounded to ``b``'s precision.
    """
    R, N = a.shape
    num = F.pad(b, (1, 0))  # (ndir*D, N+1): strictly proper, b_0 = 0
    den = F.pad(a, (1, 0), value=1.0)  # (R, N+1): monic
    num_f = torch.fft.rfft(num, n=n).view(R, -1, n // 2 + 1)  # (R, group, n//2+1)
    inv_den_f = torch.fft.rfft(den, n=n).reciprocal().to(num_f.dtype).unsqueeze(1)  # (R, 1, n//2+1)
    return num_f, inv_den_f


class RationalKernel(torch.autograd.Function):
    """First L taps of irFFT_n(B(z) / A(z)) plus h0 on tap 0, with a hand-written backward.

    ``apply(b, a, h0, n, L)``: b (R * group, N) numerators, a (R, N) denominators (each shared by
    ``group`` consecutive numerator rows, possibly in a wider dtype), h0 (R * group,) feed-through;
    returns (R * group, L) in b's dtype.

    Autograd through this chain spends most of its time in complex divisions and in the backward
    of ``rfft`` (a full-length complex FFT of a zero-padded gradient). The adjoint is simpler: the
    kernel is the circular convolution of b with the impulse response of 1/A, so the gradient
    w.r.t. b is the correlation of the kernel gradient with that response, i.e. an irFFT of
    rFFT(grad) * conj(1/A); the gradient w.r.t. a follows from d(B/A)/dA = -(B/A) / A.
    """

    @staticmethod
    def forward(ctx, b: Tensor, a: Tensor, h0: Tensor, n: int, L: int) -> Tensor:
        num_f, inv_den_f = _spectra(b, a, n)  # (R, group, F), (R, 1, F)
        spec = num_f * inv_den_f  # (R, group, F)
        k = torch.fft.irfft(spec.view(b.shape[0], -1), n=n)[:, :L]  # (ndir*D, L)
        # h0 is a flat spectrum, i.e. a delta at tap 0: add it in time, not to every bin.
        k[:, 0] += h0
        ctx.save_for_backward(b, a, spec, inv_den_f)
        ctx.n = n
        return k

    @staticmethod
    def backward(ctx, grad: Tensor):
        b, a, spec, inv_den_f = ctx.saved_tensors
        n, N = ctx.n, a.shape[1]
        if torch.is_grad_enabled():
            # create_graph: the saved spectra carry no graph; rebuild them from the parameters so
            # that this backward is itself differentiable.
            num_f, inv_den_f = _spectra(b, a, n)
            spec = num_f * inv_den_f
        g_f = torch.fft.rfft(grad, n=n).view(spec.shape)  # (R, group, F)
        q = g_f * inv_den_f.conj()  # (R, group, F): correlation with the response of 1/A
        grad_b = torch.fft.irfft(q.view(b.shape[0], -1), n=n)[:, 1 : N + 1]  # (ndir*D, N)
        grad_den_f = (q * spec.conj()).sum(1)  # (R, F), up to the sign
        grad_a = -torch.fft.irfft(grad_den_f, n=n)[:, 1 : N + 1].to(a.dtype)  # (R, N)
        return grad_b, grad_a, grad[:, 0], None, None
