"""Pre-norm residual block shared by every mixer: LN -> mixer -> residual, LN -> MLP -> residual.

The same block wraps the Hyena-RTF operator, the implicit-filter Hyena operator and causal
attention, so the three models differ only in the mixer (DESIGN.md section 5).
"""

from __future__ import annotations

from typing import Any, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from .mixer import Mixer, MixContext

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
        mixer: a :class:`~.mixer.Mixer`, mapping (B, T, D) -> (B, T, D) causally.
        d_inner: MLP width.
        eps: LayerNorm epsilon.
        resid_dropout: dropout on the output of each residual branch.

    The residual stream keeps the dtype it comes in with (fp32 when the backbone keeps residuals
    in fp32); the norms see it cast to their own dtype.
    """

    def __init__(self, d_model: int, mixer: Mixer, d_inner: int, eps: float = 1e-5, resid_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(d_model, eps=eps)
        self.mlp = MLP(d_model, d_inner)
        self.dropout = nn.Dropout(resid_dropout)

    def forward(self, x: Tensor, ctx: Optional[MixContext] = None) -> Tensor:
        """Parallel mode: x (B, T, D) residual stream -> (B, T, D)."""
        return self._after_mixer(x, self.mixer(self._norm_in(x), ctx))

    def prefill(self, x: Tensor, state: Any, ctx: Optional[MixContext] = None) -> tuple[Tensor, Any]:
        """x (B, T, D) after the mixer's decoding ``state`` -> (B, T, D) and the mixer's new state."""
        h, state = self.mixer.prefill(self._norm_in(x), state, ctx)  # (B, T, D)
        return self._after_mixer(x, h), state

    def step(self, x: Tensor, state: Any, ctx: Optional[MixContext] = None) -> tuple[Tensor, Any]:
        """One position: x (B, 1, D) -> (B, 1, D) and the mixer's new state."""
        h, state = self.mixer.step(self._norm_in(x)[:, 0], state, ctx)  # (B, D)
        return self._after_mixer(x, h.unsqueeze(1)), state

    def _norm_in(self, x: Tensor) -> Tensor:
        return self.norm1(x.to(self.norm1.weight.dtype))  # (B, T, D)

    def _after_mixer(self, x: Tensor, h: Tensor) -> Tensor:
        """Add the mixer output h (B, T, D) to the stream x, then the MLP branch."""
        x = x + self.dropout(h).to(x.dtype)
        h = self.mlp(self.norm2(x.to(self.norm2.weight.dtype)))
        return x + self.dropout(h).to(x.dtype)
