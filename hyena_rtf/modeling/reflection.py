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

Costs O(N^2) per denominator, independent of the kernel length; the recursion has a hand-written
backward (the autograd graph of N small steps costs more than the arithmetic on a CPU).
``statsmodels.tsa.statespace.tools.constrain_stationary_univariate`` implements the same map
(with the squash x / sqrt(1 + x^2) instead of tanh and the opposite sign of ``a``); the tests use
it as the independent reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["reflection_to_denominator", "denominator_to_reflection", "step_up_reference"]


def step_up_reference(k: Tensor) -> Tensor:
    """The step-up recursion written plainly with autograd: k (R, N) -> a (R, N). Slow reference."""
    a = k[:, :0]
    for m in range(k.shape[1]):
        km = k[:, m : m + 1]  # (R, 1)
        a = torch.cat([a + km * a.flip(-1), km], -1)  # (R, m+1)
    return a


class _StepUp(torch.autograd.Function):
    """Step-up recursion with a hand-written reverse pass (see the module docstring)."""

    @staticmethod
    def forward(ctx, k: Tensor) -> Tensor:
        R, N = k.shape
        history = k.new_zeros(N, R, N)  # history[m, :, :m] = a^(m) (orders 0..N-1)
        a = k.new_zeros(R, N)
        for m in range(N):
            history[m] = a
            km = k[:, m : m + 1]  # (R, 1)
            prev = a[:, :m]
            a = a.clone()
            a[:, :m] = prev + km * prev.flip(-1)
            a[:, m] = k[:, m]
        ctx.save_for_backward(k, history)
        return a

    @staticmethod
    def backward(ctx, grad: Tensor):
        k, history = ctx.saved_tensors
        N = k.shape[1]
        if torch.is_grad_enabled():  # double backward: differentiate the plain recursion instead
            with torch.enable_grad():
                return torch.autograd.grad(step_up_reference(k), k, grad, create_graph=True)
        g = grad.clone()  # (R, N): gradient w.r.t. a^(m) on its first m entries
        grad_k = torch.empty_like(k)
        for m in range(N - 1, -1, -1):
            prev = history[m, :, :m]  # a^(m-1) in the docstring's numbering: (R, m)
            gm = g[:, :m]
            grad_k[:, m] = g[:, m] + (gm * prev.flip(-1)).sum(-1)
            g[:, :m] = gm + k[:, m : m + 1] * gm.flip(-1)
        return grad_k


def reflection_to_denominator(k: Tensor) -> Tensor:
    """Reflection coefficients k (R, N), each in (-1, 1), -> denominators a (R, N) of stable
    monic polynomials 1 + a_1 z^-1 + ... + a_N z^-N (step-up recursion)."""
    if k.dim() != 2:
        raise ValueError(f"k must be (rows, order), got shape {tuple(k.shape)}")
    return _StepUp.apply(k)


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
