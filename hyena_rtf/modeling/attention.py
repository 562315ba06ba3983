"""Causal multi-head self-attention, the Transformer baseline mixer.

The fast path is ``torch.nn.functional.scaled_dot_product_attention``; :func:`attention_reference`
beside it is the obvious softmax(QK^T / sqrt(d)) V. Positions are either learned absolute
embeddings (added to the token embeddings by the backbone, nothing happens here) or rotary
embeddings applied to queries and keys.

Under the mixer contract (:mod:`.mixer`) the decoding state of one layer is the keys and values of
every position seen so far: anything with ``update(k, v) -> (all keys, all values)`` and
``get_seq_length()``. :class:`KVState` is the plain one (what :meth:`CausalSelfAttention.initial_state`
makes); inside a model the states are the layers of a transformers ``Cache`` (``DynamicCache``, what
``generate`` and the benchmarks use), seen through :class:`KVCacheLayers`. The split into
:meth:`CausalSelfAttention.project` and :meth:`CausalSelfAttention.attend` keeps the two steps
testable against the reference.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.cache_utils import Cache

from .long_filter import ConfigCheck
from .mixer import CacheLayers, Mixer, MixContext

__all__ = ["CausalSelfAttention", "KVState", "KVCacheLayers", "attention_reference", "causal_mask", "rotary_embed"]

_POSITION_TYPES = ("learned", "rotary")


def rotary_embed(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotate channel pairs (i, i + d/2) of x (B, H, T, d) by angle position * base^(-2i/d).

    positions: (B, T) or (T,) absolute positions (integers; padding may give repeated values).
    """
    d = x.shape[-1]
    half = d // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)  # (d/2,)
    pos = positions.to(torch.float32)
    if pos.dim() == 1:
        pos = pos.unsqueeze(0)
    angle = pos.unsqueeze(-1) * inv_freq  # (B or 1, T, d/2)
    cos = angle.cos().unsqueeze(1)  # (B, 1, T, d/2)
    sin = angle.sin().unsqueeze(1)
    x1, x2 = x.float()[..., :half], x.float()[..., half:]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)  # (B, H, T, d)
    return out.to(x.dtype)


def causal_mask(
    q_len: int, k_len: int, key_padding: Optional[Tensor] = None, device=None
) -> Optional[Tensor]:
    """Boolean mask (True = may attend) for queries at the last ``q_len`` of ``k_len`` positions.

    key_padding: (B, k_len) with 1 for real tokens, 0 for padding, or None. Returns None when
    plain ``is_causal`` suffices (no padding, q_len == k_len), else (B or 1, 1, q_len, k_len).
    Every query may always see its own key, so padded query rows are never empty (an empty row
    would make softmax produce NaN); real queries never see padded keys.
    """
    if key_padding is None and q_len == k_len:
        return None
    q_pos = torch.arange(k_len - q_len, k_len, device=device).unsqueeze(-1)  # (q, 1)
    k_pos = torch.arange(k_len, device=device).unsqueeze(0)  # (1, k)
    mask = (k_pos <= q_pos).unsqueeze(0).unsqueeze(0)  # (1, 1, q, k)
    if key_padding is not None:
        mask = mask & key_padding.bool()[:, None, None, :]  # (B, 1, q, k)
        mask = mask | (k_pos == q_pos)
    return mask


def attention_reference(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Slow, obvious attention: q (B, H, Tq, d), k, v (B, H, Tk, d); causal when mask is None."""
    scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if mask is None:
        Tq, Tk = q.shape[2], k.shape[2]
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)  # query i sits at Tk-Tq+i
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v.float()).to(q.dtype)  # (B, H, Tq, d)


class KVState:
    """Keys and values of the positions seen so far, each (B, H, t, d); grows by concatenation."""

    def __init__(self) -> None:
        self.keys: Optional[Tensor] = None
        self.values: Optional[Tensor] = None

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k, v (B, H, T, d); return every key and value (B, H, t+T, d)."""
        if self.keys is not None:
            k = torch.cat([self.keys, k], 2)  # (B, H, t+T, d)
            v = torch.cat([self.values, v], 2)
        self.keys, self.values = k, v
        return k, v

    def get_seq_length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]


class _CacheLayer:
    """Layer ``idx`` of a transformers ``Cache`` as one layer's KV state (updated in place)."""

    def __init__(self, cache, idx: int):
        self.cache, self.idx = cache, idx

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.cache.update(k, v, self.idx)  # (B, H, past+T, d) each

    def get_seq_length(self) -> int:
        return self.cache.get_seq_length(self.idx)


class KVCacheLayers(CacheLayers):
    """A transformers ``Cache`` seen as per-layer KV states: they write into it as they grow, so
    storing them back is only a check that no row group was prefilled apart (attention masks
    padding instead)."""

    def __init__(self, cache, num_layers: int):
        self.cache, self.num_layers = cache, num_layers

    @property
    def is_empty(self) -> bool:
        return self.cache.get_seq_length() == 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.cache.get_seq_length(layer_idx)

    def layer_states(self) -> list:
        return [_CacheLayer(self.cache, i) for i in range(self.num_layers)]

    def store(self, parts: list, new_tokens: int, batch_size: int) -> None:
        if any(rows is not None for rows, _ in parts):
            raise ValueError("attention states cover the whole batch; padded rows are masked, not regrouped")


class CausalSelfAttention(Mixer):
    """Multi-head causal self-attention with a fused QKV projection (GPT-2 layout).

    Args:
        d_model: model width; must be divisible by ``num_heads``.
        num_heads: number of attention heads.
        position_type: ``"learned"`` (positions are added to the embeddings outside this module)
            or ``"rotary"`` (rotary embeddings on q and k; head size must be even).
        rotary_base: base of the rotary frequencies.
        dropout: dropout on the attention probabilities during training.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        position_type: str = "learned",
        rotary_base: float = 10000.0,
        dropout: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if num_heads < 1 or d_model % num_heads != 0:
            raise ValueError(f"num_heads ({num_heads}) must be >= 1 and divide d_model ({d_model})")
        if position_type not in _POSITION_TYPES:
            raise ValueError(f"position_type must be one of {_POSITION_TYPES}, got {position_type!r}")
        if position_type == "rotary" and (d_model // num_heads) % 2:
            raise ValueError(f"rotary positions need an even head size, got d_model/num_heads={d_model // num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, d_model // num_heads
        self.position_type, self.rotary_base, self.dropout = position_type, rotary_base, dropout
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, **factory)
        self.out_proj = nn.Linear(d_model, d_model, **factory)

    def project(self, x: Tensor, positions: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D) -> q, k, v each (B, H, T, head_dim); rotary needs ``positions`` (B, T) or (T,)."""
        B, T, _ = x.shape
        qkv = self.qkv_proj(x).view(B, T, 3, self.num_heads, self.head_dim)  # (B, T, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, d)
        if self.position_type == "rotary":
            if positions is None:
                positions = torch.arange(T, device=x.device)
            q = rotary_embed(q, positions, self.rotary_base)
            k = rotary_embed(k, positions, self.rotary_base)
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Attention of q (B, H, Tq, d) over k, v (B, H, Tk, d), then the output projection -> (B, Tq, D).

        ``mask`` as built by :func:`causal_mask`; None means plain causal with Tq == Tk.
        """
        B, H, Tq, d = q.shape
        if mask is None and Tq != k.shape[2]:
            mask = causal_mask(Tq, k.shape[2], device=q.device)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=mask is None)
        return self.out_proj(y.transpose(1, 2).reshape(B, Tq, H * d))  # (B, Tq, D)

    # ------------------------------------------------------------------ the mixer contract
    has_state = True
    masks_padding = True

    def forward(self, x: Tensor, ctx: Optional[MixContext] = None) -> Tensor:
        """Parallel mode: x (B, T, D) -> (B, T, D); ``ctx`` gives positions (default 0..T-1) and
        the padding mask (default plain causal)."""
        ctx = ctx or MixContext()
        q, k, v = self.project(x, ctx.positions)  # (B, H, T, d) each
        return self.attend(q, k, v, ctx.mask)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> KVState:
        """No keys or values yet (their batch size is fixed by the first update)."""
        return KVState()

    def prefill(self, x: Tensor, state=None, ctx: Optional[MixContext] = None) -> tuple[Tensor, object]:
        """x (B, T, D) after the positions in ``state`` -> (y (B, T, D), state with x's keys and values).

        Positions default to past .. past+T-1; ``ctx.mask`` as :func:`causal_mask` builds it for
        T queries over past+T keys (None: plain causal).
        """
        state = KVState() if state is None else state
        ctx = ctx or MixContext()
        positions = ctx.positions
        if positions is None:
            past = state.get_seq_length()
            positions = torch.arange(past, past + x.shape[1], device=x.device)  # (T,)
        q, k, v = self.project(x, positions)  # (B, H, T, d) each
        k, v = state.update(k, v)  # (B, H, past+T, d)
        return self.attend(q, k, v, ctx.mask), state

    def step(self, x_t: Tensor, state, ctx: Optional[MixContext] = None) -> tuple[Tensor, object]:
        """One position: x_t (B, D) -> (B, D); a prefill of length 1."""
        y, state = self.prefill(x_t.unsqueeze(1), state, ctx)  # (B, 1, D)
        return y[:, 0], state

    @property
    def cache_type(self) -> type:
        return Cache

    def new_cache(self, config) -> DynamicCache:
        """transformers' ``DynamicCache``: what ``generate`` and the benchmarks expect of attention."""
        return DynamicCache(config=config)

    @classmethod
    def cache_layers(cls, cache: Cache, num_layers: int) -> KVCacheLayers:
        return KVCacheLayers(cache, num_layers)

    # ------------------------------------------------------------------ config seam
    @classmethod
    def check_config(cls, config) -> None:
        """``num_attention_heads`` (divides the width; even head size for rotary), the position
        type and the rotary base."""
        check = ConfigCheck(config)
        check.need_int("num_attention_heads")
        if config.hidden_size % config.num_attention_heads:
            check.fail("num_attention_heads", f"must divide hidden_size={config.hidden_size}")
        check.need_choice("position_embedding_type", _POSITION_TYPES)
        if config.position_embedding_type == "rotary" and (config.hidden_size // config.num_attention_heads) % 2:
            check.fail("num_attention_heads", "must leave an even head size (hidden_size / heads) for rotary")
        check.need_positive("rotary_base")

    @classmethod
    def from_config(cls, config, device=None) -> "CausalSelfAttention":
        return cls(
            config.hidden_size,
            config.num_attention_heads,
            position_type=config.position_embedding_type,
            rotary_base=config.rotary_base,
            dropout=config.mixer_dropout,
            device=device,
        )

    @classmethod
    def learned_positions(cls, config) -> bool:
        return config.position_embedding_type == "learned"

    @classmethod
    def context(cls, attention_mask, position_ids, past: int, T: int, device=None) -> MixContext:
        """Positions and mask of T new tokens after ``past``: left-padded rows count positions from
        their first real token and no real query sees a padded key."""
        pad = None
        if attention_mask is not None and not bool(attention_mask.all()):
            pad = attention_mask
            if pad.shape[1] != past + T:
                raise ValueError(f"attention_mask must cover past and new tokens ({past + T}), got {pad.shape[1]}")
        if position_ids is None:
            if pad is not None:
                position_ids = (pad.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]  # (B, T)
            else:
                position_ids = torch.arange(past, past + T, device=device).unsqueeze(0)  # (1, T)
        return MixContext(positions=position_ids, mask=causal_mask(T, past + T, pad, device=device))
