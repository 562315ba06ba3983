"""The safari family of Hyena language models, as this backbone's configuration and weights.

safari (``SimpleLMHeadModel`` ``lm_simple`` and ``ConvLMHeadModel`` ``lm``), HyenaDNA (the same
backbone, ``standalone_hyenadna.py`` and its Lightning runs) and the RTF paper's copy of safari
(a low-rank output head and RTF long filters) build the same network as ``HyenaRTFForCausalLM``
with ``mixer="hyena"`` (implicit filters) or ``"hyena_rtf"``:

- blocks: their "dropout -> add -> LayerNorm -> mixer" ordering is the same computation as this
  pre-norm block (every mixer and MLP output is dropped with ``resid_dropout``, the embedding
  with ``embed_dropout``); the MLP is fc1 -> GELU (tanh) -> fc2 in every variant, fused or not;
  the LM head is tied to the word embedding, whose rows are padded to a multiple.
- Hyena operator (order 2): the same projections, causal short filter and gating; the long
  convolution adds ``bias * v`` (the filter's skip term) on top of its kernel, which this
  operator keeps on tap 0 of the kernel.
- implicit filter: the same positional encoding, sine MLP and exponential window, with the window's
  channel order reversed (``implicit_decay_order="slow_first"``) and, in ``standalone_hyenadna``,
  a default window shift of 0.05 (safari and HyenaDNA's training code: 0).
- RTF filter (the RTF repository): ``ab`` stacks the denominators over the numerators, and the
  operator adds the feed-through ``h_0`` a second time on top of a kernel that already holds it,
  so this filter's ``h0`` is ``2 * h_0``; its head RMSNorm has eps 1e-6.

:func:`map_config` turns a source's model configuration into ``HyenaRTFConfig`` arguments and
:func:`map_state_dict` renames and reshapes its weights; both raise :class:`UserError` naming the
first key they cannot represent. Options that only steer training (learning rates, fused
kernels computing the same function, activation checkpointing) are accepted and listed in the
returned notes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from ..errors import UserError

__all__ = ["SafariModel", "map_config", "map_state_dict", "source_name", "FLAVORS"]

# Which code defines the defaults of keys a config leaves out.
FLAVORS = ("safari", "hyenadna_standalone")

# LM-level keys: accepted because they do not change the function the weights compute here.
_LM_IGNORED = {
    "fused_mlp": "a fused kernel of the same fc1 -> GELU(tanh) -> fc2",
    "fused_dropout_add_ln": "a fused kernel of the same dropout -> add -> LayerNorm",
    "initializer_cfg": "initialisation only",
    "sequence_parallel": "tensor parallelism only",
    "return_hidden_state": "what the source returns, not what it computes",
    "dtype": "weights are converted to fp32",
    "device": "placement only",
}
# Layer-level keys with the same role.
_LAYER_IGNORED = {
    "fused_bias_fc": "a fused kernel of the same linear layers",
    "fused_fft_conv": "a fused kernel of the same causal convolution",
    "jit_filter": "compilation only",
    "return_state": "what the layer returns",
    "lr": "optimizer setting", "lr_pos_emb": "optimizer setting", "wd": "optimizer setting",
    "local_order": "safari's HyenaOperator never reads it (short_filter_order sets the short filter)",
    "filter_dropout": "safari's HyenaFilter builds this dropout but never applies it",
    "layer_idx": "bookkeeping",
}
# Layer keys whose value must be the default for the weights to mean what this backbone computes.
_LAYER_FIXED = {
    "num_heads": 1, "inner_factor": 1, "num_blocks": 1, "outer_mixing": False, "post_order_ffn": False,
    "activation": "id", "normalized": False, "linear_mixer": False, "bidirectional": False,
    "fast_decay_pct": 0.3, "slow_decay_pct": 1.5, "target": 1e-2, "modulation_lr": 0.0,
}
_RTF_IGNORED = {"init": "initialisation only", "lr": "optimizer setting", "wd": "optimizer setting",
                "fused_fft_conv": "a fused kernel of the same causal convolution",
                "flash_fft_conv": "a fused kernel of the same causal convolution",
                "dropout": "the RTF wrapper's filter() never applies it"}
_RTF_FIXED = {"transposed": False, "bidirectional": False}


@dataclass
class SafariModel:
    """What :func:`map_config` found: this backbone's config and how to read the weights."""

    config: dict  # HyenaRTFConfig keyword arguments
    filter: str  # "implicit" | "rtf"
    checkpointed: bool = False  # HyenaDNA's activation checkpointing inserts ".layer." in key names
    zero_skip: bool = False  # the filter's bias=False: the skip term is multiplied by zero
    notes: list[str] = field(default_factory=list)


def _fail(where: str, key: str, what: str) -> UserError:
    sep = "" if what.startswith("=") else " "  # "layer.order=3: ..." reads as the key's value
    return UserError(f"{where}: {key}{sep}{what}")


def _take(cfg: dict, key: str, default: Any) -> Any:
    value = cfg.get(key, default)
    return default if value is None and default is not None else value


def map_config(lm: dict, shapes: dict[str, tuple], flavor: str, where: str) -> SafariModel:
    """``HyenaRTFConfig`` arguments for the LM configuration ``lm`` (safari's ``model:`` section,
    an eval YAML's ``model_config`` or HyenaDNA's ``config.json``).

    ``shapes`` maps the source's weight names (prefix ``backbone.`` and ``lm_head.``) to their
    shapes: they decide the RTF repository's head rank and filter widths the config does not
    state. ``where`` names the config file in error messages.
    """
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
    lm = dict(lm)
    notes: list[str] = []
    name = lm.pop("_name_", None)
    if name not in (None, "lm", "lm_simple"):
        raise _fail(where, "_name_", f"is {name!r}; only the safari LMs 'lm' and 'lm_simple' (Hyena backbones) convert")
    for key in ("d_model", "n_layer", "vocab_size", "layer"):
        if lm.get(key) is None:
            raise _fail(where, key, "is missing; the model cannot be built without it")
    if lm.get("attn_layer_idx"):
        raise _fail(where, "attn_layer_idx", f"={lm['attn_layer_idx']} puts attention layers inside the stack; "
                    "this backbone has one mixer for every layer")
    if lm.get("max_position_embeddings", 0):
        raise _fail(where, "max_position_embeddings", f"={lm['max_position_embeddings']} adds learned positions "
                    "to a Hyena stack, which this backbone does not do")
    if lm.get("use_head"):
        raise _fail(where, "use_head", "=true adds a classification head; only language models convert")
    d = int(lm["d_model"])
    cfg = dict(
        mixer="hyena", vocab_size=int(lm["vocab_size"]), hidden_size=d, num_hidden_layers=int(lm["n_layer"]),
        intermediate_size=int(_take(lm, "d_inner", 4 * d)),
        pad_vocab_size_multiple=int(_take(lm, "pad_vocab_size_multiple", 1)),
        resid_dropout=float(_take(lm, "resid_dropout", 0.0)), embed_dropout=float(_take(lm, "embed_dropout", 0.1)),
        layer_norm_epsilon=float(_take(lm, "layer_norm_epsilon", 1e-5)),
        residual_in_fp32=bool(_take(lm, "residual_in_fp32", False)),
        tie_word_embeddings=True, position_embedding_type="learned", filter_dropout=0.0,
    )
    checkpointed = bool(lm.get("checkpoint_mixer")) or bool(lm.get("checkpoint_mlp"))
    known = {"d_model", "n_layer", "vocab_size", "layer", "d_inner", "pad_vocab_size_multiple", "resid_dropout",
             "embed_dropout", "layer_norm_epsilon", "residual_in_fp32", "attn_layer_idx", "attn_cfg",
             "max_position_embeddings", "use_head", "n_classes", "checkpoint_mixer", "checkpoint_mlp",
             "process_group"}
    for key in lm:
        if key in _LM_IGNORED:
            notes.append(f"{key}: ignored ({_LM_IGNORED[key]})")
        elif key not in known:
            raise _fail(where, key, "is not an option of the safari-family LMs this converter knows; "
                        "remove it if it does not change the model")
    layer = dict(lm["layer"])
    sm = SafariModel(config=cfg, filter="implicit", checkpointed=checkpointed, notes=notes)
    _map_layer(layer, d, sm, shapes, flavor, where)
    return sm


def _map_layer(layer: dict, d: int, sm: SafariModel, shapes: dict, flavor: str, where: str) -> None:
    cfg, notes = sm.config, sm.notes
    if layer.pop("_name_", "hyena") != "hyena":
        raise _fail(where, "layer._name_", "must be 'hyena' (the Hyena operator); other mixers do not convert")
    if layer.pop("d_model", d) != d:
        raise _fail(where, "layer.d_model", f"differs from d_model={d}")
    if layer.get("l_max") is None:
        raise _fail(where, "layer.l_max", "is missing; it is the filter length")
    cfg["max_position_embeddings"] = int(layer.pop("l_max"))
    order = int(layer.pop("order", 2))
    if order != 2:
        raise _fail(where, "layer.order", f"={order}: higher orders share one filter network across their long "
                    "convolutions, which this backbone gives one filter each; only order 2 converts")
    cfg["hyena_order"] = order
    cfg["short_filter_order"] = int(layer.pop("short_filter_order", 3))
    cfg["mixer_dropout"] = float(layer.pop("dropout", 0.0))
    filter_cls = layer.pop("filter_cls", "hyena-filter")
    filter_args = dict(layer.pop("filter_args", None) or {})
    filter_order = layer.pop("filter_order", 64)
    low_rank = "backbone.layers.0.mixer.mimo_proj.weight" in shapes
    if low_rank:  # the RTF repository's copy of the operator: RMSNorm -> Linear(D, r) -> GELU -> Linear(r, D)
        cfg["output_rank"] = int(shapes["backbone.layers.0.mixer.mimo_proj.weight"][0])
        cfg["output_norm_eps"] = 1e-6
        notes.append(f"low-rank output head of the RTF repository's operator (rank {cfg['output_rank']})")
    for key, value in list(layer.items()):
        if key in _LAYER_FIXED:
            layer.pop(key)
            if value != _LAYER_FIXED[key]:
                raise _fail(where, f"layer.{key}", f"={value!r} is not supported (only {_LAYER_FIXED[key]!r})")
        elif key in _LAYER_IGNORED:
            layer.pop(key)
            notes.append(f"layer.{key}: ignored ({_LAYER_IGNORED[key]})")
    if filter_cls == "rtf":
        _map_rtf(filter_args, layer, sm, shapes, where)
        return
    if filter_cls != "hyena-filter":
        raise _fail(where, "layer.filter_cls", f"={filter_cls!r}; only 'hyena-filter' (implicit) and 'rtf' convert")
    args = {**filter_args, **layer}  # safari passes the remaining layer keys to the filter
    cfg["implicit_emb_dim"] = int(args.pop("emb_dim", 3))
    cfg["implicit_w"] = float(args.pop("w", 1))
    cfg["implicit_modulate"] = bool(args.pop("modulate", True))
    cfg["implicit_shift"] = float(args.pop("shift", 0.05 if flavor == "hyenadna_standalone" else 0.0))
    cfg["implicit_num_inner_mlps"] = int(args.pop("num_inner_mlps", 2))
    cfg["implicit_decay_order"] = "slow_first"
    sm.zero_skip = not bool(args.pop("bias", True))
    width = shapes.get("backbone.layers.0.mixer.filter_fn.implicit_filter.0.weight", (filter_order,))[0]
    if width != filter_order:
        if not low_rank:
            raise _fail(where, "layer.filter_order", f"={filter_order} but the weights have a filter MLP of width {width}")
        notes.append(f"filter MLP width {width} from the weights (the RTF repository's operator does not pass "
                     f"filter_order={filter_order} to its filter)")
    cfg["implicit_filter_order"] = int(width)
    for key in ("seq_len", "channels"):
        args.pop(key, None)
    if args:
        key = sorted(args)[0]
        raise _fail(where, f"layer.{key}", "is not an option of the safari-family Hyena layers this converter knows")


def _map_rtf(args: dict, layer: dict, sm: SafariModel, shapes: dict, where: str) -> None:
    cfg, notes = sm.config, sm.notes
    if layer:
        key = sorted(layer)[0]
        raise _fail(where, f"layer.{key}", "is not an option of the RTF repository's Hyena layer")
    for key in ("state_size", "trunc_len"):
        if args.get(key) is None:
            raise _fail(where, f"layer.filter_args.{key}", "is missing")
    trunc = int(args.pop("trunc_len"))
    if trunc != cfg["max_position_embeddings"] or trunc % 2:
        raise _fail(where, "layer.filter_args.trunc_len", f"={trunc}: only an even trunc_len equal to layer.l_max "
                    "converts (the reference's kernel period is trunc_len rounded up to even)")
    cfg["mixer"] = "hyena_rtf"
    cfg["state_size"] = int(args.pop("state_size"))
    cfg["rtf_num_a"] = None if args.get("num_a") is None else int(args["num_a"])
    args.pop("num_a", None)
    constraint = args.pop("constraint", "no")
    if constraint not in ("no", None, "l1_montel"):
        raise _fail(where, "layer.filter_args.constraint", f"={constraint!r}; only 'no' and 'l1_montel' exist there")
    cfg["rtf_constraint"] = "l1_montel" if constraint == "l1_montel" else "none"
    # The weights are loaded over the initialisation; these options only describe that init.
    cfg.update(rtf_init="xavier", rtf_h0_init=None, rtf_decay=None)
    for key, value in list(args.items()):
        if key in _RTF_FIXED:
            if value != _RTF_FIXED[key]:
                raise _fail(where, f"layer.filter_args.{key}", f"={value!r} is not supported")
        elif key in _RTF_IGNORED:
            notes.append(f"layer.filter_args.{key}: ignored ({_RTF_IGNORED[key]})")
        else:
            raise _fail(where, f"layer.filter_args.{key}", "is not an option of the RTF repository's filter")
    notes.append("RTF feed-through doubled: the reference operator adds h_0 on top of a kernel that already holds it")
    sm.filter = "rtf"


# ---------------------------------------------------------------------------------------------- weights
def _layer_rules(sm: SafariModel) -> list[tuple[str, str]]:
    """(source suffix regex, target suffix) within one layer; targets are this backbone's names."""
    plain = ("norm1", "norm2", "mlp.fc1", "mlp.fc2", "mixer.in_proj", "mixer.out_proj", "mixer.short_filter",
             "mixer.mimo_proj")
    rules = [(re.escape(p) + r"\.(weight|bias)", p + r".\1") for p in plain]
    rules.append((r"mixer\.norm\.weight", "mixer.out_norm.weight"))
    if sm.filter == "implicit":
        rules += [
            (r"mixer\.filter_fn\.bias", "mixer.filters.0.bias"),
            (r"mixer\.filter_fn\.pos_emb\.z", "mixer.filters.0.pos_emb"),
            (r"mixer\.filter_fn\.pos_emb\.t", "mixer.filters.0.t"),
            (r"mixer\.filter_fn\.modulation\.deltas", "mixer.filters.0.deltas"),
            (r"mixer\.filter_fn\.implicit_filter\.(\d+)\.(weight|bias|freq)", r"mixer.filters.0.mlp.\1.\2"),
        ]
    else:
        rules += [(r"mixer\.filter_fn\.(ab|h_0|scalar)", r"mixer.filters.0.\1")]
    return rules


def _rename(key: str, sm: SafariModel) -> Optional[str]:
    """This backbone's name for the source weight ``key`` (prefix ``backbone.``), or None."""
    if sm.checkpointed:  # HyenaDNA wraps checkpointed mixers and MLPs in a module named "layer"
        key = re.sub(r"\.(mixer|mlp)\.layer\.", r".\1.", key)
    fixed = {"backbone.embeddings.word_embeddings.weight": "model.embed_tokens.weight",
             "backbone.ln_f.weight": "model.norm_f.weight", "backbone.ln_f.bias": "model.norm_f.bias",
             "lm_head.weight": "lm_head.weight"}
    if key in fixed:
        return fixed[key]
    m = re.fullmatch(r"backbone\.layers\.(\d+)\.(.+)", key)
    if m is None:
        return None
    for src, dst in _layer_rules(sm):
        if re.fullmatch(src, m.group(2)):
            return f"model.layers.{m.group(1)}." + re.sub(src, dst, m.group(2))
    return None


def _squeeze_to(value: Tensor, shape: torch.Size) -> Tensor:
    """Drop leading singleton dimensions (safari keeps batch/channel axes of size 1 on its buffers)."""
    while value.dim() > len(shape) and value.shape[0] == 1:
        value = value[0]
    return value


def map_state_dict(state: dict[str, Tensor], sm: SafariModel, target: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """The source weights ``state`` (names from ``backbone.`` / ``lm_head.``) as a state dict of the
    model whose own state dict is ``target`` (names and shapes to fill).

    Every source weight must land somewhere and every target weight must be filled, with the
    target's shape; the first violation raises :class:`UserError` naming the source key.
    """
    out: dict[str, Tensor] = {}
    rtf: dict[str, dict[str, tuple[str, Tensor]]] = {}
    head = None
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise _fail(where, key, f"is a {type(value).__name__}, not a tensor")
        value = value.detach().to(torch.float32)
        new = _rename(key, sm)
        if new is not None and new.rsplit(".", 1)[-1] in ("ab", "h_0", "scalar"):
            prefix, part = new.rsplit(".", 1)
            rtf.setdefault(prefix, {})[part] = (key, value)
            continue
        if new is None or new not in target:
            raise _fail(where, key, "is not a weight of the model the config describes (unexpected key)")
        if new == "lm_head.weight":
            head = value
            continue
        if new in out:
            raise _fail(where, key, "appears twice under different names")
        value = _squeeze_to(value, target[new].shape)
        if new.endswith(".deltas"):
            value = value.abs()  # the source keeps signed rates and uses their magnitude; this filter stores it
        if value.shape != target[new].shape:
            raise _fail(where, key, f"has shape {tuple(value.shape)}, the config needs {tuple(target[new].shape)}")
        out[new] = value
    for prefix, parts in rtf.items():
        out.update(_rtf_weights(prefix, parts, target, sm, where))
    for k in target:
        if k != "lm_head.weight" and k not in out:
            raise _fail(where, source_name(k), "is missing (the config describes a weight the checkpoint lacks)")
    if head is not None and not torch.equal(head, out["model.embed_tokens.weight"]):
        if head.shape != target["lm_head.weight"].shape:
            raise _fail(where, "lm_head.weight", f"has shape {tuple(head.shape)}, the config needs "
                        f"{tuple(target['lm_head.weight'].shape)}")
        sm.config["tie_word_embeddings"] = False
        out["lm_head.weight"] = head
        sm.notes.append("lm_head.weight differs from the word embedding: converted with an untied head")
    elif "lm_head.weight" in target:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]  # tied: one tensor under both names
    if sm.zero_skip:
        for k in [k for k in out if k.endswith("filters.0.bias")]:
            out[k] = torch.zeros_like(out[k])
        sm.notes.append("layer.bias=false: the filters' skip terms are set to zero (the source multiplies them by 0)")
    return out


def _rtf_weights(prefix: str, parts: dict, target: dict, sm: SafariModel, where: str) -> dict[str, Tensor]:
    """``ab`` (num_a + D, N), ``h_0`` (D,), ``scalar`` (num_a,) -> this RTF's a_raw, b, h0, montel_scale."""
    b_shape = target[f"{prefix}.b"].shape
    a_shape = target[f"{prefix}.a_raw"].shape
    for part in ("ab", "h_0"):
        if part not in parts:
            raise _fail(where, source_name(f"{prefix}.{part}"), "is missing")
    key, ab = parts["ab"]
    if ab.shape != (a_shape[0] + b_shape[0], b_shape[1]):
        raise _fail(where, key, f"has shape {tuple(ab.shape)}, the config needs {(a_shape[0] + b_shape[0], b_shape[1])}")
    key_h, h = parts["h_0"]
    if h.shape != target[f"{prefix}.h0"].shape:
        raise _fail(where, key_h, f"has shape {tuple(h.shape)}, the config needs {tuple(target[f'{prefix}.h0'].shape)}")
    out = {f"{prefix}.a_raw": ab[: a_shape[0]].clone(), f"{prefix}.b": ab[a_shape[0]:].clone(), f"{prefix}.h0": 2.0 * h}
    want_scale = f"{prefix}.montel_scale" in target
    if want_scale != ("scalar" in parts):
        name = parts["scalar"][0] if "scalar" in parts else source_name(f"{prefix}.scalar")
        raise _fail(where, name, "is " + ("unexpected (the config has no l1_montel constraint)" if "scalar" in parts
                                         else "missing (the config's l1_montel constraint needs it)"))
    if want_scale:
        key_s, s = parts["scalar"]
        if s.shape != target[f"{prefix}.montel_scale"].shape:
            raise _fail(where, key_s, f"has shape {tuple(s.shape)}, the config needs "
                        f"{tuple(target[f'{prefix}.montel_scale'].shape)}")
        out[f"{prefix}.montel_scale"] = s
    return out


def source_name(target_key: str) -> str:
    """The source's name of this backbone's weight ``target_key`` (for error messages)."""
    inverse = {"model.embed_tokens.weight": "backbone.embeddings.word_embeddings.weight",
               "model.norm_f.weight": "backbone.ln_f.weight", "model.norm_f.bias": "backbone.ln_f.bias"}
    if target_key in inverse:
        return inverse[target_key]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", target_key)
    if m is None:
        return target_key
    exact = {"mixer.out_norm.weight": "mixer.norm.weight", "mixer.filters.0.pos_emb": "mixer.filter_fn.pos_emb.z",
             "mixer.filters.0.t": "mixer.filter_fn.pos_emb.t", "mixer.filters.0.deltas": "mixer.filter_fn.modulation.deltas",
             "mixer.filters.0.a_raw": "mixer.filter_fn.ab", "mixer.filters.0.b": "mixer.filter_fn.ab",
             "mixer.filters.0.h0": "mixer.filter_fn.h_0", "mixer.filters.0.montel_scale": "mixer.filter_fn.scalar",
             "mixer.filters.0.bias": "mixer.filter_fn.bias", "mixer.filters.0.ab": "mixer.filter_fn.ab",
             "mixer.filters.0.h_0": "mixer.filter_fn.h_0", "mixer.filters.0.scalar": "mixer.filter_fn.scalar"}
    rest = m.group(2)
    if rest in exact:
        rest = exact[rest]
    elif rest.startswith("mixer.filters.0.mlp."):
        rest = "mixer.filter_fn.implicit_filter." + rest[len("mixer.filters.0.mlp."):]
    return f"backbone.layers.{m.group(1)}.{rest}"
