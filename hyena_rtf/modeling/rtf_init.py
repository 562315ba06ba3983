"""Starting points of an RTF filter bank: its options, graded decay poles, given transfer functions.

:class:`~.rtf.RTF` draws its parameters itself (``reset_parameters``); this module holds what
only construction needs: the accepted option values and their validation, the graded pole radii
of the default initialisation (:func:`graded_decay_radii`, :func:`set_graded_poles`), and the
conversion of a full transfer function ``num / den`` into the trained parameters
(:func:`aliased_parameters`, :func:`raw_denominator`), used by ``RTF.from_transfer_function``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .fftconv import polymul
from .reflection import denominator_to_reflection, raw_from_reflection
from .rtf_kernel import companion_poles, inverse_impulse_response
from .sections import raw_from_poles

__all__ = [
    "INITS",
    "CONSTRAINTS",
    "H0_INITS",
    "DEFAULT_DECAY",
    "MONTEL_EPS",
    "check_rtf_args",
    "graded_decay_radii",
    "set_graded_poles",
    "aliased_parameters",
    "raw_denominator",
]

INITS = ("zeros", "xavier", "montel")
CONSTRAINTS = ("sections", "reflection", "l1_montel", "none")
H0_INITS = ("one", "normal")
# The default time scales: on half the denominators, the implicit Hyena filter's window (1e-2
# reached between 0.3 and 1.5 l_max); the other half keep their draws (short, FIR-like responses).
DEFAULT_DECAY = (0.3, 1.5, 0.5)
# The l1_montel scale parameter is initialised U(0, 1) (the reference code); see RTF.reset_parameters.
MONTEL_EPS = 1e-6


def check_rtf_args(d_model: int, state_size: int, l_max: int, num_a: int, init: str, constraint: str,
                   h0_init: Optional[str], decay, dropout: float) -> Optional[tuple]:
    """Raise ValueError for the first unusable RTF constructor argument; return ``decay`` as floats."""
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
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if constraint not in CONSTRAINTS:
        raise ValueError(f"constraint must be one of {CONSTRAINTS} or None, got {constraint!r}")
    if h0_init is not None and h0_init not in H0_INITS:
        raise ValueError(f"h0_init must be one of {H0_INITS} or None, got {h0_init!r}")
    if decay is not None:
        decay = tuple(float(x) for x in decay)
        if len(decay) not in (2, 3) or not 0 < decay[0] <= decay[1] or (len(decay) == 3 and not 0 < decay[2] <= 1):
            raise ValueError(f"decay must be None or (fast, slow[, share]) with 0 < fast <= slow and 0 < share <= 1, got {decay!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return decay


def graded_decay_radii(n: int, l_max: int, fast: float, slow: float, target: float = 1e-2) -> Tensor:
    """Pole radii (n,) whose impulse responses r^t fall to ``target`` between ``fast * l_max`` and
    ``slow * l_max`` taps, the horizons spaced geometrically across the n rows (log-spaced decay
    rates, as the time scales of the implicit Hyena filter's exponential window are spread)."""
    if not 0 < fast <= slow:
        raise ValueError(f"need 0 < fast <= slow for the decay horizons, got fast={fast}, slow={slow}")
    horizons = torch.logspace(math.log10(fast * l_max), math.log10(slow * l_max), n, dtype=torch.float64)  # taps
    return torch.exp(math.log(target) / horizons)  # per-tap factor: r^horizon = target


def set_graded_poles(a_raw: Tensor, montel_scale: Optional[Tensor], num_a: int, l_max: int, decay: tuple,
                     constraint: str) -> None:
    """In place (under no_grad): one real pole per graded denominator at the radii of
    :func:`graded_decay_radii`, the other reflection coefficients (or coefficients) zero, whatever
    the constraint. ``a_raw`` (ndir * num_a, N); ``decay`` = (fast, slow[, share])."""
    fast, slow, share = (*decay, 1.0)[:3]
    ndir = a_raw.shape[0] // num_a
    graded = max(1, round(share * num_a))  # these denominators get poles; the rest keep their draws
    rows = torch.cat([torch.arange(graded) + d * num_a for d in range(ndir)])
    r = graded_decay_radii(graded, l_max, fast, slow).repeat(ndir).to(a_raw)
    a_raw[rows] = 0.0
    if constraint in ("reflection", "sections"):
        # Reflection: k_1 = -r; sections: the first section's c = -r (d = 0). Either way A = 1 - r z^-1.
        a_raw[rows, 0] = raw_from_reflection(-r.unsqueeze(-1))[:, 0]
    elif constraint == "none":
        a_raw[rows, 0] = -r
    else:  # l1_montel: a_1 = -1 / (1 + |s| + eps) = -r
        a_raw[rows, 0] = -1.0
        montel_scale[rows] = 1.0 / r - 1.0 - MONTEL_EPS


def aliased_parameters(num, den, l_max: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The RTF coefficients, fp64, whose kernel is the first ``l_max`` taps of ``num / den``.

    ``num`` (d_model, n+1), ``den`` (d_model or num_a, m+1), in the ``scipy.signal.lfilter(b=num,
    a=den)`` form (see ``RTF.from_transfer_function``). Returns the monic denominators
    (num_a, N+1), the aliasing-corrected numerators b~ (d_model, N), the feed-through h0 (d_model,)
    and the alias h_l_max (d_model,) that the spectral kernel adds to tap 0 (to subtract from h0).
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
    return den, b_tilde, h0, h[:, l_max]


def raw_denominator(a: Tensor, constraint: str) -> Tensor:
    """The raw parameters (R, N) that give the denominator coefficients ``a`` (R, N), fp64, under
    ``constraint`` ("none", "reflection" or "sections"; the last two raise ValueError unless every
    pole is strictly inside the unit circle)."""
    if constraint == "reflection":
        return raw_from_reflection(denominator_to_reflection(a))
    if constraint == "sections":
        return raw_from_poles(companion_poles(a))
    return a
