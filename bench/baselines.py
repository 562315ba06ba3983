"""What the benchmarks compare against: the straightforward RTF code path and an S4D kernel.

``reference_*`` functions are the plain formulation of the RTF filter as it stood before the speed
work in ``hyena_rtf.modeling`` (autograd through ``torch.fft`` along the time axis of (B, L, D)
tensors, a complex division per bin, two independent FFT convolutions in prefill, any 5-smooth FFT
length). They read the parameters of a live :class:`~hyena_rtf.modeling.rtf.RTF`, so both paths
compute the same function and a table can show their ratio; ``tests/test_bench.py`` checks that
they agree.

:class:`S4DKernel` is a diagonal state-space kernel in the usual S4D form: complex diagonal A,
kernel ``2 Re(sum_n C_n (dt B_n) exp(dt A_n)^t)`` through a materialised (D, N/2, L) Vandermonde
matrix, with N/2 conjugate pairs for a real state of size N.
"""

from __future__ import annotations

import math

import scipy.fft
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyena_rtf.modeling.fftconv import polymul
from hyena_rtf.modeling.hyena import HyenaOperator
from hyena_rtf.modeling.rtf import RTF

__all__ = [
    "reference_fft_size",
    "reference_fft_conv",
    "reference_kernel",
    "reference_forward",
    "reference_prefill",
    "reference_hyena_forward",
    "S4DKernel",
]


def reference_fft_size(n: int) -> int:
    """Smallest 5-smooth integer >= n (the earlier rule, blind to the cost of odd lengths)."""
    return scipy.fft.next_fast_len(n, real=True)


def reference_fft_conv(u: Tensor, k: Tensor) -> Tensor:
    """Causal FFT convolution of u (B, L, D) with k (D, >=L), autograd through torch.fft."""
    L = u.shape[1]
    n = reference_fft_size(2 * L - 1)
    u_f = torch.fft.rfft(u, n=n, dim=1)  # (B, n//2+1, D)
    k_f = torch.fft.rfft(k[:, :L], n=n, dim=1)  # (D, n//2+1)
    return torch.fft.irfft(u_f * k_f.t(), n=n, dim=1)[:, :L]  # (B, L, D)


def reference_kernel(f: RTF, L: int) -> Tensor:
    """RTF kernel (ndir * D, L): rFFTs of numerators and denominators, a division, an irFFT."""
    n = f.l_max
    group = f.d_model // f.num_a
    a = f.denominator()  # (R, N)
    ones = torch.ones(a.shape[0], 1, dtype=a.dtype, device=a.device)
    den_f = torch.fft.rfft(torch.cat([ones, a], -1), n=n)  # (R, n//2+1)
    num = F.pad(f.b, (1, 0))  # (ndir*D, N+1)
    num_f = torch.fft.rfft(num, n=n).view(a.shape[0], group, -1)  # (R, group, n//2+1)
    spec = (num_f / den_f.unsqueeze(1)).reshape(num.shape[0], -1)  # (ndir*D, n//2+1)
    k = torch.fft.irfft(spec, n=n)[:, :L]  # (ndir*D, L)
    return torch.cat([k[:, :1] + f.h0.unsqueeze(-1), k[:, 1:]], -1)


def reference_forward(f: RTF, u: Tensor) -> Tensor:
    """Causal RTF filtering of u (B, L, D) (no kernel dropout)."""
    return reference_fft_conv(u, reference_kernel(f, u.shape[1])[: f.d_model])


@torch.no_grad()
def reference_prefill(f: RTF, u: Tensor) -> tuple[Tensor, Tensor]:
    """Prefill of one chunk (T <= l_max) from the zero state with two separate FFT convolutions."""
    B, T, D = u.shape
    N = f.state_size
    state = f.initial_state(B, device=u.device)
    rec = f.companion_form(state.dtype)
    x_rev = state.flip(-1)  # (B, D, N)
    e = -polymul(rec["a"], x_rev, 2 * N - 1)[..., N - 1 :]  # (B, D, N)
    g = polymul(rec["c"], x_rev, 2 * N - 1)[..., N - 1 :]  # (B, D, N)
    m = min(N, T)
    e_t = F.pad(e[..., :m].transpose(1, 2), (0, 0, 0, T - m))  # (B, T, D)
    g_t = F.pad(g[..., :m].transpose(1, 2), (0, 0, 0, T - m))  # (B, T, D)
    drive = u + e_t
    k = reference_kernel(f, T)[:D]  # (D, T)
    y = reference_fft_conv(drive, k) - rec["d"] * e_t + g_t  # (B, T, D)
    w = reference_fft_conv(drive, rec["g"][:, :T])  # (B, T, D)
    w_last = w[:, T - m :].flip(1).transpose(1, 2)  # (B, D, m)
    return y, torch.cat([w_last, state[..., : N - m]], -1)


def reference_hyena_forward(op: HyenaOperator, u: Tensor) -> Tensor:
    """Hyena operator forward whose long convolutions use :func:`reference_forward`."""
    z = op.in_proj(u).transpose(1, 2)  # (B, C, L)
    zc = op.short_filter(F.pad(z, (op.short_filter_order - 1, 0))).transpose(1, 2)  # (B, L, C)
    *xs, v = zc.chunk(op.order + 1, dim=-1)
    for i, x in enumerate(reversed(xs[1:])):
        v = reference_forward(op.filters[i], op.dropout(v * x))
    y = v * xs[0]  # (B, L, D)
    if op.mimo_proj is not None:
        y = F.gelu(op.mimo_proj(op.out_norm(y)))
    return op.out_proj(y)


class S4DKernel(nn.Module):
    """Diagonal SSM (S4D-Lin initialisation) whose kernel uses a materialised Vandermonde matrix.

    Args:
        d_model: channels.
        state_size: real state size N per channel, realised as N/2 complex conjugate pairs.
        dt_min, dt_max: range of the log-uniform step sizes.
    """

    def __init__(self, d_model: int, state_size: int, dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        modes = max(state_size // 2, 1)
        log_dt = torch.rand(d_model) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self.log_neg_a_real = nn.Parameter(torch.full((d_model, modes), math.log(0.5)))
        self.a_imag = nn.Parameter(math.pi * torch.arange(modes, dtype=torch.float32).repeat(d_model, 1))
        self.b = nn.Parameter(torch.stack([torch.ones(d_model, modes), torch.zeros(d_model, modes)], -1))
        self.c = nn.Parameter(torch.randn(d_model, modes, 2) * math.sqrt(0.5))
        self.modes = modes

    def vandermonde_bytes(self, L: int) -> int:
        """Bytes of one (D, N/2, L) complex64 tensor; forward + backward hold about four of them."""
        return self.log_dt.shape[0] * self.modes * L * 8

    def kernel(self, L: int) -> Tensor:
        """Real kernel (D, L)."""
        dt = self.log_dt.exp().unsqueeze(-1)  # (D, 1)
        a = torch.complex(-self.log_neg_a_real.exp(), self.a_imag)  # (D, M)
        t = torch.arange(L, device=dt.device, dtype=dt.dtype)
        vandermonde = torch.exp((a * dt).unsqueeze(-1) * t)  # (D, M, L): exp(dt A)^t
        coef = torch.view_as_complex(self.c) * torch.view_as_complex(self.b) * dt  # (D, M)
        return 2 * torch.einsum("dm,dml->dl", coef, vandermonde).real  # (D, L)
