"""HyenaRTFForCausalLM: a GPT-2 style decoder LM whose mixer is Hyena (RTF, S4D or implicit filters) or attention.

Backbone (identical for every mixer): token embedding [+ learned positions for attention
with ``position_embedding_type="learned"``] -> embedding dropout -> blocks of
(LN -> mixer -> residual, LN -> MLP -> residual) -> final LN -> LM head tied to the embedding.
GPT-2 init: every Linear and Embedding N(0, initializer_range), biases zero, residual output
projections (``out_proj``, ``fc2``) scaled by 1/sqrt(2 * num_hidden_layers). The long filters
initialise themselves (the implicit filter's MLP also N(0, initializer_range), as in safari), from
a generator of their own (``long_filter.build_filter``), and the short convolution keeps its own
initialisation: for one seed, models that differ only in their long filters share every other
initial weight.

Vocabulary: the embedding has ``padded_vocab_size`` rows (a multiple of 8) but logits are
computed against the first ``vocab_size`` rows only, so padded entries are never scored, never
sampled and never receive probability mass; ``logits.shape[-1] == vocab_size``.

Decoding (``use_cache=True``, which ``generate`` passes) goes through the mixer contract
(:mod:`.mixer`): the backbone asks the mixers for their cache and per-layer states, never their names:
- Hyena mixers with recurrent filters (``hyena_rtf``, ``hyena_s4d``): a :class:`~.cache.HyenaCache`,
  one recurrent state per layer. The prompt is prefilled in parallel (chunks of l_max), then each
  token is one O(state) step per layer; the recurrence runs for any length, past l_max too.
- ``attention``: transformers' ``DynamicCache``, whose layers are the per-layer key-value states.
- Hyena mixers without a finite state (``hyena``, implicit filters): a
  :class:`~.cache.RecomputeCache`; every new token re-runs the whole parallel model over the last
  l_max positions. Slow by construction: the baseline that recurrent decoding is measured against.
The Hyena caches are classes of this package (``_supports_default_dynamic_cache`` returns False, so
``generate`` leaves cache creation to ``forward``) rather than transformers' ``LinearAttentionLayer``:
the mixers need three kinds of state, one code path serves ``generate`` and direct calls
alike, and ``generate`` cannot continue from a cache made only of linear-attention layers (its
``get_seq_length`` raises there).
Left-padded batches are exact for every mixer: attention masks padded keys (``Mixer.masks_padding``);
for the Hyena mixers the backbone runs each group of rows from its first real token (a padded
position would otherwise leak into the recurrent state). Padding elsewhere than on the left is
ignored by the Hyena mixers, which is harmless for right padding because the models are causal.

Without a cache (training, scoring) the model runs in parallel mode and accepts at most
``max_position_embeddings`` (= l_max) positions, the length of the trained long filters.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .blocks import Block
from .cache import HyenaCache, RecomputeCache
from .configuration_hyena_rtf import HyenaRTFConfig
from .long_filter import LongFilter, prepare_parallel
from .mixer import MixContext
from .mixers import build_mixer, mixer_class

__all__ = [
    "CACHE_FIELD",
    "HyenaRTFPreTrainedModel",
    "HyenaRTFModel",
    "HyenaRTFForCausalLM",
    "build_mixer",
    "register_auto_classes",
]

_RESIDUAL_PROJECTIONS = ("out_proj", "fc2")

# transformers 5.24 renamed the decoding cache from ``past_key_values`` to ``cache``: generate()
# passes it to forward() under the new keyword and reads it back from the output field of that
# name (5.23 and earlier use ``past_key_values`` for both). forward() accepts either keyword and the
# outputs fill whichever field the installed output classes declare, so generate() gets its cache
# back on every version without going through transformers' deprecation shims (which warn once
# and are scheduled for removal).
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _one_cache(cache, past_key_values):
    """The decoding cache given under either keyword (they are two names for one argument)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the decoding cache once: as cache= or as past_key_values=, not both")
    return cache if cache is not None else past_key_values


def _leading_padding(real: Optional[Tensor]) -> Optional[Tensor]:
    """Index of the first real token of each row (B,), or None when no row starts with padding."""
    if real is None:
        return None
    starts = (real.long().cumsum(-1) == 0).sum(-1)  # (B,)
    if not bool(starts.any()):
        return None
    if bool((starts == real.shape[1]).any()):
        raise ValueError("attention_mask has a row without any real token (all zeros); drop that row")
    return starts


class HyenaRTFPreTrainedModel(PreTrainedModel):
    """Weight init, optimizer parameter groups and the Hugging Face class attributes."""

    config_class = HyenaRTFConfig
    config: HyenaRTFConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]
    # Blocks assisted decoding, which would need to roll a recurrent state back.
    _is_stateful = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if getattr(module, "_long_filter_part", False):
            return  # a layer inside a long filter: the filter initialised it (build_filter)
        if isinstance(module, nn.Linear):
            if getattr(module, "_is_residual_projection", False):
                std = std / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            if module.weight is not None:
                init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, LongFilter):
            # The filter's parameters were drawn when it was built, from its own generator
            # (build_filter), so that the weights around it do not depend on which filter it is.
            # Buffers derived from constructor arguments (the implicit filter's time grid and decay
            # rates) are left uninitialised by from_pretrained; the filter recomputes them.
            module.init_buffers()

    def param_groups(
        self,
        weight_decay: float = 0.0,
        filter_lr: Optional[float] = None,
        filter_weight_decay: float = 0.0,
        decay_norm_and_bias: bool = True,
        filter_pole_lr: Optional[float] = None,
    ) -> list[dict]:
        """Optimizer parameter groups (dicts for ``torch.optim``), empty groups left out.

        - ``"filter"``: every parameter of the long filters (every :class:`~.long_filter.LongFilter`:
          RTF coefficients, feed-through and montel scale; S4D step sizes, A, C and D; implicit
          positional encoding and MLP) with ``filter_lr`` (None: the optimizer's lr) and
          ``filter_weight_decay`` (S4 practice: lower lr and no decay for the SSM parameters).
        - ``"filter_poles"``: when ``filter_pole_lr`` is given, the filters' pole parameters
          (``LongFilter.pole_parameters``: RTF denominators, S4D step sizes and A) leave the
          filter group for one of their own with that lr (same weight decay).
        - ``"decay"``: the other parameters with ``weight_decay``; with
          ``decay_norm_and_bias=True`` (the paper: decay every non-filter parameter) that is all of
          them, otherwise only tensors with >= 2 dimensions (matrices, embeddings, convolutions).
        - ``"no_decay"``: biases and norm weights when ``decay_norm_and_bias=False``.
        """
        filters = [m for m in self.modules() if isinstance(m, LongFilter)]
        filter_params = {id(p) for m in filters for p in m.parameters()}
        pole_params = {id(p) for m in filters for p in m.pole_parameters()} if filter_pole_lr is not None else set()
        groups = {"filter": [], "filter_poles": [], "decay": [], "no_decay": []}
        for p in self.parameters():  # shared (tied) parameters are yielded once
            if not p.requires_grad:
                continue
            if id(p) in pole_params:
                groups["filter_poles"].append(p)
            elif id(p) in filter_params:
                groups["filter"].append(p)
            elif decay_norm_and_bias or p.dim() >= 2:
                groups["decay"].append(p)
            else:
                groups["no_decay"].append(p)
        settings = {
            "filter": {"weight_decay": filter_weight_decay, **({} if filter_lr is None else {"lr": filter_lr})},
            "filter_poles": {"weight_decay": filter_weight_decay, "lr": filter_pole_lr},
            "decay": {"weight_decay": weight_decay},
            "no_decay": {"weight_decay": 0.0},
        }
        return [{"name": k, "params": v, **settings[k]} for k, v in groups.items() if v]


class HyenaRTFModel(HyenaRTFPreTrainedModel):
    """The backbone without the LM head: embeddings, blocks, final norm.

    It knows its mixers only through the contract of :mod:`.mixer` (``mixer_class`` is the class
    :mod:`.mixers` registers under ``config.mixer``); each forward takes one of three paths, chosen
    by the cache and the mixers' capabilities, never by the mixer's name: parallel (no cache),
    decoding through per-layer states (``has_state``), or recomputing the parallel model over a
    sliding window (mixers without a state).
    """

    def __init__(self, config: HyenaRTFConfig):
        super().__init__(config)
        config.check_values()
        d = config.hidden_size
        self.mixer_class = mixer_class(config.mixer)
        self.embed_tokens = nn.Embedding(config.padded_vocab_size, d)
        learned = self.mixer_class.learned_positions(config)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, d) if learned else None
        self.embed_dropout = nn.Dropout(config.embed_dropout)
        self.layers = nn.ModuleList(
            Block(d, build_mixer(config), config.intermediate_size, config.layer_norm_epsilon, config.resid_dropout)
            for _ in range(config.num_hidden_layers)
        )
        self.norm_f = nn.LayerNorm(d, eps=config.layer_norm_epsilon)
        for name, module in self.layers.named_modules():
            if name.rsplit(".", 1)[-1] in _RESIDUAL_PROJECTIONS and isinstance(module, nn.Linear):
                module._is_residual_projection = True
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @property
    def has_recurrence(self) -> bool:
        """True when every mixer has a decoding state of fixed size (Hyena with recurrent filters)."""
        return all(block.mixer.has_recurrence for block in self.layers)

    @property
    def has_state(self) -> bool:
        """True when every mixer decodes through a per-layer state (prefill / step)."""
        return all(block.mixer.has_state for block in self.layers)

    def new_cache(self, batch_size: Optional[int] = None) -> Union[HyenaCache, RecomputeCache, Cache]:
        """An empty decoding cache of the kind this model's mixers use (see the module docstring)."""
        return self.layers[0].mixer.new_cache(self.config)

    # ------------------------------------------------------------------ the block stack
    def _stream_in(self, x: Tensor) -> Tensor:
        x = self.embed_dropout(x)  # (B, T, D)
        return x.float() if self.config.residual_in_fp32 else x

    def _stream_out(self, x: Tensor) -> Tensor:
        return self.norm_f(x.to(self.norm_f.weight.dtype))  # (B, T, D)

    def _run_parallel(self, x: Tensor, ctx: Optional[MixContext], collect: bool):
        """x (B, T, D) embeddings -> (final hidden (B, T, D), per-layer hiddens or None)."""
        checkpointing = self.gradient_checkpointing and self.training
        if not checkpointing:
            # Per-forward filter work batched over all layers (not under activation checkpointing,
            # whose recomputation must see each block compute exactly what it computed before).
            prepare_parallel(self)
        x = self._stream_in(x)
        hiddens = [x] if collect else None
        for block in self.layers:
            x = self._gradient_checkpointing_func(block.__call__, x, ctx) if checkpointing else block(x, ctx)
            if collect:
                hiddens.append(x)
        return self._stream_out(x), hiddens

    def _run_decoding(self, x: Tensor, states: list, ctx: Optional[MixContext], collect: bool, step: bool):
        """Like ``_run_parallel`` from per-layer ``states`` (None: initial); ``step``: T == 1 through
        the mixers' one-token step. Returns (hidden, hiddens, new states)."""
        x = self._stream_in(x)
        hiddens = [x] if collect else None
        new_states = []
        for block, state in zip(self.layers, states):
            x, state = block.step(x, state, ctx) if step else block.prefill(x, state, ctx)  # (B, T, D)
            new_states.append(state)
            if collect:
                hiddens.append(x)
        return self._stream_out(x), hiddens, new_states

    def _run_grouped(self, x: Tensor, real: Optional[Tensor], run, collect: bool, regroup: bool = True):
        """``run(x_rows) -> (h, hiddens, states)`` over x (B, T, D), where every group of equally
        left-padded rows starts at its first real token (a padded position would otherwise enter
        a convolution or a state), unless the mixers mask padding themselves or not ``regroup``.
        Returns (h, hiddens, parts) with parts = [(rows or None, states)]."""
        regroup = regroup and not self.mixer_class.masks_padding
        starts = _leading_padding(real) if regroup else None
        if starts is None:
            h, hiddens, states = run(x)
            return h, hiddens, [(None, states)]
        B, T, _ = x.shape
        h = hiddens = None
        parts = []
        for start in starts.unique().tolist():
            rows = (starts == start).nonzero().squeeze(-1)
            h_sub, hid_sub, states = run(x[rows, start:])
            if h is None:
                h = h_sub.new_zeros(B, T, h_sub.shape[-1])
                hiddens = [t.new_zeros(B, T, t.shape[-1]) for t in hid_sub] if collect else None
            h[rows, start:] = h_sub
            for full, part in zip(hiddens or [], hid_sub or []):
                full[rows, start:] = part
            parts.append((rows, states))
        return h, hiddens, parts

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        past_key_values=None,
        inputs_embeds: Optional[Tensor] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        logits_to_keep: Union[int, Tensor] = 0,
        cache=None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """input_ids (B, T) or inputs_embeds (B, T, D) -> last_hidden_state (B, T, D).

        A cache is used when ``cache`` (or its older name ``past_key_values``) is given, or
        created when ``use_cache=True``; it is returned in the output field ``CACHE_FIELD``
        (``cache`` with transformers >= 5.24, ``past_key_values`` before).
        ``attention_mask`` (B, past+T): 1 = token, 0 = padding. ``logits_to_keep`` only matters
        for the implicit-filter recompute mode, where positions past the first l_max that are not
        kept are not computed (left as NaN).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        B, T = x.shape[:2]
        bad_mask = attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.shape[0] != B)
        if bad_mask or (attention_mask is not None and attention_mask.shape[1] < T):
            raise ValueError(f"attention_mask must have shape (B={B}, >= T={T}), got {tuple(attention_mask.shape)}")
        cache = _one_cache(cache, past_key_values)
        if cache is None and use_cache:
            cache = self.new_cache(B)
        collect = bool(output_hidden_states)
        if cache is None:
            h, hiddens = self._forward_parallel(x, attention_mask, position_ids, collect)
        else:
            expected = self.layers[0].mixer.cache_type
            if not isinstance(cache, expected):
                raise ValueError(
                    f"mixer {self.config.mixer!r} needs a {expected.__name__} as its cache, got {type(cache).__name__}"
                )
            if self.has_state:
                h, hiddens = self._forward_cached(x, attention_mask, position_ids, cache, collect)
            elif collect:
                mixer = self.config.mixer
                raise ValueError(f"output_hidden_states is not available in mixer {mixer!r} recompute decoding")
            else:
                h, hiddens = self._forward_recompute(x, attention_mask, cache, logits_to_keep), None
        return BaseModelOutputWithPast(
            last_hidden_state=h, hidden_states=tuple(hiddens) if collect else None, **{CACHE_FIELD: cache}
        )

    def _check_parallel_length(self, T: int) -> None:
        l_max = self.config.max_position_embeddings
        if T > l_max:
            hint = "pass use_cache=True to run it recurrently" if self.has_recurrence else "split it"
            raise ValueError(
                f"sequence length {T} exceeds max_position_embeddings={l_max}, "
                f"the filter length of parallel mode; {hint}"
            )

    def _context(self, x: Tensor, attention_mask, position_ids, past: int, parallel: bool):
        """(x (B, T, D) plus learned positions if the model has them, the mixers' ``ctx``)."""
        T = x.shape[1]
        ctx = self.mixer_class.context(attention_mask, position_ids, past, T, device=x.device)
        if self.embed_positions is not None:
            last = int(ctx.positions.max())
            if last >= self.config.max_position_embeddings:
                raise ValueError(
                    f"position {last} is past the learned position table "
                    f"(max_position_embeddings={self.config.max_position_embeddings}); "
                    "use position_embedding_type='rotary' to run longer sequences"
                )
            x = x + self.embed_positions(ctx.positions)  # (B, T, D)
        elif parallel:
            self._check_parallel_length(T)
        return x, ctx

    def _forward_parallel(self, x: Tensor, attention_mask, position_ids, collect: bool):
        """No cache: one parallel pass, at most l_max positions."""
        x, ctx = self._context(x, attention_mask, position_ids, 0, parallel=True)
        real = None if attention_mask is None else attention_mask[:, -x.shape[1] :].bool()  # (B, T)

        def run(rows_x: Tensor):
            return (*self._run_parallel(rows_x, ctx, collect), None)

        h, hiddens, _ = self._run_grouped(x, real, run, collect)
        return h, hiddens

    def _forward_cached(self, x: Tensor, attention_mask, position_ids, cache, collect: bool):
        """Decoding through per-layer states: a prompt (any length) is one prefill per layer, a
        single token after it one step; the states go back into ``cache``."""
        B, T = x.shape[:2]
        layers = self.mixer_class.cache_layers(cache, len(self.layers))
        fresh = layers.is_empty
        x, ctx = self._context(x, attention_mask, position_ids, layers.get_seq_length(), parallel=False)
        real = None if attention_mask is None else attention_mask[:, -T:].bool()  # (B, T)
        states = layers.layer_states()  # None where a layer has no state yet: its initial one

        def run(rows_x: Tensor):
            return self._run_decoding(rows_x, states, ctx, collect, step=T == 1 and not fresh)

        # Only an empty cache is prefilled row group by row group: later calls continue every row.
        h, hiddens, parts = self._run_grouped(x, real, run, collect, regroup=fresh)
        layers.store(parts, T, B)
        return h, hiddens

    def _forward_recompute(self, x: Tensor, attention_mask, cache: RecomputeCache, logits_to_keep) -> Tensor:
        """Mixers without a state: each new position scored by a parallel pass over the (at most)
        l_max positions ending there (the cache keeps that window of inputs)."""
        B, T = x.shape[:2]
        ones = torch.ones(B, T, dtype=torch.bool, device=x.device)
        real = ones if attention_mask is None else attention_mask[:, -T:].bool()  # (B, T)

        def parallel(window: Tensor, window_real: Tensor) -> Tensor:
            return self._forward_parallel(window, window_real, None, False)[0]  # (B, n, D)

        return cache.decode(x, real, parallel, logits_to_keep)


class HyenaRTFForCausalLM(HyenaRTFPreTrainedModel, GenerationMixin):
    """Decoder LM: :class:`HyenaRTFModel` plus a (tied) LM head; works with ``generate``."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: HyenaRTFConfig):
        super().__init__(config)
        self.model = HyenaRTFModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not build a DynamicCache for us: the Hyena mixers keep their own state
        # (HyenaCache / RecomputeCache); forward() creates the right cache on the first call.
        return False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def new_cache(self, batch_size: Optional[int] = None):
        """An empty decoding cache for this model's mixer."""
        return self.model.new_cache(batch_size)

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        past_key_values=None,
        inputs_embeds: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        logits_to_keep: Union[int, Tensor] = 0,
        cache=None,
        **kwargs,
    ) -> Union[CausalLMOutputWithPast, tuple]:
        """Logits (B, T, vocab_size) and, with ``labels`` (B, T), the mean next-token cross-entropy.

        Labels are shifted inside (position t predicts labels[t+1]); -100 is ignored. A cache is
        only built when ``use_cache=True`` (as ``generate`` passes) or passed in.
        ``logits_to_keep=k > 0`` computes logits for the last k positions only.
        """
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_one_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            logits_to_keep=logits_to_keep,
        )
        h = out.last_hidden_state  # (B, T, D)
        if isinstance(logits_to_keep, int):
            h = h[:, -logits_to_keep:] if logits_to_keep > 0 else h
        else:
            h = h[:, logits_to_keep]
        logits = F.linear(h, self.lm_head.weight[: self.config.vocab_size])  # (B, T, V): padded rows never scored
        loss = None
        if labels is not None:
            extra = {k: kwargs[k] for k in ("num_items_in_batch",) if k in kwargs}
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **extra)
        result = CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=out.hidden_states, **{CACHE_FIELD: getattr(out, CACHE_FIELD)}
        )
        return result.to_tuple() if return_dict is False else result


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` resolve ``model_type="hyena_rtf"`` in this process.

    Idempotent. Exported directories also carry the code (``hyena_rtf.checkpoints.hf_export.export_hf``), so
    ``trust_remote_code=True`` loads them where this package is not installed.
    """
    AutoConfig.register(HyenaRTFConfig.model_type, HyenaRTFConfig, exist_ok=True)
    AutoModelForCausalLM.register(HyenaRTFConfig, HyenaRTFForCausalLM, exist_ok=True)
