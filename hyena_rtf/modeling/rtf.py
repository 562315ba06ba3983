"""Rational transfer function (RTF) filters: state-free parallel mode and exact recurrent mode.

Each of the ``d_model`` channels is a SISO filter

    H(z) = h0 + (b_1 z^-1 + ... + b_N z^-N) / (1 + a_1 z^-1 + ... + a_N z^-N)

with ``num_a`` denominators shared by consecutive groups of ``d_model // num_a`` channels.

Parallel mode samples H at the ``l_max``-th roots of unity with one rFFT of the zero-padded
coefficients, divides, and returns to the time domain with one irFFT: cost O(l_max log l_max) per
channel whatever ``N`` is. Sampling on the unit circle gives the *time-aliased* response
``sum_j h[t + j*l_max]``. The trained numerator ``b`` is therefore understood as the aliasing-
corrected numerator ``b~ = C (I - A^l_max)`` of a system (A, e1, C, h0): then the kernel is
exactly the first ``l_max`` taps of that system, except that tap 0 also receives ``h_l_max``.

Recurrent mode runs the system in companion (direct form II) form with an N-dimensional state per
channel. Its numerator and feed-through are recovered *without* matrix powers: the kernel taps
``k_0..k_N`` are exact, and ``N(z) = A(z) K(z) mod z^(N+1)`` gives the full numerator of the
system whose first ``l_max`` taps are ``k`` (so tap 0, including the alias, matches too). This is
the correction the original implementation gets wrong twice (it solves the transposed system and
ignores the alias on tap 0).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fftconv import fft_conv, fft_size, polymul
from .long_filter import ConfigCheck, LongFilter
from .sections import raw_from_poles, sections_poles, sections_to_denominator
from .reflection import (
    denominator_to_reflection,
    raw_from_reflection,
    reflection_coefficients,
    reflection_poles,
    reflection_to_denominator,
)

__all__ = ["RTF", "inverse_impulse_response", "graded_decay_radii", "DEFAULT_DECAY"]

_INITS = ("zeros", "xavier", "montel")
_CONSTRAINTS = ("sections", "reflection", "l1_montel", "none")
# Constraints whose denominators come out of a sequential map of all rows (batched per forward).
_MAPPED = {"reflection": lambda raw: reflection_to_denominator(reflection_coefficients(raw)),
           "sections": sections_to_denominator}
_H0_INITS = ("one", "normal")
# The default time scales: on half the denominators, the implicit Hyena filter's window (1e-2
# reached between 0.3 and 1.5 l_max); the other half keep their draws (short, FIR-like responses).
DEFAULT_DECAY = (0.3, 1.5, 0.5)
# The l1_montel scale parameter is initialised U(0, 1) (the reference code); see reset_parameters.
_MONTEL_EPS = 1e-6


def graded_decay_radii(n: int, l_max: int, fast: float, slow: float, target: float = 1e-2) -> Tensor:
    """Pole radii (n,) whose impulse responses r^t fall to ``target`` between ``fast * l_max`` and
    ``slow * l_max`` taps, the horizons spaced geometrically across the n rows (log-spaced decay
    rates, as the time scales of the implicit Hyena filter's exponential window are spread)."""
    if not 0 < fast <= slow:
        raise ValueError(f"need 0 < fast <= slow for the decay horizons, got fast={fast}, slow={slow}")
    horizons = torch.logspace(math.log10(fast * l_max), math.log10(slow * l_max), n, dtype=torch.float64)  # taps
    return torch.exp(math.log(target) / horizons)  # per-tap factor: r^horizon = target


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


class _RationalKernel(torch.autograd.Function):
    """First L taps of irFFT_n(B(z) / A(z)) plus h0 on tap 0, with a hand-written backward.

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


class RTF(LongFilter):
    """Bank of ``d_model`` rational-transfer-function filters (see the module docstring).

    Args:
        d_model: number of channels (independent SISO filters).
        state_size: filter order N (numerator and denominator degree); must be < ``l_max``.
        l_max: kernel length of parallel mode, i.e. the longest input ``forward`` accepts.
        num_a: number of distinct denominators; must divide ``d_model`` (default: one per channel).
        init: ``"zeros"`` (a = b = 0 and h0 = 1: H(z) = 1, the identity), ``"xavier"`` (a, b ~
            U(+-1/sqrt(N)), h0 ~ N(0,1)) or ``"montel"`` (a, b ~ U(+-1/N), h0 ~ N(0,1)). The draws are
            of the trained (raw) parameters, so the denominator they give depends on ``constraint``.
        constraint: how the raw denominator parameters become ``a``. ``"reflection"``: they are
            reflection coefficients through tanh, mapped to ``a`` by the step-up recursion
            (:mod:`.reflection`): every pole strictly inside the unit circle for any parameter
            values, and every stable denominator reachable. ``"l1_montel"`` rescales ``a`` so that
            sum|a| < 1 (stable, but only a subset of the stable filters); ``"none"`` leaves ``a``
            free (poles may leave the unit circle).
        h0_init: ``"one"`` or ``"normal"`` (N(0, 1)) for the feed-through; None: the init's own
            (one for zeros, normal otherwise).
        decay: None (the denominators follow ``init``), or ``(fast, slow[, share])``: the first
            ``share`` (default 1) of the denominators start as one real pole each, whose responses
            decay to 1e-2 between ``fast * l_max`` taps (first row) and ``slow * l_max`` taps (last
            graded row), horizons spaced geometrically: the time scales of the implicit Hyena
            filter's window (:func:`graded_decay_radii`). The other denominators and the numerator
            follow ``init``.

    The defaults (xavier numerator, reflection constraint, graded decay on half the denominators)
    are the variant chosen in the project's paired comparison (BENCHMARKS.md section 4): the long
    half is what makes RTF beat the implicit filter on text, the short half keeps exact delays
    learnable (copying); the paper's ``init="xavier", constraint="l1_montel", decay=None`` remains
    available.
        bidirectional: add an anti-causal filter bank (non-causal tasks; no recurrent mode).
        dropout: dropout on the kernel taps during training.
    """

    def __init__(
        self,
        d_model: int,
        state_size: int,
        l_max: int,
        num_a: Optional[int] = None,
        init: str = "xavier",
        constraint: Optional[str] = "reflection",
        h0_init: Optional[str] = None,
        decay: Optional[tuple[float, float]] = DEFAULT_DECAY,
        bidirectional: bool = False,
        dropout: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        constraint = "none" if constraint is None else constraint
        num_a = d_model if num_a is None else num_a
        if d_model < 1:
            raise ValueError(f"d_model must be >= 1, got {d_model}")
        if state_size < 1:
            raise ValueError(f"state_size must be >= 1, got {state_size}")
        if l_max <= state_size:
            raise ValueError(
                f"state_size ({state_size}) must be smaller than l_max ({l_max}): "
                "the kernel spectrum is sampled at l_max points"
            )
        if num_a < 1 or d_model % num_a != 0:
            raise ValueError(f"num_a ({num_a}) must divide d_model ({d_model})")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        if constraint not in _CONSTRAINTS:
            raise ValueError(f"constraint must be one of {_CONSTRAINTS} or None, got {constraint!r}")
        if h0_init is not None and h0_init not in _H0_INITS:
            raise ValueError(f"h0_init must be one of {_H0_INITS} or None, got {h0_init!r}")
        if decay is not None:
            decay = tuple(float(x) for x in decay)
            if len(decay) not in (2, 3) or not 0 < decay[0] <= decay[1] or (len(decay) == 3 and not 0 < decay[2] <= 1):
                raise ValueError(f"decay must be None or (fast, slow[, share]) with 0 < fast <= slow and 0 < share <= 1, got {decay!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d_model, self.state_size, self.l_max, self.num_a = d_model, state_size, l_max, num_a
        self.init, self.constraint, self.bidirectional = init, constraint, bidirectional
        self.h0_init = h0_init if h0_init is not None else ("one" if init == "zeros" else "normal")
        self.decay = decay
        ndir = 2 if bidirectional else 1
        factory = {"device": device, "dtype": dtype}
        # Rows [causal | anti-causal] when bidirectional.
        self.a_raw = nn.Parameter(torch.empty(ndir * num_a, state_size, **factory))
        self.b = nn.Parameter(torch.empty(ndir * d_model, state_size, **factory))
        self.h0 = nn.Parameter(torch.empty(ndir * d_model, **factory))
        if constraint == "l1_montel":
            self.montel_scale = nn.Parameter(torch.empty(ndir * num_a, **factory))
        else:
            self.register_parameter("montel_scale", None)
        self.dropout = nn.Dropout(dropout)
        self._rec_cache: dict = {}
        self._prepared: Optional[tuple] = None  # denominators computed in a batch (prepare_batch)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw parameters according to ``init``, ``h0_init`` and ``decay`` (in place).

        The same random numbers are drawn whatever the options (every tensor is drawn, then
        replaced where an option fixes it), so two filters that differ only in an option see the
        same draws for the parameters they share."""
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.state_size) if self.init == "xavier" else 1.0 / self.state_size
            self.a_raw.uniform_(-bound, bound)
            self.b.uniform_(-bound, bound)
            h0 = torch.randn_like(self.h0)
            scale = torch.rand_like(self.montel_scale) if self.montel_scale is not None else None
            if self.init == "zeros":
                self.a_raw.zero_()
                self.b.zero_()
            self.h0.copy_(h0 if self.h0_init == "normal" else torch.ones_like(h0))
            if scale is not None:
                self.montel_scale.copy_(scale)
            if self.decay is not None:
                self._set_graded_poles()

    def _set_graded_poles(self) -> None:
        """One real pole per denominator at the radii of :func:`graded_decay_radii`, the other
        reflection coefficients (or coefficients) zero, whatever the constraint."""
        fast, slow, share = (*self.decay, 1.0)[:3]
        graded = max(1, round(share * self.num_a))  # these denominators get poles; the rest keep their draws
        rows = torch.cat([torch.arange(graded) + d * self.num_a for d in range(self.a_raw.shape[0] // self.num_a)])
        r = graded_decay_radii(graded, self.l_max, fast, slow).repeat(self.a_raw.shape[0] // self.num_a).to(self.a_raw)
        self.a_raw[rows] = 0.0
        if self.constraint in ("reflection", "sections"):
            # Reflection: k_1 = -r; sections: the first section's c = -r (d = 0). Either way A = 1 - r z^-1.
            self.a_raw[rows, 0] = raw_from_reflection(-r.unsqueeze(-1))[:, 0]
        elif self.constraint == "none":
            self.a_raw[rows, 0] = -r
        else:  # l1_montel: a_1 = -1 / (1 + |s| + eps) = -r
            self.a_raw[rows, 0] = -1.0
            self.montel_scale[rows] = 1.0 / r - 1.0 - _MONTEL_EPS

    @property
    def has_recurrence(self) -> bool:
        """True unless bidirectional: the anti-causal half needs future inputs."""
        return not self.bidirectional

    @classmethod
    def default_kwargs(cls, l_max: int) -> dict:
        return {"state_size": min(64, l_max - 1)}

    @classmethod
    def config_kwargs(cls, config: Any) -> dict:
        return dict(
            state_size=config.state_size,
            num_a=config.rtf_num_a,
            init=config.rtf_init,
            constraint=config.rtf_constraint,
            h0_init=config.rtf_h0_init,
            decay=config.rtf_decay,
            dropout=config.filter_dropout,
        )

    def pole_parameters(self) -> list[nn.Parameter]:
        """The parameters that set the poles (denominator and, with l1_montel, its scale)."""
        return [p for p in (self.a_raw, self.montel_scale) if p is not None]

    @classmethod
    def check_config(cls, config: Any) -> None:
        check = ConfigCheck(config)
        check.need_int("state_size")
        if config.state_size >= config.max_position_embeddings:
            check.fail("state_size", f"must be smaller than max_position_embeddings={config.max_position_embeddings}")
        if config.rtf_num_a is not None:
            check.need_int("rtf_num_a")
            if config.hidden_size % config.rtf_num_a:
                check.fail("rtf_num_a", f"must be None or a divisor of hidden_size={config.hidden_size}")
        check.need_choice("rtf_init", _INITS)
        check.need_choice("rtf_constraint", _CONSTRAINTS)
        if config.rtf_h0_init is not None:
            check.need_choice("rtf_h0_init", _H0_INITS)
        decay = config.rtf_decay
        if decay is not None:
            ok = isinstance(decay, (list, tuple)) and len(decay) in (2, 3) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in decay)
            if not ok or not 0 < decay[0] <= decay[1] or (len(decay) == 3 and not 0 < decay[2] <= 1):
                check.fail("rtf_decay", "must be null or [fast, slow(, share)] with 0 < fast <= slow (fractions of "
                           "max_position_embeddings) and 0 < share <= 1")

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, state_size={self.state_size}, l_max={self.l_max}, "
            f"num_a={self.num_a}, init={self.init!r}, constraint={self.constraint!r}, "
            f"h0_init={self.h0_init!r}, decay={self.decay}, bidirectional={self.bidirectional}"
        )

    # ------------------------------------------------------------------ parameters -> filters
    def _wide(self) -> torch.dtype:
        """The dtype denominators are derived in: fp64 (MPS has none; there the parameters' dtype)."""
        return torch.float64 if self.a_raw.device.type != "mps" else self.a_raw.dtype

    def _param_key(self) -> tuple:
        return (self.a_raw.data_ptr(), self.a_raw._version, torch.is_grad_enabled())

    @classmethod
    def prepare_batch(cls, filters: list["RTF"]) -> None:
        """One step-up recursion for the denominators of every reflection-constrained filter of the
        same order: the recursion is N small sequential steps whose cost is mostly per call, so a
        model with many layers pays it once per forward instead of once per filter. Each filter
        uses its share once (:meth:`denominator`), only while its parameters are unchanged."""
        groups: dict[tuple, list[RTF]] = {}
        for f in filters:
            if f.constraint in _MAPPED:
                groups.setdefault((f.constraint, f.state_size, f.a_raw.device, f._wide()), []).append(f)
        for (constraint, _, _, dtype), fs in groups.items():
            if len(fs) < 2:
                continue
            raw = torch.cat([f.a_raw.to(dtype) for f in fs])  # (sum of rows, N)
            a = _MAPPED[constraint](raw)
            for f, part in zip(fs, a.split([f.a_raw.shape[0] for f in fs])):
                f._prepared = (f._param_key(), dtype, part)

    def denominator(self, dtype: Optional[torch.dtype] = None) -> Tensor:
        """Constrained denominator coefficients a_1..a_N, shape (ndir * num_a, N), in ``dtype``
        (default: the parameters'), computed from the parameters in that dtype."""
        prepared, self._prepared = getattr(self, "_prepared", None), None
        if prepared is not None and prepared[0] == self._param_key() and prepared[1] == (dtype or self.a_raw.dtype):
            return prepared[2]
        a = self.a_raw if dtype is None else self.a_raw.to(dtype)
        if self.constraint in _MAPPED:
            return _MAPPED[self.constraint](a)  # (ndir*num_a, N), every pole strictly inside the circle
        if self.constraint == "l1_montel":
            scale = a.abs().sum(-1, keepdim=True) + self.montel_scale.to(a.dtype).abs().unsqueeze(-1) + _MONTEL_EPS
            a = a / scale  # (ndir*num_a, N), sum|a| < 1
        return a

    def _kernel_all(self, L: int, dtype: torch.dtype) -> Tensor:
        """Kernels of every direction, (ndir * d_model, L), computed state-free in ``dtype``."""
        with torch.autocast(device_type=self.b.device.type, enabled=False):
            # Denominators and 1/A in fp64 whatever ``dtype`` (R rows only: cheap), see _spectra.
            a = self.denominator(torch.promote_types(self._wide(), dtype))  # (R, N) with R = ndir*num_a
            return _RationalKernel.apply(self.b.to(dtype), a, self.h0.to(dtype), self.l_max, L)

    def kernel(self, L: Optional[int] = None) -> Tensor:
        """Time-domain kernel (d_model, L) (causal taps; tap 0 includes the feed-through).

        When bidirectional, returns (2 * d_model, L): causal rows then anti-causal rows.
        Cost O(d_model * l_max log l_max), independent of ``state_size``.
        """
        L = self.l_max if L is None else L
        if not 1 <= L <= self.l_max:
            raise ValueError(f"kernel length L must be in [1, l_max={self.l_max}], got {L}")
        dtype = torch.promote_types(self.b.dtype, torch.float32)
        return self.dropout(self._kernel_all(L, dtype))

    # ------------------------------------------------------------------ parallel mode
    def forward(self, u: Tensor) -> Tensor:
        """Parallel (FFT) filtering: u (B, L, d_model) -> (B, L, d_model), L <= l_max."""
        self._check_input(u, self.l_max)
        L = u.shape[1]
        k = self.kernel(L)  # (ndir*D, L)
        y = fft_conv(u, k[: self.d_model])
        if self.bidirectional:
            # The anti-causal half is the causal filter run on the time-reversed sequence.
            y = y + fft_conv(u.flip(1), k[self.d_model :]).flip(1)
        return y

    # ------------------------------------------------------------------ recurrent mode
    def _recurrence(self, dtype: torch.dtype) -> dict:
        """Companion-form system (a, c, d, g) whose first l_max taps equal ``kernel()``, cached.

        a (D, N): denominators per channel; c (D, N): numerator of the strictly proper part;
        d (D,): feed-through; g (D, l_max): impulse response of 1/A(z) (for prefill states).
        Derived in fp64 from the exact kernel taps, then cast to ``dtype``.
        """
        if self.bidirectional:
            raise ValueError("a bidirectional RTF has no recurrent mode: its anti-causal half needs future inputs")
        params = [p for p in (self.a_raw, self.b, self.h0, self.montel_scale) if p is not None]
        key = tuple((p.data_ptr(), p._version) for p in params)
        if self._rec_cache.get("key") != key:
            with torch.no_grad():
                k = self._kernel_all(self.l_max, torch.float64)  # (D, l_max), no dropout
                a = self.denominator(torch.float64).detach()  # (num_a, N)
                den = F.pad(a, (1, 0), value=1.0)  # (num_a, N+1), monic
                group = self.d_model // self.num_a
                den_ch = den.repeat_interleave(group, 0)  # (D, N+1)
                N = self.state_size
                num = polymul(den_ch, k[:, : N + 1], N + 1)  # (D, N+1): A(z) K(z) mod z^(N+1)
                d = k[:, 0]
                c = num[:, 1:] - d.unsqueeze(-1) * den_ch[:, 1:]  # (D, N)
                g = inverse_impulse_response(den, self.l_max).repeat_interleave(group, 0)  # (D, l_max)
            self._rec_cache = {"key": key, torch.float64: {"a": den_ch[:, 1:], "c": c, "d": d, "g": g}}
        if dtype not in self._rec_cache:
            self._rec_cache[dtype] = {n: t.to(dtype) for n, t in self._rec_cache[torch.float64].items()}
        return self._rec_cache[dtype]

    def initial_state(self, batch_size: int, device=None, dtype=None) -> Tensor:
        """Zero state, shape (batch_size, d_model, state_size): the last N values of w = u / A(z)."""
        device = self.b.device if device is None else device
        dtype = torch.promote_types(self.b.dtype, torch.float32) if dtype is None else dtype
        return torch.zeros(batch_size, self.d_model, self.state_size, device=device, dtype=dtype)

    def step(self, u_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One recurrent step: u_t (B, d_model), state (B, d_model, N) -> (y_t, new state).

        Two length-N dot products and a shift per channel: O(N), independent of the position.
        """
        if u_t.dim() != 2 or u_t.shape[-1] != self.d_model:
            raise ValueError(f"u_t must have shape (B, d_model={self.d_model}), got {tuple(u_t.shape)}")
        if state.shape != (u_t.shape[0], self.d_model, self.state_size):
            raise ValueError(
                f"state must have shape (B, d_model, state_size)="
                f"{(u_t.shape[0], self.d_model, self.state_size)}, got {tuple(state.shape)}"
            )
        rec = self._recurrence(state.dtype)
        u = u_t.to(state.dtype)
        y = (state * rec["c"]).sum(-1) + rec["d"] * u  # (B, D)
        w = u - (state * rec["a"]).sum(-1)  # (B, D)
        new_state = torch.cat([w.unsqueeze(-1), state[..., :-1]], -1)  # (B, D, N)
        return y.to(u_t.dtype), new_state

    def prefill(self, u: Tensor, state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Filter a whole prompt and return the state after its last position.

        u (B, T, d_model), any T (chunks of l_max); ``state`` continues from an earlier call.
        Equivalent to ``step`` over every position, but each chunk costs two FFT convolutions.

        Precision: the direct-form state ``w = u / A(z)`` of a filter with slow poles is large, and
        the history's effect on the next chunk is a cancellation of large terms. So the state is
        carried in fp64 across chunks, the history terms are computed in fp64, and the prompt's
        own convolutions use taps derived in fp64 (cast to the working dtype). Measured on orders
        8-12 with poles at radius 0.990-0.995 over three chunks: an all-fp32 route was off by 5.5x
        the output scale, this one by 7e-5, fp32 stepping by 2e-3. A prompt from the zero state that
        fits in one chunk costs what an fp32 prefill costs (once the taps are cached).
        """
        self._check_input(u, None)
        B, T, _ = u.shape
        if state is None:
            state = self.initial_state(B, device=u.device)
        hist = torch.float64 if u.device.type != "mps" else state.dtype  # MPS has no fp64
        x = state.to(hist)  # (B, D, N), carried across chunks in full precision
        ys = []
        for start in range(0, T, self.l_max):
            y, x = self._prefill_chunk(u[:, start : start + self.l_max], x)
            ys.append(y)
        y = torch.cat(ys, 1) if len(ys) > 1 else ys[0]  # (B, T, D)
        return y.to(u.dtype), x.to(state.dtype)

    def _prefill_taps(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Kernel (D, l_max) and 1/A response (D, l_max), both derived in fp64, cast to ``dtype``; cached.

        An fp32 spectral division with poles near the circle loses ~1e-4 of the kernel, enough to
        spoil a prefill against the exact system; fp64 taps rounded to fp32 do not.
        """
        rec = self._recurrence(dtype)  # refreshes the parameter-version key
        cache = self._rec_cache.setdefault("prefill", {})
        if dtype not in cache:
            with torch.no_grad():
                k = self._kernel_all(self.l_max, torch.float64)[: self.d_model]  # (D, l_max)
            cache[dtype] = (k.to(dtype), rec["g"])
        return cache[dtype]

    def _prefill_chunk(self, u: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """One chunk (T <= l_max): outputs (B, T, D) in ``x.dtype`` and the next state (B, D, N)."""
        B, T, D = u.shape
        N = self.state_size
        work = torch.promote_types(u.dtype, torch.float32)  # the prompt's own convolutions
        k, g = self._prefill_taps(work)  # (D, l_max) each
        m = min(N, T)
        n = fft_size(2 * T - 1)
        with torch.autocast(device_type=u.device.type, enabled=False):
            # Both convolutions (output and state) filter the same input: one shared rFFT.
            u_f = torch.fft.rfft(u.to(work).transpose(1, 2), n=n)  # (B, D, n//2+1)
            y = torch.fft.irfft(u_f * torch.fft.rfft(k[:, :T], n=n), n=n)[..., :T].to(x.dtype)  # (B, D, T)
            w = torch.fft.irfft(u_f * torch.fft.rfft(g[:, :T], n=n), n=n)[..., :T].to(x.dtype)  # u / A(z)
            if bool(x.any()):
                # The history acts on the future only through w_{-1..-N}: as an extra input
                # e_t = -sum_{k>t} a_k w_{t-k} (t < N) plus a direct output term
                # f_t = sum_{k>t} c_k w_{t-k}. Both cancel large terms, so this part is in x.dtype.
                rec = self._recurrence(x.dtype)
                kx, gx = self._prefill_taps(x.dtype)
                x_rev = x.flip(-1)  # (B, D, N); x[..., j] = w_{-1-j}
                e = -polymul(rec["a"], x_rev, 2 * N - 1)[..., N - 1 : N - 1 + m]  # (B, D, m)
                f = polymul(rec["c"], x_rev, 2 * N - 1)[..., N - 1 : N - 1 + m]  # (B, D, m)
                nh = fft_size(T + m - 1)
                e_f = torch.fft.rfft(e, n=nh)  # (B, D, nh//2+1)
                y = y + torch.fft.irfft(e_f * torch.fft.rfft(kx[:, :T], n=nh), n=nh)[..., :T]
                y[..., :m] += f - rec["d"].unsqueeze(-1) * e
                w = w + torch.fft.irfft(e_f * torch.fft.rfft(gx[:, :T], n=nh), n=nh)[..., :T]
        w_last = w[..., T - m : T].flip(-1)  # (B, D, m): w_{T-1}, ..., w_{T-m}
        new_state = torch.cat([w_last, x[..., : N - m]], -1)  # (B, D, N)
        return y.transpose(1, 2), new_state

    # ------------------------------------------------------------------ transfer functions
    def to_transfer_function(self) -> tuple[Tensor, Tensor]:
        """(num, den), each (d_model, N+1) fp64, of the system that recurrent mode runs.

        ``scipy.signal.lfilter(num[i], den[i], x)`` reproduces channel i of ``step`` exactly and
        channel i of ``forward`` for the first l_max outputs.
        """
        rec = self._recurrence(torch.float64)
        den = F.pad(rec["a"], (1, 0), value=1.0)  # (D, N+1)
        num = torch.cat([rec["d"].unsqueeze(-1), rec["c"]], -1) + rec["d"].unsqueeze(-1) * F.pad(rec["a"], (1, 0))
        return num.clone(), den.clone()

    @classmethod
    def from_transfer_function(cls, num, den, l_max: int, **kwargs) -> "RTF":
        """Build an RTF from full transfer functions in the ``scipy.signal.lfilter(b=num, a=den)`` form.

        ``num`` is (d_model, n+1); ``den`` is (d_model, m+1) or (num_a, m+1) with num_a dividing
        d_model (shared denominators). Polynomials are in z^-1; ``den[:, 0]`` must be non-zero.
        The result's kernel is the first l_max taps of the impulse response and its recurrent mode
        is the given system for any length. Uses init="zeros", constraint="none" unless overridden;
        ``constraint="reflection"`` takes strictly stable denominators only (their reflection
        coefficients through atanh; an unstable one raises ValueError), and ``"l1_montel"``
        cannot represent arbitrary stable denominators and is refused. Parameters are fp64 unless
        ``dtype`` is given; convert with ``.float()`` for training.
        """
        num = torch.as_tensor(num, dtype=torch.float64)
        den = torch.as_tensor(den, dtype=torch.float64)
        num = num.unsqueeze(0) if num.dim() == 1 else num
        den = den.unsqueeze(0) if den.dim() == 1 else den
        if num.dim() != 2 or den.dim() != 2:
            raise ValueError("num and den must be 1-D or 2-D (channels, coefficients)")
        d_model, num_a = num.shape[0], den.shape[0]
        if d_model % num_a != 0:
            raise ValueError(f"den has {num_a} rows, which must divide the {d_model} rows of num")
        if torch.any(den[:, 0] == 0):
            raise ValueError("den[:, 0] must be non-zero")
        N = max(num.shape[1], den.shape[1], 2) - 1
        num = F.pad(num, (0, N + 1 - num.shape[1]))
        den = F.pad(den, (0, N + 1 - den.shape[1]))
        group = d_model // num_a
        lead = den[:, :1]
        den = den / lead  # monic
        num = num / lead.repeat_interleave(group, 0)
        den_ch = den.repeat_interleave(group, 0)  # (D, N+1)
        h0 = num[:, 0]
        c = num[:, 1:] - h0.unsqueeze(-1) * den_ch[:, 1:]  # (D, N): strictly proper numerator
        # True impulse response h_0..h_l_max of the strictly proper part (h_0 = 0).
        g = inverse_impulse_response(den, l_max + 1).repeat_interleave(group, 0)  # (D, l_max+1)
        h = polymul(F.pad(c, (1, 0)), g, l_max + 1)  # (D, l_max+1)
        # The aliased response the FFT sees is p = [h_L, h_1, ..., h_{L-1}]; the trained numerator
        # is B~ = A * p (circular, length L), which has support 1..N only.
        p = torch.cat([h[:, l_max:], h[:, 1:l_max]], -1)  # (D, L)
        b_tilde = torch.fft.irfft(torch.fft.rfft(den_ch, n=l_max) * torch.fft.rfft(p), n=l_max)[:, 1 : N + 1]
        # fp64 by default: the coefficients of sharp designs do not survive a round to fp32.
        kwargs = {"init": "zeros", "constraint": "none", "dtype": torch.float64, **kwargs}
        rtf = cls(d_model, N, l_max, num_a=num_a, **kwargs)
        if rtf.constraint == "l1_montel":
            raise ValueError(
                "from_transfer_function needs constraint='none' or 'reflection': l1_montel cannot represent "
                "arbitrary stable denominators"
            )
        a_raw = den[:, 1:]
        if rtf.constraint == "reflection":
            a_raw = raw_from_reflection(denominator_to_reflection(a_raw))  # raises unless strictly stable
        elif rtf.constraint == "sections":
            comp = torch.zeros(a_raw.shape[0], N, N, dtype=torch.float64)
            comp[:, 0] = -a_raw
            comp[:, 1:, :-1] = torch.eye(N - 1, dtype=torch.float64)
            a_raw = raw_from_poles(torch.linalg.eigvals(comp))  # raises unless strictly stable
        with torch.no_grad():
            den, b_tilde, h0, h, a_raw = (t.to(rtf.b.dtype) for t in (den, b_tilde, h0, h, a_raw))
            rtf.a_raw.copy_(a_raw)
            rtf.b.copy_(b_tilde)
            rtf.h0.copy_(h0 - h[:, l_max])  # tap 0 receives the alias h_L; compensate
        return rtf

    def poles(self) -> Tensor:
        """Complex poles (ndir * num_a, N) of each denominator: roots of z^N + a_1 z^(N-1) + ... + a_N.

        With the reflection constraint they come from the reflection coefficients (a matrix of
        norm <= 1, accurate next to the circle), otherwise from the companion matrix of ``a``, in fp64.
        """
        with torch.no_grad():
            if self.constraint == "reflection":
                return reflection_poles(reflection_coefficients(self.a_raw.double()))
            if self.constraint == "sections":
                return sections_poles(self.a_raw)
            a = self.denominator(torch.float64)  # (R, N)
            R, N = a.shape
            comp = torch.zeros(R, N, N, dtype=torch.float64, device=a.device)
            comp[:, 0, :] = -a
            if N > 1:
                comp[:, 1:, :-1] = torch.eye(N - 1, dtype=torch.float64, device=a.device)
            return torch.linalg.eigvals(comp)
