"""The convert task behind ``convert.py``: a safari-family checkpoint in, a model of this project out.

Sources (:func:`find_source`):

- a HyenaDNA directory: ``config.json`` (the backbone's arguments) and ``weights.ckpt`` (a
  Lightning checkpoint whose ``state_dict`` holds ``model.backbone.*`` and maybe
  ``model.lm_head.weight``); defaults of keys the config leaves out follow
  ``standalone_hyenadna.py``, the code HyenaDNA publishes for these files;
- a safari run directory: ``.hydra/config.yaml`` (its ``model:`` section; the tokenizer from
  ``dataset.tokenizer_name``) and ``checkpoints/last.ckpt`` (or the newest ``.ckpt`` there);
- a checkpoint file (a Lightning checkpoint or a plain ``state_dict``) with its config given as
  ``config=`` or found beside it (``config.json``, ``config.yaml``, ``../.hydra/config.yaml``):
  an eval YAML (``model_config:`` + ``tokenizer_name:``), a run's ``.hydra/config.yaml``, or
  the LM arguments themselves.

The result is a Hugging Face directory (:func:`~hyena_rtf.checkpoints.hf_export.export_hf`: config, weights,
tokenizer, code) that evaluate.py, generate.py, distill.py and export.py take, plus
``conversion.json`` (source, what each ignored option was, parameter count). Every check (paths,
config keys, weight names and shapes, tokenizer) runs before the output directory is touched.
"""

from __future__ import annotations

import ast
import json
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

from ..errors import UserError
from .foreign import load_foreign_checkpoint
from .safari import map_config, map_state_dict, source_name

__all__ = ["Source", "find_source", "read_source_config", "read_source_weights", "build_converted", "convert_checkpoint",
           "summary_lines"]

TOKENIZER_CHOICES = ("auto", "gpt2", "characters", "none")


@dataclass
class Source:
    """Where a source's config and weights are, and how to read the config."""

    config_path: Path
    weights_path: Path
    flavor: str  # "safari" | "hyenadna_standalone" (whose defaults apply to keys left out)


def find_source(src: str | Path, config: Optional[str | Path] = None) -> Source:
    """Locate the config and the weights of ``src`` (see the module docstring)."""
    src = Path(src)
    if not src.exists():
        raise UserError(f"src not found: {src}; pass a HyenaDNA directory, a safari run directory or a checkpoint file")
    if src.is_dir():
        if (src / "config.json").is_file() and (src / "weights.ckpt").is_file():
            return Source(Path(config) if config else src / "config.json", src / "weights.ckpt",
                          "safari" if config else "hyenadna_standalone")
        if (src / ".hydra" / "config.yaml").is_file():
            return Source(Path(config) if config else src / ".hydra" / "config.yaml", _run_checkpoint(src), "safari")
        raise UserError(f"{src} holds neither config.json + weights.ckpt (HyenaDNA) nor .hydra/config.yaml "
                        "(a safari run); pass a checkpoint file and config=<its config>")
    if config is None:
        beside = [src.parent / "config.json", src.parent / "config.yaml", src.parent.parent / ".hydra" / "config.yaml"]
        found = [p for p in beside if p.is_file()]
        if not found:
            raise UserError(f"no config for {src} (looked for {', '.join(str(p) for p in beside)}); "
                            "pass config=<safari eval YAML, .hydra/config.yaml or HyenaDNA config.json>")
        config = found[0]
    config = Path(config)
    if not config.is_file():
        raise UserError(f"config not found: {config}")
    flavor = "hyenadna_standalone" if config.suffix == ".json" else "safari"
    return Source(config, src, flavor)


def _run_checkpoint(run: Path) -> Path:
    ckpt_dir = run / "checkpoints"
    if (ckpt_dir / "last.ckpt").is_file():
        return ckpt_dir / "last.ckpt"
    found = sorted(ckpt_dir.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True) if ckpt_dir.is_dir() else []
    if not found:
        raise UserError(f"no .ckpt file under {ckpt_dir}; pass the checkpoint file as src")
    return found[0]


# ---------------------------------------------------------------------------------------------- config
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
               ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.USub: operator.neg, ast.UAdd: operator.pos}


def _arithmetic(expr: str) -> float | int:
    """Value of a number-only arithmetic expression (safari's ``${eval:4 * ${.d_model}}``).

    Parsed, never executed: anything but numbers, + - * / // % and parentheses is refused.
    """
    def value(node):
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            return _ARITHMETIC[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _ARITHMETIC:
            return _ARITHMETIC[type(node.op)](value(node.operand))
        raise ValueError(f"only arithmetic on numbers is evaluated, got {expr!r}")

    return value(ast.parse(str(expr), mode="eval"))


def _load_yaml(path: Path, section: str) -> dict:
    """``section`` of a (Hydra) YAML file with its interpolations resolved; safari's ``eval``
    resolver is honoured for arithmetic only."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - a YAML syntax error or a file that is not YAML
        raise UserError(f"{path} is not a readable YAML file ({type(e).__name__})") from None
    if section not in cfg:
        return {}
    # Whatever "eval" means elsewhere in this process, here it is the arithmetic-only reader.
    OmegaConf.register_new_resolver("eval", _arithmetic, replace=True)
    try:
        return OmegaConf.to_container(cfg[section], resolve=True)
    except (OmegaConfBaseException, ValueError, ZeroDivisionError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: cannot resolve {section}: {msg}") from None
    finally:
        OmegaConf.clear_resolver("eval")


def read_source_config(source: Source) -> tuple[dict, Optional[str]]:
    """(the LM's configuration, the tokenizer name or None) of ``source``."""
    path = source.config_path
    if path.suffix == ".json":
        try:
            lm = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is not valid JSON ({e})") from None
        if not isinstance(lm, dict):
            raise UserError(f"{path} must hold a JSON object of the backbone's arguments")
        return lm, ("characters" if "layer" in lm else None)
    for section in ("model_config", "model"):  # an eval YAML, a Hydra run config
        lm = _load_yaml(path, section)
        if lm:
            if section == "model_config":
                tok = _top_level(path).get("tokenizer_name")
            else:
                tok = _load_yaml(path, "dataset").get("tokenizer_name")
            return lm, tok
    lm = _top_level(path)
    if "layer" in lm and "d_model" in lm:
        return lm, None
    raise UserError(f"{path} has no model_config: or model: section and is not an LM config (d_model, layer, ...)")


def _top_level(path: Path) -> dict:
    """The YAML file's keys without resolving interpolations (for plain values only)."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    except Exception:  # noqa: BLE001
        raise UserError(f"{path} is not a readable YAML file") from None


# ---------------------------------------------------------------------------------------------- weights
def read_source_weights(path: Path) -> dict[str, torch.Tensor]:
    """The source's weights named from ``backbone.`` / ``lm_head.`` (Lightning's ``model.`` prefix removed)."""
    obj = load_foreign_checkpoint(path)
    if isinstance(obj, dict) and "state_dict" in obj:
        state = obj["state_dict"]
    else:
        state = obj
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path} holds no state dict (expected a Lightning checkpoint or a dict of tensors)")
    keys = list(state)
    if all(isinstance(k, str) and k.startswith("model.") for k in keys):
        state = {k[len("model."):]: v for k, v in state.items()}
    else:
        stray = [k for k in keys if not (isinstance(k, str) and k.startswith(("backbone.", "lm_head.")))]
        if stray and any(isinstance(k, str) and k.startswith("model.") for k in keys):
            raise UserError(f"{path}: {stray[0]} is not a weight of the model (unexpected key)")
    return dict(state)


def build_converted(source: Source, shift: Optional[float] = None, lm: Optional[dict] = None):
    """(model, SafariModel) for ``source`` (whose LM config ``lm`` may be passed when already read):
    config mapped, weights loaded and checked."""
    from ..modeling.configuration_hyena_rtf import HyenaRTFConfig
    from ..modeling.modeling_hyena_rtf import HyenaRTFForCausalLM

    if lm is None:
        lm, _ = read_source_config(source)
    state = read_source_weights(source.weights_path)
    shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    where = str(source.config_path)
    sm = map_config(lm, shapes, source.flavor, where)
    if shift is not None:
        if sm.filter != "implicit":
            raise UserError("shift sets the implicit filter's window; this source has RTF filters")
        sm.config["implicit_shift"] = float(shift)
        sm.notes.append(f"implicit window shift {shift} (given as shift=)")
    try:
        config = HyenaRTFConfig(**sm.config)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None
    model = HyenaRTFForCausalLM(config)
    weights = map_state_dict(state, sm, model.state_dict(), str(source.weights_path))
    if not sm.config["tie_word_embeddings"]:
        model = HyenaRTFForCausalLM(HyenaRTFConfig(**sm.config))
    fresh = {k: v.clone() for k, v in model.state_dict().items() if k.endswith((".t", ".deltas"))}
    model.load_state_dict(weights, strict=True)
    # The time grid and decay rates are fixed functions of the config in both code bases; a
    # difference means the source used decay settings this config does not carry.
    for k, v in fresh.items():
        if not torch.allclose(model.state_dict()[k], v, rtol=1e-6, atol=1e-7):
            raise UserError(f"{source.weights_path}: {source_name(k)} differs from the values its config "
                            "implies (a decay setting this converter does not read)")
    return model.eval(), sm


# ---------------------------------------------------------------------------------------------- task
def _tokenizer(choice: str, name: Optional[str], characters: Iterable[str], vocab_size: int):
    from ..data.tokenization import CHARACTER_SPECIALS, character_tokenizer, gpt2_tokenizer

    if choice == "auto":
        choice = {"gpt2": "gpt2", "char": "characters", "characters": "characters"}.get(name or "", "none")
    if choice == "none":
        return None, None
    if choice == "gpt2":
        if vocab_size < 50257:
            raise UserError(f"tokenizer gpt2 has 50,257 tokens but the model's vocab_size is {vocab_size}; "
                            "pass tokenizer=none")
        return gpt2_tokenizer(), "gpt2"
    chars = list(characters)
    if len(CHARACTER_SPECIALS) + len(chars) != vocab_size:
        raise UserError(f"a character tokenizer with {len(chars)} characters has {len(CHARACTER_SPECIALS) + len(chars)} "
                        f"tokens but the model's vocab_size is {vocab_size}; pass characters=[...] in the training "
                        "order, or tokenizer=none")
    return character_tokenizer(chars), "characters " + "".join(chars)


def convert_checkpoint(
    src: str | Path,
    out_dir: str | Path,
    config: Optional[str | Path] = None,
    tokenizer: str = "auto",
    characters: Iterable[str] = ("A", "C", "G", "T", "N"),
    shift: Optional[float] = None,
    overwrite: bool = False,
) -> dict:
    """Convert ``src`` into the Hugging Face directory ``out_dir``; return the report.

    ``tokenizer``: ``auto`` (GPT-2 BPE when the source names gpt2, HyenaDNA's character
    tokenizer for HyenaDNA configs, otherwise none), ``gpt2``, ``characters`` or ``none``.
    ``characters``: the character tokenizer's characters, in id order after the 7 special tokens.
    ``shift``: override the implicit window's shift (None: the source code's default).
    """
    from .hf_export import check_out_dir, export_hf

    out = Path(out_dir)
    check_out_dir(out, overwrite)  # before the source is read
    source = find_source(src, config)
    lm, tok_name = read_source_config(source)
    if tokenizer not in TOKENIZER_CHOICES:
        raise UserError(f"tokenizer must be one of {TOKENIZER_CHOICES}, got {tokenizer!r}")
    model, sm = build_converted(source, shift, lm)
    tok, tok_kind = _tokenizer(tokenizer, tok_name, characters, model.config.vocab_size)
    if tok is not None:
        for field, token in (("eos_token_id", tok.eos_token), ("bos_token_id", tok.bos_token), ("pad_token_id", tok.pad_token)):
            if token is not None:
                setattr(model.config, field, tok.convert_tokens_to_ids(token))
        model.generation_config.eos_token_id = model.config.eos_token_id
        model.generation_config.bos_token_id = model.config.bos_token_id
        model.generation_config.pad_token_id = model.config.pad_token_id
    n_params = sum(p.numel() for p in model.parameters())
    export_hf(model, tok, out, overwrite=overwrite)
    report = {
        "src": str(src), "config": str(source.config_path), "weights": str(source.weights_path),
        "defaults_of": source.flavor, "out_dir": str(out), "mixer": model.config.mixer,
        "parameters": n_params, "tokenizer": None if tok is None else f"{tok_kind} ({len(tok)} tokens)",
        "notes": sm.notes,
    }
    (out / "conversion.json").write_text(json.dumps(report, indent=2))
    return report


def summary_lines(report: dict) -> str:
    """Plain-text summary of :func:`convert_checkpoint`'s report."""
    lines = [f"converted {report['weights']} (config {report['config']}, defaults of {report['defaults_of']})",
             f"mixer {report['mixer']}, {report['parameters']:,} parameters, tokenizer: {report['tokenizer']}"]
    lines += [f"  note: {n}" for n in report["notes"]]
    lines.append(f"written to {report['out_dir']} (conversion.json beside the weights)")
    return "\n".join(lines)
