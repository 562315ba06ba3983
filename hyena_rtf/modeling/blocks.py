"""Pre-norm residual block shared by every mixer: LN -> mixer -> residual, LN -> MLP -> residual.

The same block wraps the Hyena-RTF operator, the implicit-filter Hyena operator and causal
attention, so the three models differ only in the mixer (DESIGN.md section 5).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MLP", "Block"]


class MLP(nn.Module):
    """fc1 (D -> d_inner) -> GELU (tanh approximation, as GPT-2) -> fc2 (d_inner -> D)."""

    def __init__(self, d_model: int, d_inner: int, device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_inner, device=device, dtype=dtype)
        self.fc2 = nn.Linear(d_inner, d_model, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """One pre-norm block around ``mixer``.

    Args:
        d_model: model width.
        mixer: module mapping (B, T, D) -> (B, T, D) causally.
        d_inner: MLP width.
        eps: LayerNorm epsilon.
        resid_dropout: dropout on the output of each residual branch.

    The residual stream keeps the dtype it comes in with (fp32 when the backbone keeps residuals
    in fp32); the norms see it cast to their own dtype.
    """

    def __init__(self, d_model: int, mixer: nn.Module, d_inner: int, eps: float = 1e-5, resid_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(d_model, eps=eps)
        self.mlp = MLP(d_model, d_inner)
        self.dropout = nn.Dropout(resid_dropout)

    def forward(self, x: Tensor, mix: Optional[Callable[[nn.Module, Tensor], Tensor]] = None) -> Tensor:
        """x (B, T, D) residual stream -> (B, T, D).

        ``mix(mixer, h)`` replaces the plain ``mixer(h)`` call; the backbone uses it to thread
        decoding state (prefill/step, key-value caches) through the mixer.
        """
        h = self.norm1(x.to(self.norm1.weight.dtype))  # (B, T, D)
        h = self.mixer(h) if mix is None else mix(self.mixer, h)
        x = x + self.dropout(h).to(x.dtype)
        h = self.mlp(self.norm2(x.to(self.norm2.weight.dtype)))
        return x + self.dropout(h).to(x.dtype)
