"""Stable denominators as products of second-order sections, each with its own reflection pair.

    A(z) = prod_j (1 + c_j z^-1 + d_j z^-2),   d_j = K tanh(v_j),   c_j = (1 + d_j) K tanh(u_j)

A quadratic is stable (both roots strictly inside the unit circle) exactly when |d| < 1 and
|c| < 1 + d: its two reflection coefficients, k_2 = d and k_1 = c / (1 + d), lie in (-1, 1), which
the tanh of any real (u, v) guarantees. Every real stable polynomial of even order is such a
product (pair complex roots with their conjugates, real roots with each other); an odd order adds
one first-order section 1 + K tanh(u) z^-1. So, like the step-up map of :mod:`.reflection`, every
parameter value is stable and every stable filter is reachable, and zero parameters give A = 1.

The difference is conditioning. In the step-up map a pole depends on every reflection
coefficient; when one of them is near +-1 (a slow pole), small moves of all the others (Adam moves
every coordinate by about the learning rate per step, whatever its gradient) push the roots of a
high-order A onto the circle. Here each section owns two poles: a step moves each pole pair a
little, and a slow pole is one section's business. The poles are available in closed form.

Costs: the coefficients of A from the N/2 factors in N/2 small steps (O(R N^2) in all, independent
of the kernel length), done in fp64 by the RTF filter like the step-up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .reflection import K_MAX

__all__ = ["section_coefficients", "sections_to_denominator", "sections_poles", "raw_from_poles"]


def section_coefficients(raw: Tensor) -> tuple[Tensor, Tensor]:
    """raw (R, N) -> (c, d), each (R, ceil(N/2)): section j uses raw[:, 2j] (c) and raw[:, 2j+1] (d);
    with N odd the last section is first order (its d is zero)."""
    R, N = raw.shape
    u = raw[:, 0::2]  # (R, ceil(N/2))
    v = F.pad(raw[:, 1::2], (0, N % 2))  # (R, ceil(N/2)); an odd order's last section has no d
    d = K_MAX * torch.tanh(v)
    if N % 2:
        d = torch.cat([d[:, :-1], torch.zeros_like(d[:, -1:])], -1)
    c = (1 + d) * K_MAX * torch.tanh(u)
    return c, d


def sections_to_denominator(raw: Tensor) -> Tensor:
    """raw (R, N) -> a (R, N): the coefficients a_1..a_N of the product of the sections."""
    c, d = section_coefficients(raw)
    R, N = raw.shape
    a = torch.zeros(N + 1, R, dtype=raw.dtype, device=raw.device)  # coefficients along dim 0
    a[0] = 1
    ct, dt = c.t(), d.t()  # (S, R)
    for j in range(c.shape[1]):
        m = min(2 * j + 2, N)  # the product so far has degree 2j; this section makes it m
        # a <- a * (1 + c z^-1 + d z^-2): only the first m + 1 coefficients can be non-zero.
        shifted1 = F.pad(a[: m], (0, 0, 1, 0))  # (m+1, R): z^-1 a
        shifted2 = F.pad(a[: m - 1], (0, 0, 2, 0))  # (m+1, R): z^-2 a
        a = torch.cat([a[: m + 1] + ct[j] * shifted1 + dt[j] * shifted2, a[m + 1 :]], 0)
    return a[1:].t()


def sections_poles(raw: Tensor) -> Tensor:
    """Poles (R, N), complex fp64, in closed form: the two roots of every section (z^2 + c z + d)."""
    c, d = (t.detach().double() for t in section_coefficients(raw.detach().double()))
    disc = torch.sqrt((c * c - 4 * d).to(torch.complex128))  # (R, S)
    roots = torch.stack([(-c + disc) / 2, (-c - disc) / 2], -1)  # (R, S, 2)
    if raw.shape[1] % 2:  # the last section is first order: its single root is -c
        roots = torch.cat([roots[:, :-1].flatten(1), -c[:, -1:].to(torch.complex128)], 1)
    return roots.flatten(1)  # (R, N)


def raw_from_poles(poles: Tensor) -> Tensor:
    """Parameters (R, N) whose sections have the given poles (R, N), complex, each strictly inside
    the unit circle, conjugate pairs complete. Complex pairs form sections; real poles are paired
    in order; with N odd one real pole takes the first-order section."""
    poles = poles.detach().to(torch.complex128).cpu()
    R, N = poles.shape
    raw = torch.zeros(R, N, dtype=torch.float64)
    for r in range(R):
        p = poles[r]
        if bool((p.abs() >= K_MAX).any()):
            raise ValueError("every pole must lie strictly inside the unit circle (|p| < K_MAX)")
        upper = [z for z in p.tolist() if z.imag > 1e-12]
        reals = sorted(z.real for z in p.tolist() if abs(z.imag) <= 1e-12)
        quads = [(-2 * z.real, abs(z) ** 2) for z in upper]  # (c, d) of (z - p)(z - conj p)
        odd = reals.pop() if N % 2 else None
        quads += [(-(x + y), x * y) for x, y in zip(reals[0::2], reals[1::2])]
        if len(quads) != N // 2:
            raise ValueError("the poles must come in conjugate pairs (a real polynomial)")
        for j, (c, d) in enumerate(quads):
            raw[r, 2 * j + 1] = torch.atanh(torch.tensor(d / K_MAX))
            raw[r, 2 * j] = torch.atanh(torch.tensor(c / ((1 + d) * K_MAX)))
        if odd is not None:
            raw[r, N - 1] = torch.atanh(torch.tensor(-odd / K_MAX))
    return raw
