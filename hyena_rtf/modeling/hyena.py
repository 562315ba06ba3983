"""Hyena operator: projections, short causal convolution, and a gated chain of long convolutions.

For order O the input is projected to O+1 streams ``x_0, ..., x_{O-1}, v`` (each d_model wide),
each smoothed by a causal depthwise convolution of width ``short_filter_order``; then

    v <- long_conv_i(dropout(v * x_{O-1-i}))   for i = 0 .. O-2
    y  = out(v * x_0)

Long convolutions are any :class:`~.long_filter.LongFilter`: RTF (the default), S4D or Hyena's
implicit filters, named through :mod:`.filters` or passed as a class. The operator has a recurrent
mode (prefill / step) exactly when all its filters have one. It is a :class:`~.mixer.Mixer`: its
decoding state is a :class:`HyenaState`, kept in a :class:`~.cache.HyenaCache`, or none (its model
then decodes through a :class:`~.cache.RecomputeCache`); it validates and reads its config fields
itself, its filter's through the filter. The feed-through of each long convolution is tap 0 of
its kernel; it is added once (the reference code added the RTF feed-through twice).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cache import HyenaCache, HyenaState, RecomputeCache
from .filters import MIXER_FILTERS, filter_class
from .long_filter import ConfigCheck, LongFilter, build_filter
from .mixer import Mixer, MixContext

__all__ = ["HyenaOperator", "HyenaState"]


class HyenaOperator(Mixer):
    """Hyena mixer with long filters of any :class:`~.long_filter.LongFilter` class.

    Args:
        d_model: model width.
        l_max: longest sequence of parallel mode (the long-filter kernel length).
        order: number of gates (>= 2); order - 1 long convolutions.
        filter: a name of :data:`~.filters.FILTERS` (``"rtf"``, ``"s4d"``, ``"implicit"``) or a
            LongFilter subclass, built as ``cls(d_model, l_max=l_max, **filter_kwargs)``.
        filter_kwargs: extra arguments of the filter class (RTF: state_size, num_a, init,
            constraint, dropout; S4D: state_size, dt_min, dt_max, dropout; implicit: emb_dim,
            filter_order, ...), on top of the class's ``default_kwargs(l_max)``.
        short_filter_order: width of the causal depthwise convolution.
        dropout: dropout on the gated input of each long convolution.
        output_rank: None for a ``Linear(d, d)`` output projection; an int r for the paper's
            head RMSNorm -> Linear(d, r) -> GELU -> Linear(r, d).
        output_norm_eps: epsilon of that head's RMSNorm (None: torch's default).
    """

    def __init__(
        self,
        d_model: int,
        l_max: int,
        order: int = 2,
        filter: Union[str, type[LongFilter]] = "rtf",
        filter_kwargs: Optional[dict] = None,
        short_filter_order: int = 3,
        dropout: float = 0.0,
        output_rank: Optional[int] = None,
        output_norm_eps: Optional[float] = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if order < 2:
            raise ValueError(f"order must be >= 2 (one long convolution at least), got {order}")
        filter_cls = filter_class(filter)
        if short_filter_order < 1:
            raise ValueError(f"short_filter_order must be >= 1, got {short_filter_order}")
        if output_rank is not None and output_rank < 1:
            raise ValueError(f"output_rank must be None or >= 1, got {output_rank}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.l_max, self.order = d_model, l_max, order
        self.filter = filter if isinstance(filter, str) else filter_cls.__name__
        self.short_filter_order = short_filter_order
        channels = (order + 1) * d_model
        self.in_proj = nn.Linear(d_model, channels, **factory)
        # Padding is applied by hand (left only) so that prefill can prepend a saved window.
        self.short_filter = nn.Conv1d(channels, channels, short_filter_order, groups=channels, **factory)
        kwargs = {**filter_cls.default_kwargs(l_max), **(filter_kwargs or {})}
        # Each filter draws from its own seeded generator (build_filter): the projections and the
        # output head built around it get the same weights whatever the filter is.
        self.filters = nn.ModuleList(
            [build_filter(filter_cls, d_model, l_max=l_max, device=device, dtype=dtype, **kwargs) for _ in range(order - 1)]
        )
        self.dropout = nn.Dropout(dropout)
        if output_rank is None:
            self.out_norm = self.mimo_proj = None
            self.out_proj = nn.Linear(d_model, d_model, **factory)
        else:
            self.out_norm = nn.RMSNorm(d_model, eps=output_norm_eps, **factory)
            self.mimo_proj = nn.Linear(d_model, output_rank, **factory)
            self.out_proj = nn.Linear(output_rank, d_model, **factory)

    # ------------------------------------------------------------------ shared pieces
    def _output(self, y: Tensor) -> Tensor:
        if self.mimo_proj is not None:
            y = F.gelu(self.mimo_proj(self.out_norm(y)))
        return self.out_proj(y)

    def _gates(self, zc: Tensor, long_conv) -> Tensor:
        """zc (..., (order+1)*d_model) -> gated chain output (..., d_model)."""
        *xs, v = zc.chunk(self.order + 1, dim=-1)
        for i, x in enumerate(reversed(xs[1:])):
            v = long_conv(i, self.dropout(v * x))
        return v * xs[0]

    def _check(self, u: Tensor, dims: int, name: str) -> None:
        if u.dim() != dims or u.shape[-1] != self.d_model:
            shape = "(B, L, d_model)" if dims == 3 else "(B, d_model)"
            raise ValueError(f"{name} must have shape {shape} with d_model={self.d_model}, got {tuple(u.shape)}")

    @property
    def has_recurrence(self) -> bool:
        """Whether every long filter has a finite recurrent state (then prefill/step exist)."""
        return all(f.has_recurrence for f in self.filters)

    @property
    def has_state(self) -> bool:
        """The operator's only decoding state is its recurrence (implicit filters: recompute)."""
        return self.has_recurrence

    def _check_recurrent(self) -> None:
        if not self.has_recurrence:
            raise NotImplementedError(
                f"filter={self.filter!r} has no recurrent mode; use a filter with a recurrence "
                "(filter='rtf' or filter='s4d') for prefill/step decoding"
            )

    # ------------------------------------------------------------------ parallel mode
    def forward(self, u: Tensor, ctx: Optional[MixContext] = None) -> Tensor:
        """u (B, L, d_model) -> (B, L, d_model), L <= l_max. ``ctx`` is not used (no positions or masks)."""
        self._check(u, 3, "u")
        if u.shape[1] > self.l_max:
            raise ValueError(
                f"input length {u.shape[1]} exceeds l_max={self.l_max} in parallel mode; "
                "use prefill()/step() (recurrent filters) for longer sequences"
            )
        z = self.in_proj(u).transpose(1, 2)  # (B, C, L)
        zc = self.short_filter(F.pad(z, (self.short_filter_order - 1, 0)))  # (B, C, L), causal
        y = self._gates(zc.transpose(1, 2), lambda i, s: self.filters[i](s))  # (B, L, D)
        return self._output(y)

    # ------------------------------------------------------------------ recurrent mode
    def initial_state(self, batch_size: int, device=None, dtype=None) -> HyenaState:
        """Zero state for ``batch_size`` sequences."""
        self._check_recurrent()
        w = self.in_proj.weight
        device = w.device if device is None else device
        short = torch.zeros(
            batch_size, w.shape[0], self.short_filter_order - 1, device=device, dtype=dtype or w.dtype
        )
        return HyenaState(short, tuple(f.initial_state(batch_size, device=device, dtype=dtype) for f in self.filters))

    def prefill(
        self, u: Tensor, state: Optional[HyenaState] = None, ctx: Optional[MixContext] = None
    ) -> tuple[Tensor, HyenaState]:
        """Process a prompt u (B, T, d_model) of any length; return outputs and the final state.

        Equivalent to ``step`` over every position (and to ``forward`` when T <= l_max), but runs
        the long convolutions in parallel (chunks of l_max), never token by token.
        """
        self._check_recurrent()
        self._check(u, 3, "u")
        if state is None:
            state = self.initial_state(u.shape[0], device=u.device)
        z = self.in_proj(u).transpose(1, 2)  # (B, C, T)
        window = torch.cat([state.short.to(z.dtype), z], -1)  # (B, C, K-1+T)
        zc = self.short_filter(window)  # (B, C, T)
        new_short = window[..., window.shape[-1] - (self.short_filter_order - 1) :]  # (B, C, K-1)
        new_long = []

        def long_conv(i, s):
            y, st = self.filters[i].prefill(s, state.long[i])
            new_long.append(st)
            return y

        y = self._gates(zc.transpose(1, 2), long_conv)  # (B, T, D)
        return self._output(y), HyenaState(new_short, tuple(new_long))

    def step(self, u_t: Tensor, state: HyenaState, ctx: Optional[MixContext] = None) -> tuple[Tensor, HyenaState]:
        """One token: u_t (B, d_model) -> (B, d_model) and the next state. Cost independent of position."""
        self._check_recurrent()
        self._check(u_t, 2, "u_t")
        z = self.in_proj(u_t)  # (B, C)
        window = torch.cat([state.short.to(z.dtype), z.unsqueeze(-1)], -1)  # (B, C, K)
        zc = (window * self.short_filter.weight.squeeze(1)).sum(-1)  # (B, C)
        if self.short_filter.bias is not None:
            zc = zc + self.short_filter.bias
        new_long = []

        def long_conv(i, s):
            y, st = self.filters[i].step(s, state.long[i])
            new_long.append(st)
            return y

        y = self._gates(zc, long_conv)  # (B, D)
        return self._output(y), HyenaState(window[..., 1:], tuple(new_long))

    # ------------------------------------------------------------------ model-level decoding cache
    @property
    def cache_type(self) -> type:
        return HyenaCache if self.has_recurrence else RecomputeCache

    def new_cache(self, config) -> Union[HyenaCache, RecomputeCache]:
        """Recurrent filters: a :class:`~.cache.HyenaCache` of per-layer states. Without a finite
        state: the model-level input window of :class:`~.cache.RecomputeCache` (l_max positions)."""
        if self.has_recurrence:
            return HyenaCache(config.num_hidden_layers)
        return RecomputeCache(config.max_position_embeddings)

    # ------------------------------------------------------------------ config seam
    @classmethod
    def check_config(cls, config) -> None:
        """The operator's fields, then those of the filter that ``config.mixer`` names."""
        check = ConfigCheck(config)
        check.need_int("hyena_order", low=2)
        check.need_int("short_filter_order")
        if config.output_rank is not None:
            check.need_int("output_rank")
        if config.output_norm_eps is not None:
            check.need_positive("output_norm_eps")
        filter_class(MIXER_FILTERS[config.mixer]).check_config(config)

    @classmethod
    def from_config(cls, config, device=None) -> "HyenaOperator":
        filt = MIXER_FILTERS[config.mixer]
        return cls(
            config.hidden_size,
            config.max_position_embeddings,
            order=config.hyena_order,
            filter=filt,
            filter_kwargs=filter_class(filt).config_kwargs(config),
            short_filter_order=config.short_filter_order,
            dropout=config.mixer_dropout,
            output_rank=config.output_rank,
            output_norm_eps=config.output_norm_eps,
            device=device,
        )
