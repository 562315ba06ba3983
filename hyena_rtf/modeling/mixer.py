"""The mixer contract: what the backbone, the decoding caches and the config rely on.

A mixer is the sequence-mixing half of a block: a causal map of (B, T, D) to (B, T, D). The
backbone knows every mixer through this contract only (as the Hyena operator knows its long
filters through :class:`~.long_filter.LongFilter`), so it never asks which mixer it holds.
Every mixer has a parallel mode, the one training uses:

    y = mixer(x, ctx)                  # x (B, T, D), T <= l_max -> y (B, T, D)

A mixer with a decoding state of its own (``has_state``) also has a decoding mode with state in
and state out, as in Mamba's mixers or litgpt's per-block KV cache:

    s = mixer.initial_state(batch_size, device=None, dtype=None)
    y, s = mixer.prefill(x, s, ctx)    # x (B, T, D), any T; None state means initial_state
    y_t, s = mixer.step(x_t, s, ctx)   # x_t (B, D): one position

The state is the mixer's business: the Hyena operator's recurrent :class:`~.hyena.HyenaState`
(short-filter window plus one state per long filter) or attention's keys and values. A Hyena
operator whose filters have no finite state (implicit filters) has none: its model decodes by
recomputing the parallel model over a sliding window of inputs, which only the whole stack can
do exactly (every layer must see the same window), so that buffer is a model-level
:class:`~.cache.RecomputeCache`.

``ctx`` (a :class:`MixContext` or None) carries what the backbone computes once per call for
all layers, as the mixer class asked for it in :meth:`Mixer.context`: positions and a padding
mask for attention, nothing for the Hyena operator.

Left padding: a mixer that honours a padding mask through ``ctx`` sets ``masks_padding``; for the
others the backbone runs each group of equally padded rows from its first real token, so padded
positions never enter a state or a convolution.

The class methods connect a mixer to :class:`~.configuration_hyena_rtf.HyenaRTFConfig` without
the config or the backbone knowing the mixer: ``check_config`` validates the mixer's fields,
``from_config`` builds one layer's mixer, ``context`` prepares ``ctx`` and ``learned_positions``
says whether the backbone keeps a learned position table. The model-level cache comes from a
mixer instance (:meth:`Mixer.new_cache`) because whether a state exists can depend on the
instance (its filters). :mod:`.mixers` maps the config's mixer names to classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor, nn

__all__ = ["Mixer", "MixContext", "CacheLayers"]


@dataclass
class MixContext:
    """Per-call inputs shared by every layer's mixer besides the hidden states.

    positions: (B, T) or (1, T) absolute positions of the new tokens (left padding counted
        from each row's first real token), or None.
    mask: boolean attention mask (B or 1, 1, T, past+T), True = may attend, as
        :func:`~.attention.causal_mask` builds it; None means plain causal.
    """

    positions: Optional[Tensor] = None
    mask: Optional[Tensor] = None


class CacheLayers:
    """A model-level decoding cache seen as one state per layer (what the backbone reads and writes).

    A cache class of this package implements these methods itself; a mixer whose cache comes
    from elsewhere (attention: a transformers ``Cache``) wraps it (:meth:`Mixer.cache_layers`).
    """

    @property
    def is_empty(self) -> bool:
        """True before the first prefill (states are then None, meaning initial states)."""
        raise NotImplementedError

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions processed so far, padding included."""
        raise NotImplementedError

    def layer_states(self) -> list:
        """One decoding state per layer, None where none was made yet."""
        raise NotImplementedError

    def store(self, parts: list, new_tokens: int, batch_size: int) -> None:
        """Keep the states after ``new_tokens`` more positions.

        parts: [(rows, states)], states one per layer; rows (n,) are the batch rows the states
        belong to (a group of equally left-padded rows, prefilled on its own), or None for all.
        """
        raise NotImplementedError


class Mixer(nn.Module):
    """Base class of the sequence mixers (see the module docstring for the contract).

    Subclasses implement ``forward``; those with a decoding state set ``has_state`` (a class
    attribute, or a property when it depends on the instance) and implement ``initial_state``,
    ``prefill`` and ``step``; and they implement the class methods of the config seam.
    """

    # Decoding state of fixed size (not growing with the tokens seen): what graph decoding needs.
    has_recurrence: bool = False
    # Per-layer decoding state at all (prefill/step); False: the model recomputes over a window.
    has_state: bool = False
    # True: left padding is handled through ctx.mask; False: the backbone regroups padded rows.
    masks_padding: bool = False

    def forward(self, x: Tensor, ctx: Optional[MixContext] = None) -> Tensor:
        """Parallel mode: x (B, T, D) -> (B, T, D), causal."""
        raise NotImplementedError

    def _no_state(self) -> NotImplementedError:
        return NotImplementedError(f"{type(self).__name__} has no decoding state (has_state is false)")

    def initial_state(self, batch_size: int, device=None, dtype=None) -> Any:
        """The state of an empty context for ``batch_size`` sequences."""
        raise self._no_state()

    def prefill(self, x: Tensor, state: Any = None, ctx: Optional[MixContext] = None) -> tuple[Tensor, Any]:
        """x (B, T, D) after ``state`` (None: initial) -> (y (B, T, D), state after x)."""
        raise self._no_state()

    def step(self, x_t: Tensor, state: Any, ctx: Optional[MixContext] = None) -> tuple[Tensor, Any]:
        """One position: x_t (B, D) -> (y_t (B, D), next state)."""
        raise self._no_state()

    # ------------------------------------------------------------------ model-level decoding cache
    @property
    def cache_type(self) -> type:
        """The class of decoding cache a model of this mixer accepts."""
        raise NotImplementedError(f"{type(self).__name__} does not decode")

    def new_cache(self, config: Any) -> Any:
        """An empty decoding cache for a model of ``config.num_hidden_layers`` such mixers."""
        raise NotImplementedError(f"{type(self).__name__} does not decode")

    @classmethod
    def cache_layers(cls, cache: Any, num_layers: int) -> CacheLayers:
        """``cache`` (of ``cache_type``) seen as ``num_layers`` per-layer states; the default: the
        cache is a :class:`CacheLayers` already."""
        return cache

    # ------------------------------------------------------------------ config seam
    @classmethod
    def check_config(cls, config: Any) -> None:
        """Raise ValueError naming the first config field this mixer cannot use."""

    @classmethod
    def from_config(cls, config: Any, device=None) -> "Mixer":
        """One layer's mixer as ``config`` describes it."""
        raise NotImplementedError(f"{cls.__name__} does not read a model config")

    @classmethod
    def learned_positions(cls, config: Any) -> bool:
        """Whether the backbone adds a learned position table (then ``context`` gives positions)."""
        return False

    @classmethod
    def context(
        cls, attention_mask: Optional[Tensor], position_ids: Optional[Tensor], past: int, T: int, device=None
    ) -> Optional[MixContext]:
        """The ``ctx`` of one call: T new tokens after ``past`` ones; attention_mask (B, >= T) or None.

        A mixer that leaves padding to the backbone (``masks_padding`` false) sees one ctx for
        every regrouped set of rows, so its ctx must not hold per-row tensors.
        """
        return None
