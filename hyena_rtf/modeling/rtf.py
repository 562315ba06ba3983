"""Rational transfer function (RTF) filters: state-free parallel mode and exact recurrent mode.

Each of the ``d_model`` channels is a SISO filter

    H(z) = h0 + (b_1 z^-1 + ... + b_N z^-N) / (1 + a_1 z^-1 + ... + a_N z^-N)

with ``num_a`` denominators shared by consecutive groups of ``d_model // num_a`` channels.

Parallel mode samples H at the ``l_max``-th roots of unity with one rFFT of the zero-padded
coefficients, divides, and returns to the time domain with one irFFT (:mod:`.rtf_kernel`): cost
O(l_max log l_max) per channel whatever ``N`` is. Sampling on the unit circle gives the
*time-aliased* response ``sum_j h[t + j*l_max]``. The trained numerator ``b`` is therefore
understood as the aliasing-corrected numerator ``b~ = C (I - A^l_max)`` of a system (A, e1, C, h0):
then the kernel is exactly the first ``l_max`` taps of that system, except that tap 0 also
receives ``h_l_max``.

Recurrent mode runs that system in companion form (:mod:`.rtf_recurrence`). The options and the
starting points (graded decay poles, given transfer functions) are in :mod:`.rtf_init`; this
module is the parametrisation: raw parameters -> constrained denominators -> kernel.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .fftconv import fft_conv
from .long_filter import ConfigCheck, LongFilter
from .reflection import reflection_coefficients, reflection_poles, reflection_to_denominator
from .rtf_init import (
    CONSTRAINTS,
    DEFAULT_DECAY,
    H0_INITS,
    INITS,
    MONTEL_EPS,
    aliased_parameters,
    check_rtf_args,
    graded_decay_radii,
    raw_denominator,
    set_graded_poles,
)
from .rtf_kernel import RationalKernel, companion_poles, inverse_impulse_response
from .rtf_recurrence import RTFRecurrence
from .sections import sections_poles, sections_to_denominator

# graded_decay_radii and inverse_impulse_response moved out; re-exported for existing callers.
__all__ = ["RTF", "inverse_impulse_response", "graded_decay_radii", "DEFAULT_DECAY"]

# Constraints whose denominators come out of a sequential map of all rows (batched per forward).
_MAPPED = {"reflection": lambda raw: reflection_to_denominator(reflection_coefficients(raw)),
           "sections": sections_to_denominator}


class RTF(RTFRecurrence, LongFilter):
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
        bidirectional: add an anti-causal filter bank (non-causal tasks; no recurrent mode).
        dropout: dropout on the kernel taps during training.

    The defaults (xavier numerator, reflection constraint, graded decay on half the denominators)
    are the variant chosen in the project's paired comparison (BENCHMARKS.md section 4): the long
    half is what makes RTF beat the implicit filter on text, the short half keeps exact delays
    learnable (copying); the paper's ``init="xavier", constraint="l1_montel", decay=None`` remains
    available. The recurrent mode (``initial_state``, ``step``, ``prefill``,
    ``to_transfer_function``) comes from :class:`~.rtf_recurrence.RTFRecurrence`.
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
        decay = check_rtf_args(d_model, state_size, l_max, num_a, init, constraint, h0_init, decay, dropout)
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
                set_graded_poles(self.a_raw, self.montel_scale, self.num_a, self.l_max, self.decay, self.constraint)

    state_sized = True

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
        check.need_choice("rtf_init", INITS)
        check.need_choice("rtf_constraint", CONSTRAINTS)
        if config.rtf_h0_init is not None:
            check.need_choice("rtf_h0_init", H0_INITS)
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
            scale = a.abs().sum(-1, keepdim=True) + self.montel_scale.to(a.dtype).abs().unsqueeze(-1) + MONTEL_EPS
            a = a / scale  # (ndir*num_a, N), sum|a| < 1
        return a

    def _kernel_all(self, L: int, dtype: torch.dtype) -> Tensor:
        """Kernels of every direction, (ndir * d_model, L), computed state-free in ``dtype``."""
        with torch.autocast(device_type=self.b.device.type, enabled=False):
            # Denominators and 1/A in fp64 whatever ``dtype`` (R rows only: cheap), see RationalKernel.
            a = self.denominator(torch.promote_types(self._wide(), dtype))  # (R, N) with R = ndir*num_a
            return RationalKernel.apply(self.b.to(dtype), a, self.h0.to(dtype), self.l_max, L)

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

    # ------------------------------------------------------------------ transfer functions
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
        den, b_tilde, h0, alias = aliased_parameters(num, den, l_max)  # fp64
        # fp64 by default: the coefficients of sharp designs do not survive a round to fp32.
        kwargs = {"init": "zeros", "constraint": "none", "dtype": torch.float64, **kwargs}
        rtf = cls(b_tilde.shape[0], den.shape[1] - 1, l_max, num_a=den.shape[0], **kwargs)  # den: (num_a, N+1)
        if rtf.constraint == "l1_montel":
            raise ValueError(
                "from_transfer_function needs constraint='none' or 'reflection': l1_montel cannot represent "
                "arbitrary stable denominators"
            )
        a_raw = raw_denominator(den[:, 1:], rtf.constraint)  # raises unless stable where the constraint needs it
        with torch.no_grad():
            b_tilde, h0, alias, a_raw = (t.to(rtf.b.dtype) for t in (b_tilde, h0, alias, a_raw))
            rtf.a_raw.copy_(a_raw)
            rtf.b.copy_(b_tilde)
            rtf.h0.copy_(h0 - alias)  # tap 0 receives the alias h_L; compensate
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
            return companion_poles(self.denominator(torch.float64))  # (R, N)
