"""Named model sizes for each mixer, as HyenaRTFConfig keyword arguments.

``<mixer>-125m`` is the paper's WikiText-103 setting (RTF paper Table 13 and its code): D=768,
12 layers, l_max 1024, order 2, RTF state 64, low-rank output head of rank 384, dropout 0.25 on
embeddings, residual branches and the mixer, GPT-2 vocabulary padded to 50264, tied embeddings.
The RTF filters use this project's defaults (xavier numerator, reflection constraint, graded
decay; BENCHMARKS.md section 4); the paper's xavier + l1_montel is
``preset_config("hyena_rtf-125m", rtf_constraint="l1_montel", rtf_decay=None)`` (and
``experiment=wt103_hyena_rtf_paper``). The 125m presets differ only in the mixer, so a perplexity
or speed table compares mixers and nothing else:

- ``hyena_rtf-125m``: 124,972,032 parameters; with the paper's l1_montel (one scale per
  denominator) 124,981,248, the paper's ~124.98M exactly.
- ``hyena-125m``: the implicit filter of width 64 (safari's default) with the same low-rank head
  (the RTF repository's own Hyena baseline shares that head but, through a commented-out argument,
  ends up with width 16; its operator dropout is 0 where this preset keeps 0.25 for equality).
- ``hyena_s4d-125m``: diagonal SSM filters of state size 64 (32 complex conjugate pairs),
  S4D-Lin init, step sizes log-uniform in [1e-3, 1e-1]: 124,981,248 parameters, like the paper's
  RTF (per channel: dt 1 + A 2*32 + C 2*32 + D 1 = 130 = RTF's a 64 + b 64 + h0 1 + scale 1).
- ``attention-125m``: GPT-2-small style attention (12 heads, learned absolute positions).

``small`` (D=256, 4 layers, l_max 512) trains on a CPU in minutes; ``tiny`` (D=64, 2 layers,
l_max 128) is for tests and smoke runs.
"""

from __future__ import annotations

from .configuration_hyena_rtf import MIXERS, HyenaRTFConfig

__all__ = ["PRESETS", "preset_config"]

_SIZES = {
    "125m": dict(
        vocab_size=50257,
        hidden_size=768,
        num_hidden_layers=12,
        intermediate_size=3072,
        max_position_embeddings=1024,
        state_size=64,
        output_rank=384,
        num_attention_heads=12,
        embed_dropout=0.25,
        resid_dropout=0.25,
        mixer_dropout=0.25,
    ),
    "small": dict(
        vocab_size=50257,
        hidden_size=256,
        num_hidden_layers=4,
        intermediate_size=1024,
        max_position_embeddings=512,
        state_size=32,
        output_rank=128,
        num_attention_heads=4,
        embed_dropout=0.1,
        resid_dropout=0.1,
        mixer_dropout=0.1,
    ),
    "tiny": dict(
        vocab_size=50257,
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=256,
        max_position_embeddings=128,
        state_size=8,
        output_rank=32,
        num_attention_heads=4,
        embed_dropout=0.0,
        resid_dropout=0.0,
        mixer_dropout=0.0,
    ),
}

_COMMON = dict(
    hyena_order=2,
    short_filter_order=3,
    rtf_init="xavier",
    rtf_constraint="reflection",
    rtf_num_a=None,
    rtf_h0_init=None,
    rtf_decay=[0.3, 1.5, 0.5],
    implicit_filter_order=64,
    implicit_emb_dim=3,
    position_embedding_type="learned",
    residual_in_fp32=True,
    pad_vocab_size_multiple=8,
    tie_word_embeddings=True,
    layer_norm_epsilon=1e-5,
    initializer_range=0.02,
)

# Fields only one mixer reads (the config defaults, spelled out so the YAML files show them).
_MIXER_FIELDS = {"hyena_s4d": dict(s4d_dt_min=1e-3, s4d_dt_max=1e-1)}

PRESETS: dict[str, dict] = {
    f"{mixer}-{size}": {**_COMMON, **kwargs, **_MIXER_FIELDS.get(mixer, {}), "mixer": mixer}
    for mixer in MIXERS
    for size, kwargs in _SIZES.items()
}


def preset_config(name: str, **overrides) -> HyenaRTFConfig:
    """HyenaRTFConfig of preset ``name`` (see ``PRESETS``), with ``overrides`` applied on top."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return HyenaRTFConfig(**{**PRESETS[name], **overrides})
