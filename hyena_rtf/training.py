"""The train task behind ``train.py``: build data, model, callbacks, loggers and trainer from a
Hydra config, fit, test, and print a summary a user can act on."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .checkpoints import resolve_ckpt_path
from .lit_module import HyenaLMModule
from .metrics import unigram_ppl

log = logging.getLogger(__name__)

__all__ = ["train", "instantiate_dict_list", "build_module"]


def instantiate_dict_list(cfg: Optional[DictConfig]) -> list:
    """Instantiate every ``_target_`` entry of a dict-of-configs group (callbacks, loggers)."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def build_module(cfg: DictConfig, vocab_size: int) -> HyenaLMModule:
    """The LightningModule for ``cfg.model`` (HyenaRTFConfig fields) and ``cfg.optim``."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.pop("_target_", None)
    if model_cfg.get("vocab_size") in (None, "auto"):
        model_cfg["vocab_size"] = vocab_size
    elif model_cfg["vocab_size"] < vocab_size:
        raise ValueError(
            f"model.vocab_size={model_cfg['vocab_size']} is smaller than the tokenizer's {vocab_size}; "
            "set model.vocab_size=null to take it from the tokenizer"
        )
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    return HyenaLMModule(model=model_cfg, compile=cfg.get("compile", False), nonfinite=cfg.get("nonfinite", "skip"), **optim)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (and test) a model; returns the final metrics (also what a sweeper optimises)."""
    t_start = time.time()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), Path(cfg.paths.log_dir) / cfg.task_name, output_dir)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    tokenizer = datamodule.tokenizer
    module = build_module(cfg, vocab_size=len(tokenizer))
    module.tokenizer = tokenizer
    tokenizer.save_pretrained(str(output_dir / "tokenizer"))

    callbacks = instantiate_dict_list(cfg.get("callbacks"))
    loggers = instantiate_dict_list(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    n_params = sum(p.numel() for p in module.parameters())
    log.info(f"model: {module.net.config.mixer}, {n_params:,} parameters; run dir: {output_dir}")
    for lg in trainer.loggers:
        lg.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "n_params": n_params})

    metrics: dict[str, Any] = {}
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if cfg.get("test", False) and not trainer.interrupted:
        best = next((c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor == "val/loss"), "")
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    if trainer.is_global_zero:
        _print_summary(cfg, trainer, module, datamodule, metrics, time.time() - t_start)
    return metrics


def _print_summary(cfg, trainer, module, datamodule, metrics, seconds: float) -> None:
    lines = [f"run dir        : {cfg.paths.output_dir}", f"wall time      : {seconds / 60:.1f} min"]
    if "val/ppl" in metrics and hasattr(datamodule, "token_array"):
        uni = unigram_ppl(datamodule.token_array("train"), datamodule.token_array("validation"), len(datamodule.tokenizer))
        lines.append(f"val ppl        : {metrics['val/ppl']:.2f}  (unigram ppl of the same tokenizer on the same split: {uni:.2f})")
    for key in ("val/word_ppl", "val/bpb", "test/ppl", "test/word_ppl", "test/bpb", "val/acc", "val/exact", "test/acc", "test/exact"):
        if key in metrics and math.isfinite(metrics[key]):
            lines.append(f"{key:<15}: {metrics[key]:.3f}")
    last = next((c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path), "")
    if last:
        lines.append(f"checkpoint     : {last}")
    sampler = next((c for c in trainer.callbacks if type(c).__name__ == "SampleGeneration"), None)
    if sampler is not None:
        sampler.on_validation_end(trainer, module)
        for s in sampler.last_samples:
            lines.append(f"sample         : {s!r}")
    print("\n".join(["", "=" * 72, *lines, "=" * 72]), flush=True)
