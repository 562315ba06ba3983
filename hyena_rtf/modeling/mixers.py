"""The registry of mixers: the config's ``mixer`` names mapped to mixer classes, in one place.

Every Hyena mixer name (one per long filter, :data:`~.filters.MIXER_FILTERS`) maps to the Hyena
operator, which reads its filter from that table; ``"attention"`` maps to causal self-attention.
The backbone, the config validation and the caches go through this table and the
:class:`~.mixer.Mixer` contract, so a new mixer is one class and one line here.
"""

from __future__ import annotations

import torch

from .attention import CausalSelfAttention
from .filters import MIXER_FILTERS
from .hyena import HyenaOperator
from .mixer import Mixer

__all__ = ["MIXER_CLASSES", "build_mixer", "mixer_class"]

MIXER_CLASSES: dict[str, type[Mixer]] = {
    **{name: HyenaOperator for name in MIXER_FILTERS},
    "attention": CausalSelfAttention,
}


def mixer_class(name: str) -> type[Mixer]:
    """The mixer class registered as ``name``."""
    if name not in MIXER_CLASSES:
        raise ValueError(f"mixer must be one of {tuple(MIXER_CLASSES)}, got {name!r}")
    return MIXER_CLASSES[name]


def build_mixer(config) -> Mixer:
    """The sequence mixer of one block, as chosen by ``config.mixer``."""
    # from_pretrained builds models under a meta-device context and patches torch.linspace to
    # default to CPU; naming the context's device explicitly keeps every tensor on one device.
    return mixer_class(config.mixer).from_config(config, device=torch.get_default_device())
