"""Hyena's implicit long filter (the baseline): an MLP over positions with exponential decay.

The kernel is ``h(t) = MLP(pos(t)) * (exp(-|delta| t) + shift)`` with sine activations, where
``pos`` is a small sinusoidal positional encoding of normalised time (``modulate=False`` drops the
window: ``h(t) = MLP(pos(t))``, as the Pile-trained safari models do). The per-channel skip term
("bias" in the original code) is folded into tap 0 of the kernel, so the filter has exactly the
same parallel interface as :class:`~.rtf.RTF`. It has no finite-dimensional state
(``has_recurrence`` is false): recurrent decoding with it must recompute (or cache the whole
input history).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .fftconv import fft_conv
from .long_filter import ConfigCheck, LongFilter

__all__ = ["ImplicitFilter", "DECAY_ORDERS"]

DECAY_ORDERS = ("fast_first", "slow_first")


class _Sin(nn.Module):
    """sin(freq * x) with a learnable per-feature frequency."""

    def __init__(self, width: int, w: float):
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, width))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


class ImplicitFilter(LongFilter):
    """Implicit (MLP-parametrised) long-convolution filter bank of ``d_model`` channels.

    Args:
        d_model: number of channels.
        l_max: longest kernel (and input) length.
        emb_dim: size of the positional encoding (odd, >= 3): time plus (emb_dim-1)/2 sin/cos bands.
        filter_order: width of the MLP.
        num_inner_mlps: hidden layers of the MLP after the first.
        w: initial frequency of the sine activations.
        fast_decay_pct, slow_decay_pct, target: the exponential window decays to ``target`` at
            ``fast_decay_pct * l_max`` for the fastest channel and ``slow_decay_pct * l_max`` for the slowest.
        shift: constant added to the decay window.
        normalized: divide each kernel by its L1 norm.
        dropout: dropout on the kernel taps during training.
        init_std: std of the normal initialisation of the MLP's weights (biases start at zero):
            GPT-2's 0.02, which is what safari's LM init gives these layers.
        modulate: multiply the MLP output by the exponential window (False: no window at all).
        decay_order: which end of the channel range gets the fastest decay: ``"fast_first"``
            (channel 0 decays fastest) or ``"slow_first"`` (channel 0 decays slowest, the order of
            safari's and HyenaDNA's ``ExponentialModulation``, needed to load their weights).
    """

    def __init__(
        self,
        d_model: int,
        l_max: int,
        emb_dim: int = 3,
        filter_order: int = 64,
        num_inner_mlps: int = 2,
        w: float = 1.0,
        fast_decay_pct: float = 0.3,
        slow_decay_pct: float = 1.5,
        target: float = 1e-2,
        shift: float = 0.0,
        normalized: bool = False,
        dropout: float = 0.0,
        init_std: float = 0.02,
        modulate: bool = True,
        decay_order: str = "fast_first",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"emb_dim must be odd and >= 3, got {emb_dim}")
        if l_max < 1 or d_model < 1 or filter_order < 1:
            raise ValueError("d_model, l_max and filter_order must be >= 1")
        if num_inner_mlps < 0:
            raise ValueError(f"num_inner_mlps must be >= 0, got {num_inner_mlps}")
        if decay_order not in DECAY_ORDERS:
            raise ValueError(f"decay_order must be one of {DECAY_ORDERS}, got {decay_order!r}")
        self.d_model, self.l_max, self.normalized, self.shift = d_model, l_max, normalized, shift
        self.modulate, self.decay_order = modulate, decay_order
        self.w, self.init_std = w, init_std
        self.fast_decay_pct, self.slow_decay_pct, self.target = fast_decay_pct, slow_decay_pct, target
        factory = {"device": device, "dtype": dtype}
        # Positional encoding: normalised time plus complex exponentials of a few frequencies.
        t = torch.linspace(0, 1, l_max, **factory).unsqueeze(-1)  # (l_max, 1)
        bands = (emb_dim - 1) // 2
        freqs = torch.linspace(1e-4, bands - 1, bands, **factory).unsqueeze(0)  # (1, bands)
        angle = 2 * math.pi * torch.arange(l_max, **factory).unsqueeze(-1) / l_max  # (l_max, 1)
        z = torch.cat([t, torch.cos(freqs * angle), -torch.sin(freqs * angle)], -1)  # (l_max, emb_dim)
        self.pos_emb = nn.Parameter(z)
        self.register_buffer("t", t)
        layers = [nn.Linear(emb_dim, filter_order, **factory), _Sin(filter_order, w)]
        for _ in range(num_inner_mlps):
            layers += [nn.Linear(filter_order, filter_order, **factory), _Sin(filter_order, w)]
        layers.append(nn.Linear(filter_order, d_model, bias=False, **factory))
        self.mlp = nn.Sequential(*layers)
        self.register_buffer("deltas", self._deltas(**factory))
        self.bias = nn.Parameter(torch.empty(d_model, **factory))  # skip term, lives on tap 0
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MLP weights N(0, init_std) and zero biases, sine frequencies ``w``, skip term N(0, 1).
        The positional encoding is left as built (a deterministic function of l_max)."""
        with torch.no_grad():
            for layer in self.mlp:
                if isinstance(layer, nn.Linear):
                    layer.weight.normal_(0.0, self.init_std)
                    if layer.bias is not None:
                        layer.bias.zero_()
                elif isinstance(layer, _Sin):
                    layer.freq.fill_(self.w)
            self.bias.normal_()

    def _deltas(self, device=None, dtype=None) -> Tensor:
        """Decay rates (d_model,): the window reaches ``target`` between the fast and slow horizons."""
        fast, slow = math.log(self.target) / self.fast_decay_pct, math.log(self.target) / self.slow_decay_pct
        # The endpoints are passed in the order the source code uses, so that a converted model
        # reproduces its buffer to the last bit (linspace is not symmetric in its rounding).
        ends = (fast, slow) if self.decay_order == "fast_first" else (slow, fast)
        return torch.linspace(*ends, self.d_model, device=device, dtype=dtype).abs()

    def init_buffers(self) -> None:
        """Recompute the time grid and decay rates (registered buffers, absent from checkpoints saved
        by ``from_pretrained``'s meta-device construction)."""
        with torch.no_grad():
            t = torch.linspace(0, 1, self.l_max, device="cpu", dtype=self.t.dtype).unsqueeze(-1)  # (l_max, 1)
            self.t.copy_(t)
            self.deltas.copy_(self._deltas(device="cpu", dtype=self.deltas.dtype))

    @classmethod
    def config_kwargs(cls, config: Any) -> dict:
        return dict(emb_dim=config.implicit_emb_dim, filter_order=config.implicit_filter_order,
                    dropout=config.filter_dropout, init_std=config.initializer_range,
                    num_inner_mlps=config.implicit_num_inner_mlps, w=config.implicit_w,
                    shift=config.implicit_shift, modulate=config.implicit_modulate,
                    decay_order=config.implicit_decay_order)

    @classmethod
    def check_config(cls, config: Any) -> None:
        check = ConfigCheck(config)
        check.need_int("implicit_filter_order")
        check.need_int("implicit_emb_dim", low=3)
        if config.implicit_emb_dim % 2 == 0:
            check.fail("implicit_emb_dim", "must be odd (time plus sine/cosine pairs)")
        check.need_int("implicit_num_inner_mlps", low=0)
        for field in ("implicit_w", "implicit_shift"):
            value = getattr(config, field)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
                check.fail(field, "must be a finite number")
        if not isinstance(config.implicit_modulate, bool):
            check.fail("implicit_modulate", "must be true or false")
        check.need_choice("implicit_decay_order", DECAY_ORDERS)

    def kernel(self, L: Optional[int] = None) -> Tensor:
        """Time-domain kernel (d_model, L), tap 0 including the skip term."""
        L = self.l_max if L is None else L
        if not 1 <= L <= self.l_max:
            raise ValueError(f"kernel length L must be in [1, l_max={self.l_max}], got {L}")
        h = self.mlp(self.pos_emb[:L])  # (L, D)
        if self.modulate:
            h = h * (torch.exp(-self.t[:L] * self.deltas) + self.shift)  # (L, D)
        if self.normalized:
            h = h / h.abs().sum(0, keepdim=True).clamp_min(1e-8)
        k = h.t()  # (D, L)
        k = torch.cat([k[:, :1] + self.bias.unsqueeze(-1), k[:, 1:]], -1)
        return self.dropout(k.float() if k.dtype in (torch.float16, torch.bfloat16) else k)

    def forward(self, u: Tensor) -> Tensor:
        """Parallel filtering: u (B, L, d_model) -> (B, L, d_model), L <= l_max."""
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"u must have shape (B, L, d_model={self.d_model}), got {tuple(u.shape)}")
        if u.shape[1] > self.l_max:
            raise ValueError(f"input length {u.shape[1]} exceeds l_max={self.l_max}")
        return fft_conv(u, self.kernel(u.shape[1]))

    def _no_recurrence(self) -> NotImplementedError:
        return NotImplementedError(
            "the implicit Hyena filter has no finite-dimensional state, so it has no recurrent mode; "
            "use filter='rtf' or filter='s4d' for recurrent decoding, or recompute the parallel forward per token"
        )
