"""Fit RTF filter banks to given long-convolution kernels (distillation of implicit filters).

Target: kernels k (C, L) with L = the student's ``l_max``; fitted: an :class:`~.rtf.RTF` of
order N whose *parallel-mode* kernel ``RTF.kernel(L)`` (the time-aliased response of its
system, tap 0 carrying the feed-through) is as close as possible to k. The recurrent mode of the
result then reproduces that kernel exactly, so every stage below works on ``RTF.kernel`` itself.

Three stages, every channel at once:

1. Poles from the Hankel matrix of taps 1..L-1, two ways. (a) Balanced truncation of the
   length-L FIR system: with input vector e_0 its controllability Gramian is the identity and its
   observability Gramian is H^T H (H the zero-padded, symmetric Hankel matrix), so truncating to
   order r keeps the dominant eigenvectors V_r of H, and the poles are the eigenvalues of
   V_r^T S V_r (S: the shift). Stable in exact arithmetic, but a cut IIR kernel is not exactly
   low rank. (b) Kung's method on the unpadded Hankel matrix, A = pinv(V_r[:-1]) V_r[1:]: a kernel
   that *is* an RTF of order <= r has a rank-r matrix and its poles come back to rounding; no
   stability guarantee. Both at orders N, N/2, ..., 1 (missing poles at 0), plus the all-zero
   denominator (an N-tap FIR).
2. For each candidate, the numerator and feed-through by linear least squares: for fixed
   denominators the aliased kernel is linear in (h0, b), tap t = h0 [t = 0] + sum_j b_j
   g~_{(t-j) mod L} with g~ the aliased response of 1/A, so this is the exact optimum for those
   poles. Each channel keeps its best candidate whose rounded coefficients are stable, scored on
   the kernel as the student computes it (coefficients and FFT in the student's dtype: with
   poles near the circle, fp32 round-off in the spectral division can outweigh the fit).
3. Gradient refinement of all coefficients against ``RTF.kernel(L)`` (Adam, fp64), with the
   poles of every channel checked every few steps: a channel whose poles leave the disc goes
   back to its last stable coefficients, and each channel ends at its best stable snapshot (scored
   as in 2). Stops when the loss stops improving by ``tol``.

The ``l1_montel`` constraint (sum|a| < 1) cannot represent most sharp filters; for it the
Hankel poles are pulled towards 0 (p -> rho p, the largest rho in (0, 1] that satisfies the
constraint) before stage 2.

The slow obvious reference of stage 2 is :func:`aliased_kernel_direct` (explicit circular sums).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .rtf import RTF
from .rtf_kernel import RationalKernel, companion_poles

__all__ = [
    "FitResult",
    "hankel_subspaces",
    "subspace_poles",
    "closed_form_fit",
    "poly_from_roots",
    "aliased_kernel_direct",
    "fit_numerator",
    "shrink_to_l1",
    "fit_rtf",
    "max_pole_radius",
]


@dataclass
class FitResult:
    """A fitted bank and its per-channel diagnostics (all fp64, on the CPU)."""

    rtf: RTF  # fp64 RTF with l_max = L; its kernel(L) approximates the target
    rel_err: Tensor  # (C,) ||kernel - target|| / ||target|| per channel
    mse: Tensor  # (C,) mean squared tap error per channel
    pole_radius: Tensor  # (C,) largest pole modulus per channel
    closed_form_rel_err: Tensor  # (C,) after stages 1-2, before refinement
    steps: int  # refinement steps taken
    reverted: int  # channel reverts to a stable snapshot during refinement


def _hankel(h: Tensor, m: int, fir: bool) -> Tensor:
    """Symmetric Hankel matrices (C, m, m) with entries h[i + j]; ``fir`` zeroes i + j >= h's length."""
    n = h.shape[1]
    idx = torch.arange(m)
    s = idx.unsqueeze(0) + idx.unsqueeze(1)  # (m, m): i + j
    H = F.pad(h, (0, 2 * m))[:, s]  # (C, m, m)
    return torch.where(s < n, H, torch.zeros((), dtype=h.dtype)) if fir else H


def _dominant(H: Tensor, order: int, rtol: float) -> Tensor:
    """Dominant ``order`` singular directions (C, m, order) of symmetric H; negligible ones zeroed.

    For a symmetric matrix the eigenvectors are singular vectors (up to sign, a similarity of the
    reduced dynamics that leaves the poles unchanged). Zeroed directions give poles at 0.
    """
    C, m, _ = H.shape
    lam, Q = torch.linalg.eigh(H)  # (C, m), (C, m, m)
    sv, idx = lam.abs().sort(-1, descending=True)  # (C, m)
    V = torch.gather(Q, 2, idx[:, None, :order].expand(C, m, order))  # (C, m, order)
    keep = sv[:, :order] > rtol * sv[:, :1].clamp_min(1e-300)  # (C, order)
    return V * keep.unsqueeze(1)


def hankel_subspaces(k: Tensor, order: int, rtol: float = 1e-12,
                     hankel_taps: Optional[int] = None) -> dict[str, Tensor]:
    """Dominant singular directions (C, m, order) of the two Hankel matrices of each kernel.

    k (C, L): tap 0 (the feed-through, plus the alias of tap L) is ignored.

    - ``"balanced"``: the zero-padded Hankel matrix of taps 1..L-1, i.e. the observability
      factor of the length-L FIR system; its truncation is balanced truncation (stable in
      exact arithmetic), but an IIR kernel cut at L is not exactly low rank.
    - ``"kung"``: the full square Hankel matrix of taps 1..L-1 (no padding); shift invariance of
      its dominant subspace recovers an RTF of order <= ``order`` to rounding, with no
      stability guarantee.

    ``hankel_taps`` caps how many taps build the matrices (cost O(C M^3), M = taps - 1).
    """
    taps = k.shape[1] if hankel_taps is None else min(k.shape[1], hankel_taps)
    h = k[:, 1:taps].double()  # (C, M)
    M = h.shape[1]
    m = (M + 1) // 2
    if order > m - 1:
        raise ValueError(f"order {order} needs more than the {M} taps that define the Hankel matrices")
    return {
        "balanced": _dominant(_hankel(h, M, fir=True), order, rtol),  # (C, M, order)
        "kung": _dominant(_hankel(h, m, fir=False), order, rtol),  # (C, m, order)
    }


def subspace_poles(V: Tensor, method: str) -> Tensor:
    """Poles (C, r) complex128 of the reduced dynamics of directions V (C, m, r) (see above)."""
    if method == "balanced":
        Ar = V[:, 1:].transpose(1, 2) @ V[:, :-1]  # (C, r, r) = V^T S V
    elif method == "kung":
        Ar = torch.linalg.pinv(V[:, :-1], rtol=1e-12) @ V[:, 1:]  # (C, r, r)
    else:
        raise ValueError(f"method must be 'balanced' or 'kung', got {method!r}")
    return torch.linalg.eigvals(Ar)  # (C, r)


def poly_from_roots(roots: Tensor) -> Tensor:
    """Monic real polynomial coefficients (C, N+1) in z^-1 with the given roots (C, N) complex."""
    C, N = roots.shape
    c = torch.zeros(C, N + 1, dtype=torch.complex128, device=roots.device)
    c[:, 0] = 1.0
    for j in range(N):
        c[:, 1:] = c[:, 1:] - roots[:, j : j + 1] * c[:, :-1].clone()
    return c.real.contiguous()  # conjugate pairs: imaginary parts are rounding


def max_pole_radius(den: Tensor) -> Tensor:
    """Largest |pole| (C,) of monic denominators (C, N+1), from companion-matrix eigenvalues."""
    return companion_poles(den[:, 1:].double()).abs().amax(-1)


def shrink_to_l1(den: Tensor, margin: float = 1e-3) -> Tensor:
    """Scale the poles of each row by the largest rho in (0, 1] with sum_j |a_j rho^j| <= 1 - margin."""
    a = den[:, 1:]
    j = torch.arange(1, a.shape[1] + 1, dtype=a.dtype)
    lo = torch.zeros(a.shape[0], dtype=a.dtype)
    hi = torch.ones(a.shape[0], dtype=a.dtype)
    ok = (a.abs().sum(-1) <= 1 - margin)
    for _ in range(60):  # bisection: the l1 norm is increasing in rho
        mid = (lo + hi) / 2
        fits = (a.abs() * mid.unsqueeze(-1) ** j).sum(-1) <= 1 - margin
        lo = torch.where(fits, mid, lo)
        hi = torch.where(fits, hi, mid)
    rho = torch.where(ok, torch.ones_like(lo), lo)
    return F.pad(a * rho.unsqueeze(-1) ** j, (1, 0), value=1.0)


def _aliased_inverse(den: Tensor, L: int) -> Tensor:
    """Aliased impulse response (C, L) of 1/A on L points: sum_m g_{t + m L}."""
    return torch.fft.irfft(torch.fft.rfft(den, n=L).reciprocal(), n=L)


def aliased_kernel_direct(b: Tensor, den: Tensor, h0: Tensor, L: int, periods: int = 200) -> Tensor:
    """Slow reference of the RTF parallel kernel: explicit sums of the impulse response over periods.

    Runs B(z)/A(z) for ``periods`` * L taps by recursion and folds them modulo L (valid when the
    response has decayed by then). b (C, N), den (C, N+1) monic, h0 (C,).
    """
    C, N = b.shape
    n = periods * L
    x = torch.zeros(C, n, dtype=torch.float64)
    x[:, 1 : N + 1] = b  # impulse response of B/A = 1/A applied to b's coefficient sequence
    w = torch.zeros(C, n + N, dtype=torch.float64)
    a_rev = den[:, 1:].flip(-1).double()
    for t in range(n):
        w[:, N + t] = x[:, t] - (a_rev * w[:, t : t + N]).sum(-1)
    k = w[:, N:].view(C, periods, L).sum(1)
    k[:, 0] += h0
    return k


def fit_numerator(k: Tensor, den: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares (b (C, N), h0 (C,)) of the aliased RTF kernel with denominators ``den``.

    Exact optimum of sum_t (kernel_t - k_t)^2 for fixed poles; k (C, L), den (C, N+1) monic.
    """
    C, L = k.shape
    N = den.shape[1] - 1
    g = _aliased_inverse(den.double(), L)  # (C, L)
    cols = [F.one_hot(torch.zeros(C, dtype=torch.long), L).double()]
    cols += [torch.roll(g, j, -1) for j in range(1, N + 1)]  # circular shift by j taps
    X = torch.stack(cols, -1)  # (C, L, N+1)
    # Column scaling: the shifted responses can be large next to the delta column.
    scale = X.norm(dim=1, keepdim=True).clamp_min(1e-300)  # (C, 1, N+1)
    # A pole on the unit circle (to rounding) makes 1/A infinite at a frequency: no fit there.
    ok = torch.isfinite(scale).all(-1).squeeze(-1)  # (C,)
    X = torch.where(ok.view(C, 1, 1), X / torch.where(torch.isfinite(scale), scale, 1.0), 0.0)
    sol = torch.linalg.lstsq(X, k.double().unsqueeze(-1)).solution.squeeze(-1) / scale.squeeze(1)  # (C, N+1)
    sol = torch.where(ok.unsqueeze(-1), sol, math.nan)  # rows without a fit are NaN
    return sol[:, 1:], sol[:, 0]


def _channel_errors(kern: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    err = ((kern - target) ** 2).sum(-1)  # (C,)
    return err.sqrt() / target.norm(dim=-1).clamp_min(1e-30), err / target.shape[-1]


def _fast_kernel(b: Tensor, den: Tensor, h0: Tensor, L: int) -> Tensor:
    """Aliased kernel (C, L) as RTF computes it (one rFFT / irFFT of length L), fp64."""
    num = F.pad(b, (1, 0))  # (C, N+1), strictly proper
    k = torch.fft.irfft(torch.fft.rfft(num, n=L) / torch.fft.rfft(den, n=L), n=L)  # (C, L)
    k[:, 0] += h0
    return k


def _orders(N: int) -> list[int]:
    out, r = [], N
    while r >= 1:
        out.append(r)
        r //= 2
    return out


def closed_form_fit(target: Tensor, state_size: int, constraint: str = "none", param_dtype=torch.float32,
                    max_radius: float = 1.0 - 1e-5, rtol: float = 1e-12,
                    hankel_taps: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stages 1-2 per channel: (den (C, N+1), b (C, N), h0 (C,), rel_err (C,)), all fp64.

    Candidates: both Hankel methods at orders N, N/2, N/4, ..., 1 (padded with poles at 0), plus
    the all-zero denominator (an N-tap FIR, always stable). Each candidate's denominator is rounded
    to ``param_dtype`` (the student's parameter dtype: high-order polynomials with clustered
    poles are ill-conditioned, and rounding alone can push a root outside), checked for stability
    on the rounded coefficients, given its least-squares numerator, and scored on the kernel; each
    channel keeps its best stable candidate.
    """
    C, L = target.shape
    N = state_size
    subspaces = hankel_subspaces(target, N, rtol=rtol, hankel_taps=hankel_taps)
    dens = [F.pad(torch.zeros(C, N, dtype=torch.float64), (1, 0), value=1.0)]  # the FIR fallback
    for method, V in subspaces.items():
        for r in _orders(N):
            roots = F.pad(subspace_poles(V[..., :r], method), (0, N - r))  # (C, N), extra poles at 0
            dens.append(poly_from_roots(roots))
    best_err = torch.full((C,), math.inf, dtype=torch.float64)
    best = (dens[0], torch.zeros(C, N, dtype=torch.float64), torch.zeros(C, dtype=torch.float64))
    norm = target.norm(dim=-1).clamp_min(1e-30)
    for den in dens:
        if constraint == "l1_montel":
            den = shrink_to_l1(den)
        den = den.to(param_dtype).double()
        finite = torch.isfinite(den).all(-1)
        den = torch.where(finite.unsqueeze(-1), den, dens[0])
        stable = finite & (max_pole_radius(den) < max_radius)
        den = torch.where(stable.unsqueeze(-1), den, dens[0])  # unstable rows are not scored anyway
        b, h0 = fit_numerator(target, den)
        # Scored as the student will compute it: coefficients and FFT arithmetic in param_dtype.
        # Poles close to the circle amplify fp32 round-off in the spectral division, so this
        # can prefer a lower order whose exact fit is worse.
        kern = _fast_kernel(b.to(param_dtype), den.to(param_dtype), h0.to(param_dtype), L).double()
        err = (kern - target).norm(dim=-1) / norm
        err = torch.where(stable & torch.isfinite(err), err, torch.full_like(err, math.inf))
        take = err < best_err
        best_err = torch.where(take, err, best_err)
        best = tuple(torch.where(take.view(-1, *([1] * (new.dim() - 1))), new, old)
                     for new, old in zip((den, b, h0), best))
    return (*best, best_err)


def fit_rtf(
    target: Tensor,
    state_size: int,
    constraint: str = "none",
    max_steps: int = 2000,
    lr: float = 1e-4,
    tol: float = 1e-4,
    patience: int = 100,
    check_every: int = 25,
    max_radius: float = 1.0 - 1e-5,
    param_dtype=torch.float32,
    hankel_taps: Optional[int] = None,
    chunk: Optional[int] = None,
    progress: Optional[Callable[[str, int, int, Optional[float]], None]] = None,
) -> FitResult:
    """Fit an order-``state_size`` RTF bank to ``target`` kernels (C, L); see the module docstring.

    ``max_steps=0`` keeps the closed-form fit. Refinement stops when the summed relative squared
    error has improved by less than a fraction ``tol`` over the last ``patience`` steps.

    ``max_radius``: the pole modulus every channel must stay strictly below, checked on
    coefficients rounded to ``param_dtype``. The default margin of 1e-5 below the unit circle
    rejects poles that sit on it to rounding (1/A is then infinite at one frequency) while
    keeping responses that decay by only 0.5 % over 512 taps.

    ``progress(stage, done, total, loss)`` is called after each chunk of ``chunk`` channels of the
    closed-form stage (default: sized for ~256 MiB of Hankel matrices) and every ``check_every``
    refinement steps. The returned RTF is fp64; the caller re-checks stability on whatever it
    finally stores.
    """
    if constraint not in ("none", "l1_montel"):
        raise ValueError(f"constraint must be 'none' or 'l1_montel', got {constraint!r}")
    target = target.detach().double().cpu()
    C, L = target.shape
    N = state_size
    if not 1 <= N < L:
        raise ValueError(f"state_size must be in [1, {L - 1}] for kernels of length {L}, got {N}")
    den, b, h0 = _closed_form_bank(target, N, constraint, param_dtype, max_radius, hankel_taps, chunk, progress)
    rtf = _bank_from_coefficients(den, b, h0, L, constraint)
    scores = _Scores(rtf, target, param_dtype, max_radius)
    with torch.no_grad():
        best_loss = scores.deployed()  # (C,)
        closed_rel = best_loss.sqrt()  # (C,) relative error of the closed form, as the student computes it
        best_loss = torch.where(scores.stable(), best_loss, torch.full_like(best_loss, math.inf))
    step, reverted = _refine(rtf, scores, best_loss, max_steps, lr, tol, patience, check_every, progress)
    with torch.no_grad():
        rel, mse = _channel_errors(RationalKernel.apply(
            rtf.b.to(param_dtype), rtf.denominator().to(param_dtype), rtf.h0.to(param_dtype), L, L).double(), target)
        radius = max_pole_radius(F.pad(rtf.denominator(), (1, 0), value=1.0))
    rtf.reset_recurrence()
    return FitResult(rtf=rtf, rel_err=rel, mse=mse, pole_radius=radius, closed_form_rel_err=closed_rel,
                     steps=step, reverted=reverted)


def _closed_form_bank(target: Tensor, N: int, constraint: str, param_dtype, max_radius: float,
                      hankel_taps: Optional[int], chunk: Optional[int],
                      progress: Optional[Callable]) -> tuple[Tensor, Tensor, Tensor]:
    """Stages 1-2 over channel chunks: (den (C, N+1), b (C, N), h0 (C,)), fp64."""
    C, L = target.shape
    if chunk is None:  # ~2^24 Hankel entries per chunk (two (chunk, M, M) fp64 tensors: ~256 MiB)
        chunk = max(1, 2**24 // (L * L))
    parts = []
    for start in range(0, C, chunk):  # chunks bound the memory of the (chunk, M, M) Hankel matrices
        parts.append(closed_form_fit(target[start : start + chunk], N, constraint, param_dtype, max_radius,
                                     hankel_taps=hankel_taps))
        if progress is not None:
            progress("closed-form fit", min(start + chunk, C), C, None)
    den, b, h0, _ = (torch.cat(t, 0) for t in zip(*parts))
    return den, b, h0


def _bank_from_coefficients(den: Tensor, b: Tensor, h0: Tensor, L: int, constraint: str) -> RTF:
    """An fp64 RTF (C channels, order N, l_max = L) holding den (C, N+1), b (C, N), h0 (C,)."""
    C, N = b.shape
    rtf = RTF(C, N, L, init="zeros", constraint=constraint, dtype=torch.float64)
    with torch.no_grad():
        rtf.a_raw.copy_(den[:, 1:])
        rtf.b.copy_(b)
        rtf.h0.copy_(h0)
        if constraint == "l1_montel":
            # denominator() divides by sum|a_raw| + |scale| + 1e-6: make that exactly 1.
            rtf.montel_scale.copy_((1.0 - 1e-6 - den[:, 1:].abs().sum(-1)).clamp_min(0.0))
    return rtf


class _Scores:
    """Per-channel relative squared errors (C,) of a bank's kernels against the target, and which
    channels are stable, both as training sees them and as the student will compute them."""

    def __init__(self, rtf: RTF, target: Tensor, param_dtype, max_radius: float):
        self.rtf, self.target, self.param_dtype, self.max_radius = rtf, target, param_dtype, max_radius
        self.L = target.shape[1]
        self.weights = 1.0 / (target**2).sum(-1).clamp_min(1e-30)  # (C,): relative squared error per channel

    def training(self) -> Tensor:
        """Loss (C,) of the fp64 kernel that the refinement differentiates."""
        return ((self.rtf.kernel(self.L) - self.target) ** 2).sum(-1) * self.weights  # (C,)

    def deployed(self) -> Tensor:
        """Per-channel loss of the kernel as the student computes it (param_dtype throughout)."""
        rtf, dt = self.rtf, self.param_dtype
        a = rtf.denominator().to(dt)
        kern = RationalKernel.apply(rtf.b.to(dt), a, rtf.h0.to(dt), self.L, self.L).double()
        return ((kern - self.target) ** 2).sum(-1) * self.weights  # (C,)

    def stable(self) -> Tensor:
        """(C,) bool: the denominators rounded to param_dtype are finite, poles below max_radius."""
        den_q = F.pad(self.rtf.denominator().to(self.param_dtype).double(), (1, 0), value=1.0)
        return torch.isfinite(den_q).all(-1) & (max_pole_radius(den_q) < self.max_radius)  # (C,)


def _refine(rtf: RTF, scores: _Scores, best_loss: Tensor, max_steps: int, lr: float, tol: float,
            patience: int, check_every: int, progress: Optional[Callable]) -> tuple[int, int]:
    """Stage 3 in place: Adam on ``scores.training``, every ``check_every`` steps keep each
    channel's best stable coefficients (scored by ``scores.deployed``, starting from ``best_loss``
    (C,)) and revert unstable ones; ``rtf`` ends at the snapshots. Returns (steps, reverts)."""
    params = list(rtf.parameters())
    best = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=lr)
    history: list[float] = []
    reverted, step = 0, 0
    for step in range(1, max_steps + 1):
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():  # callers may hold no_grad (e.g. while converting a model)
            scores.training().sum().backward()
        opt.step()
        if step % check_every and step != max_steps:
            continue
        with torch.no_grad():
            loss_c = scores.deployed()
            stable = scores.stable() & torch.isfinite(loss_c)
            better = stable & (loss_c < best_loss)
            bad = ~stable
            reverted += int(bad.sum())
            # Every parameter has one row per channel (one denominator each), and channels do not
            # interact, so snapshots and reverts are per row; Adam's moments restart on a revert.
            for p, snap in zip(params, best):
                snap[better] = p[better]
                p[bad] = snap[bad]
                state = opt.state.get(p, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        state[key][bad] = 0.0
            best_loss = torch.where(better, loss_c, best_loss)
        total = float(best_loss[torch.isfinite(best_loss)].sum())
        history.append(total)
        if progress is not None:
            progress("refinement", step, max_steps, total)
        back = max(1, patience // check_every)
        if len(history) > back and history[-1 - back] - history[-1] <= tol * history[-1 - back]:
            break
    with torch.no_grad():
        for p, snap in zip(params, best):
            p.copy_(snap)
    return step, reverted
