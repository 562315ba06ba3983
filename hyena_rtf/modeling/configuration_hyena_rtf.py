"""HyenaRTFConfig: the Hugging Face configuration of the Hyena-RTF decoder LM and its baselines.

One backbone, four mixers (``mixer``): ``"hyena_rtf"`` (Hyena operator with RTF long filters,
the default), ``"hyena"`` (Hyena's implicit MLP filters), ``"hyena_s4d"`` (diagonal SSM filters)
and ``"attention"`` (causal multi-head attention). The mixers are named in one place, :mod:`.mixers`
(the Hyena mixers' filters in :mod:`.filters`); each mixer validates its own fields
(``Mixer.check_config``) and the Hyena operator lets its filter validate the filter's
(``LongFilter.check_config``). Field names follow the transformers conventions (``hidden_size``,
``num_hidden_layers``, ``max_position_embeddings``...) so generic tooling (``generate``,
lm-eval, ``AutoModelForCausalLM``) reads them; ``max_position_embeddings`` is the Hyena filter
length ``l_max`` and therefore the context length of parallel mode.
"""

from __future__ import annotations

from dataclasses import field

from transformers import PreTrainedConfig

from .long_filter import ConfigCheck
from .mixers import MIXER_CLASSES

__all__ = ["HyenaRTFConfig", "MIXERS"]

MIXERS = tuple(MIXER_CLASSES)
# Fields whose default changed between releases (or may): saved explicitly in every config.json.
_ALWAYS_SAVED = ("mixer", "rtf_constraint", "rtf_init", "rtf_decay", "rtf_h0_init")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class HyenaRTFConfig(PreTrainedConfig):
    r"""Configuration of :class:`HyenaRTFForCausalLM`.

    Backbone:
        vocab_size: number of tokens; the embedding is padded up to a multiple of
            ``pad_vocab_size_multiple`` (``padded_vocab_size``), but logits cover ``vocab_size`` only.
        hidden_size: model width D.
        num_hidden_layers: number of blocks.
        intermediate_size: MLP width (default 4 * hidden_size).
        max_position_embeddings: l_max, the longest sequence of parallel (training) mode; the
            Hyena filter length and the table size of learned positions.
        mixer: ``"hyena_rtf"`` | ``"hyena"`` | ``"hyena_s4d"`` | ``"attention"``.
        embed_dropout, resid_dropout: dropout on the embeddings and on each residual branch.
        mixer_dropout: Hyena's dropout on the gated input of each long convolution, or the
            attention-probability dropout of the attention mixer.
        layer_norm_epsilon: LayerNorm epsilon.
        initializer_range: std of the GPT-2 style normal init (residual output projections are
            further scaled by 1/sqrt(2 * num_hidden_layers)).
        residual_in_fp32: keep the residual stream in fp32 under low-precision weights/autocast.
        pad_vocab_size_multiple: pad the embedding rows to a multiple of this (8 = tensor-core friendly).
        tie_word_embeddings: share the input embedding with the LM head.

    Hyena (``hyena_rtf``, ``hyena`` and ``hyena_s4d``):
        hyena_order: number of gates; ``hyena_order - 1`` long convolutions per layer.
        short_filter_order: width of the causal depthwise short convolution.
        output_rank: None for a Linear(D, D) output projection; r for RMSNorm -> Linear(D, r) ->
            GELU -> Linear(r, D) (the paper's low-rank head).
        output_norm_eps: epsilon of that head's RMSNorm (None: torch's default, the machine epsilon
            of the input dtype; the RTF paper's code uses 1e-6).
        state_size: RTF order N (``hyena_rtf``; must be < max_position_embeddings), or the real
            state size of each S4D channel (``hyena_s4d``; even: N/2 complex conjugate pairs).
        rtf_num_a: number of distinct RTF denominators per filter bank (None: one per channel).
        rtf_init: ``"xavier"`` | ``"montel"`` | ``"zeros"``.
        rtf_constraint: ``"reflection"`` (reflection coefficients: poles strictly inside the unit
            circle for any parameters, every stable filter reachable) | ``"l1_montel"`` (sum|a| < 1:
            stable, a subset of the stable filters) | ``"none"``.
        rtf_h0_init: ``"one"`` | ``"normal"`` | None (the init's own: one for zeros, else normal).
        rtf_decay: None or ``[fast, slow]``: start every denominator as one real pole with the
            implicit filter's graded time scales (fractions of max_position_embeddings).
        filter_dropout: dropout on the long-filter kernel taps.
        implicit_filter_order, implicit_emb_dim: MLP width and positional-encoding size of the
            implicit filter (``hyena``).
        implicit_num_inner_mlps, implicit_w: hidden layers after the first, and the initial
            frequency of the sine activations, of the implicit filter's MLP.
        implicit_modulate, implicit_shift: whether the implicit kernel is multiplied by its
            exponential window, and the constant added to that window.
        implicit_decay_order: ``"fast_first"`` (channel 0 has the fastest window) or
            ``"slow_first"`` (safari's and HyenaDNA's order, for converted checkpoints).
        s4d_dt_min, s4d_dt_max: range of the log-uniform initial S4D step sizes (``hyena_s4d``).

    Attention (``attention``):
        num_attention_heads: heads; must divide hidden_size.
        position_embedding_type: ``"learned"`` (absolute table of max_position_embeddings rows;
            generation cannot go past it) | ``"rotary"``.
        rotary_base: base of the rotary frequencies.
    """

    model_type = "hyena_rtf"

    vocab_size: int = 50257
    hidden_size: int = 768
    num_hidden_layers: int = 12
    intermediate_size: int | None = None
    max_position_embeddings: int = 1024
    mixer: str = "hyena_rtf"
    hyena_order: int = 2
    short_filter_order: int = 3
    output_rank: int | None = None
    output_norm_eps: float | None = None
    state_size: int = 64
    rtf_num_a: int | None = None
    rtf_init: str = "xavier"
    rtf_constraint: str = "reflection"
    rtf_h0_init: str | None = None
    rtf_decay: list[float] | None = field(default_factory=lambda: [0.3, 1.5, 0.5])
    filter_dropout: float = 0.0
    implicit_filter_order: int = 64
    implicit_emb_dim: int = 3
    implicit_num_inner_mlps: int = 2
    implicit_w: float = 1.0
    implicit_modulate: bool = True
    implicit_shift: float = 0.0
    implicit_decay_order: str = "fast_first"
    s4d_dt_min: float = 1e-3
    s4d_dt_max: float = 1e-1
    num_attention_heads: int = 12
    position_embedding_type: str = "learned"
    rotary_base: float = 10000.0
    embed_dropout: float = 0.0
    resid_dropout: float = 0.0
    mixer_dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    residual_in_fp32: bool = True
    pad_vocab_size_multiple: int = 8
    tie_word_embeddings: bool = True
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None and _is_int(self.hidden_size):
            self.intermediate_size = 4 * self.hidden_size
        super().__post_init__(**kwargs)
        self.check_values()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """Read a saved config. A config.json saved before ``rtf_constraint`` defaulted to
        ``"reflection"`` omitted it when it was the then-default ``"l1_montel"`` (transformers saves
        the difference from the defaults); such a file still means l1_montel."""
        if config_dict.get("model_type", cls.model_type) == cls.model_type and "rtf_constraint" not in config_dict:
            config_dict = {**config_dict, "rtf_constraint": "l1_montel", "rtf_decay": None}
        return super().from_dict(config_dict, **kwargs)

    def to_diff_dict(self) -> dict:
        # Always written, defaults or not, so that a saved model keeps its meaning if a default changes.
        return {**super().to_diff_dict(), **{k: getattr(self, k) for k in _ALWAYS_SAVED}}

    @property
    def padded_vocab_size(self) -> int:
        """Embedding rows: vocab_size rounded up to a multiple of pad_vocab_size_multiple."""
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    def check_values(self) -> None:
        """Raise ValueError naming the first field with an unusable value."""
        check = ConfigCheck(self)
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "pad_vocab_size_multiple"):
            check.need_int(name)
        check.need_int("max_position_embeddings", low=2)
        check.need_choice("mixer", MIXERS)
        for name in ("embed_dropout", "resid_dropout", "mixer_dropout", "filter_dropout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                check.fail(name, "must be a probability in [0, 1)")
        check.need_positive("layer_norm_epsilon")
        check.need_positive("initializer_range")
        MIXER_CLASSES[self.mixer].check_config(self)  # the mixer's own fields
