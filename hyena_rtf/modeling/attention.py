"""Causal multi-head self-attention, the Transformer baseline mixer.

The fast path is ``torch.nn.functional.scaled_dot_product_attention``; :func:`attention_reference`
beside it is the obvious softmax(QK^T / sqrt(d)) V. Positions are either learned absolute
embeddings (added to the token embeddings by the backbone, nothing happens here) or rotary
embeddings applied to queries and keys.

Decoding state is the pair of all past keys and values. :meth:`CausalSelfAttention.forward` takes
and returns it as plain tensors (state in / state out); the split into :meth:`project` and
:meth:`attend` lets a caller keep the keys and values in a cache object of its own instead.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CausalSelfAttention", "attention_reference", "causal_mask", "rotary_embed"]

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


class CausalSelfAttention(nn.Module):
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

    def forward(
        self,
        x: Tensor,
        positions: Optional[Tensor] = None,
        past: Optional[tuple[Tensor, Tensor]] = None,
        key_padding: Optional[Tensor] = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, T, D) -> (y (B, T, D), (keys, values) including x's).

        past: keys and values (B, H, Tp, d) of earlier positions, or None. ``positions`` default
        to Tp .. Tp+T-1. key_padding: (B, Tp+T), 1 for real tokens and 0 for padding.
        """
        past_len = 0 if past is None else past[0].shape[2]
        if positions is None:
            positions = torch.arange(past_len, past_len + x.shape[1], device=x.device)
        q, k, v = self.project(x, positions)
        if past is not None:
            k = torch.cat([past[0], k], 2)  # (B, H, Tp+T, d)
            v = torch.cat([past[1], v], 2)
        mask = causal_mask(q.shape[2], k.shape[2], key_padding, device=x.device)
        return self.attend(q, k, v, mask), (k, v)
