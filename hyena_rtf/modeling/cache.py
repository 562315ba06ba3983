"""Decoding caches of the Hyena mixers (the attention mixer uses transformers' DynamicCache).

The Hyena operator picks one (:meth:`~.hyena.HyenaOperator.new_cache`) by whether its long filters
have a recurrence (``LongFilter.has_recurrence``), never by their names:

- :class:`HyenaCache` holds the recurrent state of every layer whose filters have one (RTF, S4D):
  a fixed-size object (short-filter window plus one filter state per long convolution) whose size
  does not grow with the number of tokens. It is the list of per-layer states of the mixer
  contract (:class:`~.mixer.CacheLayers`).
- :class:`RecomputeCache` serves filters without a finite state (the implicit-filter baseline): it
  keeps the last ``window - 1`` input embeddings so that every new token can be scored by a full
  parallel forward over (at most) the last ``window`` positions.

Both implement the few methods and flags ``transformers.GenerationMixin`` calls on a cache object
(``get_seq_length``, ``reorder_cache`` for beam search, ``batch_repeat_interleave``,
``batch_select_indices``, ``is_compileable``, ``is_linear``) without depending on transformers.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .mixer import CacheLayers

__all__ = ["HyenaCache", "HyenaState", "RecomputeCache"]


class HyenaState(NamedTuple):
    """Recurrent state of one Hyena operator.

    short: (B, (order+1)*d_model, short_filter_order-1), the last raw ``in_proj`` outputs.
    long: one state per long convolution, as its filter's ``initial_state`` makes it (RTF: a
        (B, d_model, state_size) companion state; S4D: a (B, d_model, state_size/2) complex one).
    """

    short: Tensor
    long: tuple[Tensor, ...]

    def map(self, fn) -> "HyenaState":
        """The state with ``fn`` applied to every tensor (e.g. selecting batch rows)."""
        return HyenaState(fn(self.short), tuple(fn(s) for s in self.long))


class _BatchRows:
    """Batch-row operations generate() calls on a cache (beam search, contrastive search), all
    through the subclass's ``_apply(fn)`` over its tensors, and the flags it reads."""

    is_compileable = False
    is_croppable = False

    @property
    def is_linear(self) -> list[bool]:
        # generate() (transformers >= 5.24) asks whether every layer is a linear-attention layer;
        # if so it stops trusting get_seq_length() to tell which input ids are already in the
        # cache. Ours count every token they have seen, exactly like a KV cache, so they answer
        # False and generate() passes only the new tokens.
        return [False]

    def _apply(self, fn: Callable[[Tensor], Tensor]) -> None:
        raise NotImplementedError

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Keep batch rows ``beam_idx`` (in that order): what beam search needs."""
        self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._apply(lambda t: t[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0))


class HyenaCache(_BatchRows, CacheLayers):
    """Recurrent state of a stack of recurrent Hyena layers: one :class:`HyenaState` per layer.

    ``states[i]`` is None until the first prefill; ``seen_tokens`` counts processed positions
    (padding included), which is what ``generate`` asks for through ``get_seq_length``.
    """

    def __init__(self, num_layers: int):
        self.states: list[Optional[HyenaState]] = [None] * num_layers
        self.seen_tokens = 0

    @property
    def is_empty(self) -> bool:
        return self.states[0] is None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def _apply(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.states = [None if s is None else s.map(fn) for s in self.states]

    def layer_states(self) -> list[Optional[HyenaState]]:
        return list(self.states)

    def store(self, parts: list, new_tokens: int, batch_size: int) -> None:
        for rows, states in parts:
            if rows is None:
                self.states = list(states)
            else:
                self.set_rows(rows, states, batch_size)
        self.seen_tokens += new_tokens

    def set_rows(self, rows: Tensor, part: list, batch_size: int) -> None:
        """Write the states of a sub-batch ``part`` (one per layer) into batch rows ``rows``."""
        for i, p in enumerate(part):
            if self.states[i] is None:
                self.states[i] = p.map(lambda t: t.new_zeros((batch_size, *t.shape[1:])))
            full = self.states[i]
            full.short[rows] = p.short
            for dst, src in zip(full.long, p.long):
                dst[rows] = src

    def memory_bytes(self) -> int:
        """Bytes held by the state tensors (independent of the number of tokens seen)."""
        total = 0
        for s in self.states:
            if s is not None:
                total += sum(t.numel() * t.element_size() for t in (s.short, *s.long))
        return total


class RecomputeCache(_BatchRows):
    """Input history of a Hyena stack without a recurrence: the last ``window - 1`` embeddings.

    ``embeds`` (B, t, D) and ``real`` (B, t) (False on padding) with t < window. Decoding a token
    re-runs the whole parallel model over the history plus the new token, so each step costs a
    forward of up to ``window`` positions: the slow baseline that recurrent decoding replaces.
    """

    def __init__(self, window: int):
        self.window = window
        self.embeds: Optional[Tensor] = None
        self.real: Optional[Tensor] = None
        self.seen_tokens = 0

    @property
    def is_empty(self) -> bool:
        return self.embeds is None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def append(self, embeds: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
        """Return history + new inputs (B, t + T, D), (B, t + T), and keep the last window - 1."""
        self.seen_tokens += embeds.shape[1]
        if self.embeds is not None:
            embeds = torch.cat([self.embeds, embeds], 1)  # (B, t+T, D)
            real = torch.cat([self.real, real], 1)  # (B, t+T)
        keep = self.window - 1
        self.embeds, self.real = embeds[:, -keep:], real[:, -keep:]
        return embeds, real

    def decode(
        self, embeds: Tensor, real: Tensor, parallel: Callable[[Tensor, Tensor], Tensor], logits_to_keep=0
    ) -> Tensor:
        """Hidden states (B, T, D) of new inputs embeds (B, T, D), real (B, T), each position from
        ``parallel(window embeds, window real) -> (B, n, D)`` over the (at most) ``window``
        positions ending there. With ``logits_to_keep=k > 0``, positions past the first ``window``
        that are not among the last k are not computed (left as NaN)."""
        B, T, _ = embeds.shape
        L = self.window
        seq, real_seq = self.append(embeds, real)  # (B, n, D), (B, n)
        n = seq.shape[1]
        first = n - T  # index in seq of the first new position
        out = None
        if first < L:  # new positions whose window starts at seq[0]: one causal pass
            stop = min(n, L)
            h = parallel(seq[:, :stop], real_seq[:, :stop])  # (B, stop, D)
            out = h.new_full((B, T, h.shape[-1]), float("nan"))
            out[:, : stop - first] = h[:, first:]
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            wanted = range(max(0, T - logits_to_keep), T)
        else:
            wanted = range(T)
        for i in wanted:
            j = first + i
            if j < L:
                continue
            window = slice(j - L + 1, j + 1)
            h = parallel(seq[:, window], real_seq[:, window])  # (B, L, D)
            if out is None:
                out = h.new_full((B, T, h.shape[-1]), float("nan"))
            out[:, i] = h[:, -1]
        return out

    def _apply(self, fn: Callable[[Tensor], Tensor]) -> None:
        if self.embeds is not None:
            self.embeds, self.real = fn(self.embeds), fn(self.real)

    def memory_bytes(self) -> int:
        if self.embeds is None:
            return 0
        return self.embeds.numel() * self.embeds.element_size() + self.real.numel() * self.real.element_size()
