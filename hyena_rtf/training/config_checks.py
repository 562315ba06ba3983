"""Checks a train config passes before anything is built: unknown options in every group, and a
resumed run's options against the run it resumes."""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Optional

import lightning as L
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from ..errors import UserError
from .lit_module import HyenaLMModule

__all__ = ["check_config", "check_resume"]


def _constructor_keys(fn) -> set[str]:
    return {n for n, p in inspect.signature(fn).parameters.items()
            if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _unknown_keys(group: str, given, known: set[str]) -> None:
    unknown = sorted(set(given) - known - {"_target_"})
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" (did you mean {group}.{close[0]}?)" if close else ""
        raise UserError(f"unknown option {group}.{key}{hint}: it would be silently ignored; see conf/{group.split('.')[0]}/ for the valid keys")


def _target_keys(target: str) -> set[str]:
    """Constructor arguments of a ``_target_`` class, those its ``**kwargs`` hand to base classes included."""
    keys: set[str] = set()
    for klass in get_class(target).__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        keys |= _constructor_keys(init)
        if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            break
    return keys


def check_config(cfg: DictConfig) -> None:
    """Unknown keys in the model, data, optim and trainer groups, each against the constructor its
    ``_target_`` names (a misspelt option would otherwise be silently ignored). Cheap: nothing is
    built. Raises :class:`UserError` with the option to change."""
    _unknown_keys("model", cfg.model, _target_keys(cfg.model.get("_target_", "hyena_rtf.modeling.configuration_hyena_rtf.HyenaRTFConfig")))
    if cfg.data.get("_target_"):
        _unknown_keys("data", cfg.data, _target_keys(cfg.data._target_))
    _unknown_keys("optim", cfg.optim, _constructor_keys(HyenaLMModule.__init__) - {"model", "compile", "nonfinite"})
    if cfg.optim.get("optimizer") is not None:
        _check_optimizer(cfg.optim.optimizer)
    _unknown_keys("trainer", cfg.trainer, _constructor_keys(L.Trainer.__init__))


# Set per parameter group by the training module (optim.lr, optim.weight_decay and the filter
# options); inside optim.optimizer they would be overridden or collide.
_GROUP_KEYS = {"params": "", "lr": "optim.lr", "weight_decay": "optim.weight_decay"}


def _check_optimizer(spec: DictConfig) -> None:
    """``optim.optimizer``: an importable optimizer class and only its own constructor options."""
    target = spec.get("_target_")
    try:
        get_class(target)
    except Exception as e:  # noqa: BLE001 - hydra raises several types for a bad path
        raise UserError(f"optim.optimizer._target_={target!r} is not an importable optimizer class ({type(e).__name__}); "
                        "e.g. torch.optim.AdamW") from None
    for key, home in _GROUP_KEYS.items():
        if key in spec:
            where = f"; set {home} instead" if home else ""
            raise UserError(f"optim.optimizer.{key} is set by the training module per parameter group{where}")
    _unknown_keys("optim.optimizer", spec, _target_keys(target) - set(_GROUP_KEYS))


# Data options that decide the tokens and hence the model's vocabulary and context; the others
# (batch sizes, workers, cache location) may change between a run and its resumption.
_DATA_IDENTITY = ("corpus", "tokenizer", "vocab_size", "train_path", "validation_fraction", "dataset_path", "dataset_config", "data_files",
                  "add_eos", "seq_len")


def check_resume(cfg: DictConfig, ckpt_path: Optional[str]) -> None:
    """A resumed run must rebuild the model and tokens it saved: compare with the run's own config.

    Without this, a changed model or tokenizer option surfaces only as a Lightning state-dict size
    mismatch after the data has been tokenised. Dropout rates may change (they hold no weights).
    """
    if not ckpt_path:
        return
    saved_path = Path(ckpt_path).resolve().parent.parent / ".hydra" / "config.yaml"
    if not saved_path.is_file():
        return
    saved = OmegaConf.load(saved_path)
    checks = [("model", lambda k: "dropout" not in k), ("data", lambda k: k in _DATA_IDENTITY)]
    for group, matters in checks:
        old = OmegaConf.to_container(saved.get(group) or {}, resolve=False)
        new = OmegaConf.to_container(cfg.get(group) or {}, resolve=False)
        for key in sorted(set(old) | set(new)):
            if matters(key) and old.get(key) != new.get(key):
                raise UserError(
                    f"ckpt_path={ckpt_path} was trained with {group}.{key}={old.get(key)!r}, this run has "
                    f"{new.get(key)!r}; resume with that run's options (its {saved_path}) or start a new run"
                )
