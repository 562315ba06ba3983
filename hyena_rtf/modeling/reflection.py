"""Stable denominators by construction: reflection coefficients and the Levinson step-up recursion.

A monic polynomial ``A(z) = 1 + a_1 z^-1 + ... + a_N z^-N`` has every root strictly inside the
unit circle exactly when its reflection coefficients (partial autocorrelations) ``k_1..k_N`` all
lie in (-1, 1) (Schur-Cohn; Barndorff-Nielsen & Schou 1973). The step-up recursion builds ``a``
from ``k`` one order at a time,

    A_m(z) = A_{m-1}(z) + k_m z^-m A_{m-1}(1/z),     i.e.  a^(m)_j = a^(m-1)_j + k_m a^(m-1)_{m-j},  a^(m)_m = k_m,

and the step-down recursion inverts it. With ``k = tanh(raw)`` every real ``raw`` gives a stable
filter and every stable monic polynomial has a ``raw`` (the map is a bijection between R^N and
the stable region), unlike the l1 (Montel) constraint, which reaches only the polynomials with
sum |a_i| < 1. ``raw = 0`` gives ``a = 0``: the impulse initialisation H(z) = h0.

Floating point: the coefficients ``a`` of a high-order polynomial with many roots near the circle
are badly conditioned (N = 64 with all |k| near 1 gives (1 +- z^-1)^64-like coefficients up to
1e18), so the RTF filter derives ``a`` and its spectrum in fp64 and computes poles from ``k``
directly (:func:`reflection_poles`), not by rooting ``a``.

Costs O(N^2) per denominator, independent of the kernel length; the recursion has a hand-written
backward (the autograd graph of N small steps costs more than the arithmetic on a CPU).
``statsmodels.tsa.statespace.tools.constrain_stationary_univariate`` implements the same map
(with the squash x / sqrt(1 + x^2) instead of tanh and the opposite sign of ``a``); the tests use
it as the independent reference. The trained parameters are ``raw_m = m atanh(k_m)`` (see
:func:`reflection_coefficients` for the factor m).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "K_MAX",
    "reflection_coefficients",
    "raw_from_reflection",
    "reflection_to_denominator",
    "denominator_to_reflection",
    "reflection_poles",
    "step_up_reference",
]

# |k| < 1 keeps every pole inside the circle; tanh of a large parameter rounds to exactly 1 (in
# fp64 from |x| ~ 19), which would put a pole on it, hence the factor just below one.
K_MAX = 1.0 - 1e-6


def _order_scale(raw: Tensor) -> Tensor:
    return torch.arange(1, raw.shape[-1] + 1, dtype=raw.dtype, device=raw.device)  # (N,): m = 1..N


def reflection_coefficients(raw: Tensor) -> Tensor:
    """Reflection coefficients ``k_m = K_MAX * tanh(raw_m / m)`` (m = 1..N along the last dimension):
    strictly inside (-1, 1) for any real ``raw``.

    The 1/m: Adam moves every parameter by about its learning rate per step, whatever the gradient,
    and each reflection coefficient moves the log-gain of the filter, so with N equal moves the
    filter's gain could change like exp(N lr) per step: at N = 256 next to a slow pole, the
    spectrum blew up within ten steps and training stalled (BENCHMARKS.md section 4). Scaled by
    1/m the combined move is about lr log N. Every k in (-1, 1)^N is still reached.
    """
    return K_MAX * torch.tanh(raw / _order_scale(raw))


def raw_from_reflection(k: Tensor) -> Tensor:
    """Inverse of :func:`reflection_coefficients` (|k| must be below ``K_MAX``)."""
    return torch.atanh(k / K_MAX) * _order_scale(k)


def step_up_reference(k: Tensor) -> Tensor:
    """The step-up recursion written plainly with autograd: k (R, N) -> a (R, N). Slow reference."""
    a = k[:, :0]
    for m in range(k.shape[1]):
        km = k[:, m : m + 1]  # (R, 1)
        a = torch.cat([a + km * a.flip(-1), km], -1)  # (R, m+1)
    return a


class _StepUp(torch.autograd.Function):
    """Step-up recursion with a hand-written reverse pass (see the module docstring).

    Order m touches only the first m coefficients, so each step works on an (m, R) slice: O(R N^2)
    arithmetic and memory traffic in all, which matters when R is every channel of a large model.
    Coefficients run along dimension 0 so that those slices are contiguous.
    """

    @staticmethod
    def forward(ctx, k: Tensor) -> Tensor:
        R, N = k.shape
        kt = k.t().contiguous()  # (N, R)
        hist = k.new_empty(N + 1, N, R)  # hist[m, :m] = a^(m), the polynomial of order m
        for m in range(N):
            prev = hist[m, :m]  # (m, R)
            torch.addcmul(prev, kt[m], prev.flip(0), out=hist[m + 1, :m])
            hist[m + 1, m] = kt[m]
        ctx.save_for_backward(k, hist)
        return hist[N].t().contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor):
        k, hist = ctx.saved_tensors
        N = k.shape[1]
        if torch.is_grad_enabled():  # double backward: differentiate the plain recursion instead
            with torch.enable_grad():
                return torch.autograd.grad(step_up_reference(k), k, grad, create_graph=True)
        kt = k.t().contiguous()  # (N, R)
        g = grad.t().contiguous()  # (N, R): gradient w.r.t. a^(m+1) in its first m+1 rows
        grad_k = torch.empty_like(kt)
        for m in range(N - 1, -1, -1):
            gm = g[:m]  # (m, R)
            grad_k[m] = g[m] + (gm * hist[m, :m].flip(0)).sum(0)
            gm.addcmul_(kt[m], gm.flip(0))  # the flip is a copy: reads the old values
        return grad_k.t()


def reflection_to_denominator(k: Tensor) -> Tensor:
    """Reflection coefficients k (R, N), each in (-1, 1), -> denominators a (R, N) of stable
    monic polynomials 1 + a_1 z^-1 + ... + a_N z^-N (step-up recursion)."""
    if k.dim() != 2:
        raise ValueError(f"k must be (rows, order), got shape {tuple(k.shape)}")
    return _StepUp.apply(k)


def reflection_poles(k: Tensor) -> Tensor:
    """Roots of the polynomial with reflection coefficients k (R, N), as complex (R, N), in fp64.

    They are the eigenvalues of an upper Hessenberg matrix built from k (the GGT matrix of the
    theory of orthogonal polynomials on the unit circle, with Verblunsky coefficients -k):
    G[i, j] = -alpha_{i-1} alpha_j prod_{m=i}^{j-1} rho_m for i <= j (alpha_{-1} = -1),
    G[j+1, j] = rho_j, rho = sqrt(1 - alpha^2). G is a section of a unitary matrix, so its
    eigenvalues come out accurately even where the coefficients ``a`` are too ill-conditioned to
    root (many poles next to the circle: the companion matrix of ``a`` then has eigenvalues off by
    far more than the distance to the circle).
    """
    alpha = -k.detach().double()  # (R, N)
    R, N = alpha.shape
    log_rho = 0.5 * torch.log1p(-alpha * alpha)  # (R, N)
    cum = F.pad(torch.cumsum(log_rho, -1), (1, 0))  # (R, N+1): cum[j] = sum_{m<j} log rho_m
    prod = torch.exp(cum[:, None, :N] - cum[:, :N, None])  # (R, N, N): [i, j] = prod_{m=i}^{j-1} rho_m
    prev = torch.cat([-torch.ones_like(alpha[:, :1]), alpha[:, :-1]], -1)  # (R, N): alpha_{i-1}
    G = torch.triu(-prev[:, :, None] * alpha[:, None, :] * prod)  # (R, N, N)
    idx = torch.arange(N - 1, device=alpha.device)
    G[:, idx + 1, idx] = torch.exp(log_rho[:, :-1])
    return torch.linalg.eigvals(G)


def denominator_to_reflection(a: Tensor) -> Tensor:
    """Inverse of :func:`reflection_to_denominator` (step-down recursion): a (R, N) -> k (R, N).

    Raises ValueError when a polynomial is not strictly stable (some |k_m| >= 1), so that callers
    never get a reflection coefficient outside (-1, 1). Computed in fp64.
    """
    if a.dim() != 2:
        raise ValueError(f"a must be (rows, order), got shape {tuple(a.shape)}")
    cur = a.detach().double().clone()
    N = cur.shape[1]
    k = torch.empty_like(cur)
    for m in range(N - 1, -1, -1):
        km = cur[:, m].clone()
        if bool((km.abs() >= 1).any()):
            raise ValueError("denominator is not strictly stable: a reflection coefficient has |k| >= 1")
        k[:, m] = km
        prev = cur[:, :m]
        cur[:, :m] = (prev - km.unsqueeze(-1) * prev.flip(-1)) / (1 - km * km).unsqueeze(-1)
    return k.to(a.dtype)
