"""Finding, checking and loading checkpoints: Lightning ``.ckpt`` files and Hugging Face directories."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Optional

import torch

from ..errors import UserError

log = logging.getLogger(__name__)

__all__ = ["resolve_ckpt_path", "is_intact", "load_for_inference", "load_checkpoint_dict", "check_init_from",
           "load_initial_weights"]


def is_intact(path: Path) -> bool:
    """True when ``path`` is a complete torch zip archive (every member's CRC checks out)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def _newest_intact(candidates: list[Path]) -> Optional[Path]:
    for i, path in enumerate(sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True)):
        if is_intact(path):
            if i:
                log.warning(f"newer checkpoint(s) are damaged (truncated or corrupt); resuming from {path}")
            return path
        log.warning(f"checkpoint {path} is damaged (truncated or corrupt); trying an older one")
    return None


def resolve_ckpt_path(value: Optional[str], task_log_dir: Path, output_dir: Optional[Path] = None) -> Optional[str]:
    """Turn the ``ckpt_path`` option into a file to resume from.

    ``None`` starts fresh. ``"last"`` takes the newest intact checkpoint of the most recent run of
    this task (``logs/<task>/runs/*/checkpoints``). A path must exist; if that file is damaged, the
    newest intact checkpoint beside it is used instead, with a warning.
    """
    if value in (None, "", "null"):
        return None
    if value == "last":
        runs = sorted(
            (d for d in task_log_dir.glob("runs/*/checkpoints") if output_dir is None or d.parent != output_dir),
            key=lambda d: d.stat().st_mtime,
            reverse=True,
        )
        for ckpt_dir in runs:
            found = _newest_intact(list(ckpt_dir.glob("*.ckpt")))
            if found is not None:
                log.info(f"ckpt_path=last -> {found}")
                return str(found)
        raise UserError(
            f"ckpt_path=last: no intact checkpoint under {task_log_dir}/runs/*/checkpoints; "
            "train first, or pass ckpt_path=<file>"
        )
    path = Path(value)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; pass an existing .ckpt file (or ckpt_path=last)")
    if is_intact(path):
        return str(path)
    found = _newest_intact([p for p in path.parent.glob("*.ckpt") if p != path])
    if found is None:
        raise UserError(f"checkpoint {path} is damaged and no intact checkpoint is beside it")
    log.warning(f"checkpoint {path} is damaged; resuming from the newest intact one: {found}")
    return str(found)


def load_checkpoint_dict(path: Path) -> dict:
    """Load a Lightning checkpoint with ``weights_only=True`` (no arbitrary code from pickles)."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if not is_intact(path):
        raise UserError(f"checkpoint {path} is damaged (truncated or corrupt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our checkpoint"
        raise UserError(f"{path} is not a hyena_rtf checkpoint that can be loaded safely ({type(e).__name__})") from e


def load_for_inference(path: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer) from a Lightning ``.ckpt`` of this project or a Hugging Face directory.

    The model is in eval mode. Raises :class:`UserError` with a one-line reason for a missing
    path, a damaged file or a checkpoint of another architecture.
    """
    from ..modeling.configuration_hyena_rtf import HyenaRTFConfig
    from ..modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
    from ..data.tokenization import load_tokenizer, tokenizer_from_json

    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is a directory without config.json; pass a .ckpt file or an exported model directory")
        try:
            model = HyenaRTFForCausalLM.from_pretrained(str(path))
        except (ValueError, OSError, KeyError) as e:
            raise UserError(f"{path} does not hold a hyena_rtf model: {e}") from e
        tokenizer = load_tokenizer(str(path)) if (path / "tokenizer.json").is_file() else None
        return model.to(device).eval(), tokenizer
    ckpt = load_checkpoint_dict(path)
    hparams = ckpt.get("hyper_parameters", {})
    if "model" not in hparams or "state_dict" not in ckpt:
        raise UserError(f"{path} is not a hyena_rtf training checkpoint (no model hyperparameters)")
    try:
        config = HyenaRTFConfig(**hparams["model"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{path} holds a model configuration this version cannot build: {e}") from e
    model = HyenaRTFForCausalLM(config)
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise UserError(f"{path} is a checkpoint of another architecture ({str(e).splitlines()[-1].strip()[:160]})") from None
    if missing or unexpected:
        raise UserError(
            f"{path} is a checkpoint of another architecture "
            f"({len(missing)} missing, {len(unexpected)} unexpected weights, e.g. {(missing or unexpected)[0]})"
        )
    tokenizer = None
    if "tokenizer_json" in ckpt:
        tokenizer = tokenizer_from_json(ckpt["tokenizer_json"], ckpt.get("tokenizer_special"))
    return model.to(device).eval(), tokenizer


# Model options that only decide a fresh initialisation or a rate (no weight shapes, no function of
# the weights): a run may start from a checkpoint that had other values.
_INIT_ONLY = ("rtf_init", "rtf_h0_init", "rtf_decay", "initializer_range", "embed_dropout", "resid_dropout",
              "mixer_dropout", "filter_dropout", "use_cache", "bos_token_id", "eos_token_id", "pad_token_id")


def _saved_model_config(path: Path) -> dict:
    if path.is_dir():
        import json

        if not (path / "config.json").is_file():
            raise UserError(f"init_from={path} is a directory without config.json; pass a .ckpt file or an exported model")
        return json.loads((path / "config.json").read_text())
    ckpt = load_checkpoint_dict(path)
    hparams = ckpt.get("hyper_parameters", {})
    if "model" not in hparams or "state_dict" not in ckpt:
        raise UserError(f"init_from={path} is not a hyena_rtf training checkpoint (no model hyperparameters)")
    return dict(hparams["model"])


def check_init_from(path: str | Path, model_cfg: dict) -> None:
    """Refuse, before any data work, a starting checkpoint whose model differs from ``model_cfg``
    (the run's ``model`` group) in anything but initialisation-only options and dropout rates.

    Loading weights into a model built with another option would change their meaning silently
    (e.g. RTF denominators of ``rtf_constraint=none`` read as reflection parameters).
    """
    from ..modeling.configuration_hyena_rtf import HyenaRTFConfig

    path = Path(path)
    if not path.exists():
        raise UserError(f"init_from={path} not found; pass a .ckpt file of this project or an exported model directory")
    saved = HyenaRTFConfig(**{k: v for k, v in _saved_model_config(path).items() if k in HyenaRTFConfig().to_dict()})
    given = {k: v for k, v in model_cfg.items() if k != "_target_" and not (k == "vocab_size" and v in (None, "auto"))}
    mine = HyenaRTFConfig(**given).to_dict()
    theirs = saved.to_dict()
    for key in sorted(set(mine) & set(theirs)):
        if key in _INIT_ONLY or (key == "vocab_size" and "vocab_size" not in given):
            continue
        if mine[key] != theirs[key]:
            raise UserError(
                f"init_from={path} holds a model with {key}={theirs[key]!r}, this run builds {key}={mine[key]!r}; "
                f"set model.{key}={theirs[key]} to start from it"
            )


def load_initial_weights(net, path: str | Path, tokenizer=None) -> None:
    """Copy the weights of ``path`` (checked by :func:`check_init_from`) into ``net``; the
    checkpoint's tokenizer, when it has one, must be the run's."""
    model, saved_tokenizer = load_for_inference(path)
    if tokenizer is not None and saved_tokenizer is not None:
        if saved_tokenizer.backend_tokenizer.to_str() != tokenizer.backend_tokenizer.to_str():
            raise UserError(f"init_from={path} was trained with another tokenizer than this run's data; use the same data options")
    try:
        net.load_state_dict(model.state_dict())
    except RuntimeError as e:
        raise UserError(f"init_from={path} does not fit this model ({str(e).splitlines()[-1].strip()[:160]})") from None
