"""The long-filter contract: what the Hyena operator, the caches and the config rely on.

A long filter is a bank of ``d_model`` causal single-input single-output filters of length
``l_max``. Every filter has a parallel mode:

    f.kernel(L=None)   # (d_model, L) time-domain taps; tap 0 includes the feed-through
    f(u)               # u (B, L, d_model) -> (B, L, d_model), L <= l_max

A filter with a finite recurrent state (``has_recurrence`` true) also has a recurrent mode with
state in and state out, and prefill never loops over prompt tokens in Python:

    s = f.initial_state(batch_size, device=None, dtype=None)
    y, s = f.prefill(u, s)       # u (B, T, d_model), any T; same y as f(u) for T <= l_max
    y_t, s = f.step(u_t, s)      # u_t (B, d_model); cost independent of the position

State tensors carry the batch in dimension 0 (the decoding caches select and reorder rows there).
The layers above ask only ``has_recurrence``, never a filter's name, so adding a filter means a
new file, an entry in :mod:`.filters`, its config fields and tests.

The class methods connect a filter to :class:`~.configuration_hyena_rtf.HyenaRTFConfig` without
the config knowing the filter: ``config_kwargs`` maps config fields to constructor arguments,
``check_config`` validates them (raising through :class:`ConfigCheck`, which names the field),
and ``default_kwargs`` supplies what the Hyena operator passes when the caller gives nothing.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

__all__ = ["LongFilter", "ConfigCheck", "build_filter", "prepare_parallel"]


def prepare_parallel(model: nn.Module) -> None:
    """Let each long-filter class prepare, in one batch, what all its filters in ``model`` need for
    the next parallel forward (``LongFilter.prepare_batch``): a model calls this once per forward
    instead of every filter doing its own small sequential work."""
    by_class: dict[type, list] = {}
    for m in model.modules():
        if isinstance(m, LongFilter):
            by_class.setdefault(type(m), []).append(m)
    for cls, filters in by_class.items():
        cls.prepare_batch(filters)


def build_filter(cls: type["LongFilter"], *args, **kwargs) -> "LongFilter":
    """``cls(*args, **kwargs)`` drawing its random numbers from a generator of its own.

    Exactly one number is taken from the global generator (the filter's seed), whatever the
    filter class and options draw, so every weight built after a filter gets the same values for
    the same global seed: two models that differ only in their long filters start from identical
    embeddings, projections and MLPs (paired comparisons). The seed is kept as ``init_seed``.
    """
    seed = int(torch.randint(0, 2**62, (1,), device="cpu").item())
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        module = cls(*args, **kwargs)
    module.init_seed = seed
    for part in module.modules():
        if part is not module:
            part._long_filter_part = True  # the model's weight init leaves these layers alone
    return module


class ConfigCheck:
    """Validation of config fields; every error names ``<ConfigClass>.<field>`` and its value."""

    def __init__(self, config: Any):
        self.config = config

    def fail(self, field: str, what: str) -> None:
        value = getattr(self.config, field)
        raise ValueError(f"{type(self.config).__name__}.{field} {what}, got {value!r}")

    def need_int(self, field: str, low: int = 1) -> None:
        value = getattr(self.config, field)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            self.fail(field, f"must be an integer >= {low}")

    def need_choice(self, field: str, choices: tuple) -> None:
        if getattr(self.config, field) not in choices:
            self.fail(field, f"must be one of {choices}")

    def need_positive(self, field: str) -> None:
        value = getattr(self.config, field)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
            self.fail(field, "must be > 0")


class LongFilter(nn.Module):
    """Base class of the long filters (see the module docstring for the contract).

    Subclasses set ``d_model`` and ``l_max`` and implement ``kernel`` and ``forward``; recurrent
    ones set ``has_recurrence = True`` (a class attribute, or a property when it depends on the
    instance, e.g. a bidirectional RTF has none) and implement the three recurrent methods.
    """

    has_recurrence: bool = False
    # True when the filter's state has the config's ``state_size`` (RTF, S4D): the size a
    # benchmark or a sweep varies. A class attribute, known before any filter is built.
    state_sized: bool = False
    d_model: int
    l_max: int

    def kernel(self, L: Optional[int] = None) -> Tensor:
        """Time-domain kernel (d_model, L), tap 0 including the feed-through."""
        raise NotImplementedError

    def forward(self, u: Tensor) -> Tensor:
        """Parallel causal filtering: u (B, L, d_model) -> (B, L, d_model), L <= l_max."""
        raise NotImplementedError

    def _check_input(self, u: Tensor, max_len: Optional[int]) -> None:
        """u must be (B, L, d_model); parallel mode also needs L <= max_len (the kernel length)."""
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"u must have shape (B, L, d_model={self.d_model}), got {tuple(u.shape)}")
        if max_len is not None and u.shape[1] > max_len:
            raise ValueError(
                f"input length {u.shape[1]} exceeds l_max={max_len} in parallel mode; "
                "use prefill() for longer inputs or build the filter with a larger l_max"
            )

    def _no_recurrence(self) -> NotImplementedError:
        return NotImplementedError(
            f"{type(self).__name__} has no recurrent mode; use a filter with a recurrence "
            "(filter='rtf' or filter='s4d') for prefill/step decoding"
        )

    def initial_state(self, batch_size: int, device=None, dtype=None) -> Tensor:
        """Zero state for ``batch_size`` sequences (recurrent filters only)."""
        raise self._no_recurrence()

    def prefill(self, u: Tensor, state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Filter a prompt u (B, T, d_model) from ``state``; return outputs and the final state."""
        raise self._no_recurrence()

    def step(self, u_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One position: u_t (B, d_model) -> (y_t (B, d_model), next state)."""
        raise self._no_recurrence()

    def init_buffers(self) -> None:
        """Recompute non-persistent buffers (``from_pretrained`` leaves them uninitialised)."""

    def reset_parameters(self) -> None:
        """Draw every parameter of the filter afresh (its own initialisation), in place."""
        raise NotImplementedError(f"{type(self).__name__} does not implement reset_parameters")

    def pole_parameters(self) -> list[nn.Parameter]:
        """The parameters that place the filter's poles (an optimizer may treat them apart);
        empty for filters without explicit poles."""
        return []

    @classmethod
    def prepare_batch(cls, filters: list["LongFilter"]) -> None:
        """Precompute, for all ``filters`` of this class at once, what their next parallel forward
        needs (see :func:`prepare_parallel`); the default does nothing."""

    # ------------------------------------------------------------------ config seam
    @classmethod
    def default_kwargs(cls, l_max: int) -> dict:
        """Constructor arguments the Hyena operator supplies when its caller leaves them out."""
        return {}

    @classmethod
    def config_kwargs(cls, config: Any) -> dict:
        """Constructor arguments (besides d_model, l_max, device, dtype) from a model config."""
        raise NotImplementedError(f"{cls.__name__} does not read a model config")

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Raise ValueError naming the first config field this filter cannot use."""
