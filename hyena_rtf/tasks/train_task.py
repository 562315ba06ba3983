"""The train task behind ``train.py``: build data, model, callbacks, loggers and trainer from a
Hydra config, fit, test, and print a summary a user can act on."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ThroughputMonitor
from omegaconf import DictConfig, OmegaConf

from ..checkpoints.loading import check_init_from, load_initial_weights, resolve_ckpt_path
from ..data.protocol import ModelLimits, TaskData
from ..errors import UserError
from ..training.callbacks import SampleGeneration
from ..training.config_checks import check_config, check_resume
from ..training.console import quiet_lightning
from ..training.lit_module import HyenaLMModule

log = logging.getLogger(__name__)

__all__ = ["train", "instantiate_dict_list", "build_module", "build_data"]

# Callbacks that write to a logger and refuse to run without one (logger=none).
_NEED_LOGGER = (LearningRateMonitor, ThroughputMonitor)


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


def build_data(cfg: DictConfig) -> tuple[TaskData, bool]:
    """The data module of ``cfg.data``, checked against the model options and for the splits the
    run needs, before anything is read; returns it and whether the final test can run."""
    datamodule = instantiate(cfg.data)
    if not isinstance(datamodule, TaskData):
        raise UserError(f"data._target_={cfg.data.get('_target_')} is not a hyena_rtf.data.protocol.TaskData")
    datamodule.check_model(ModelLimits.from_config(OmegaConf.to_container(cfg.model, resolve=True)))
    needed = []
    if cfg.get("train", True):
        needed.append("train")
        if cfg.trainer.get("limit_val_batches", 1.0) != 0:
            needed.append("validation")
    run_test = bool(cfg.get("test", False))
    if run_test and "test" not in datamodule.available_splits():
        log.warning(f"data {cfg.data.get('_target_')} has no test split configured (data.test_path); skipping the final test")
        run_test = False
    datamodule.check(needed + (["test"] if run_test else []))
    return datamodule, run_test


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` with the callbacks and loggers of their groups; callbacks that
    need a logger are left out (with a note) when there is none."""
    callbacks = instantiate_dict_list(cfg.get("callbacks"))
    loggers = instantiate_dict_list(cfg.get("logger"))
    if not loggers:
        dropped = [type(c).__name__ for c in callbacks if isinstance(c, _NEED_LOGGER)]
        callbacks = [c for c in callbacks if not isinstance(c, _NEED_LOGGER)]
        if dropped:
            log.info(f"logger=none: not running {', '.join(dropped)} (they write to a logger)")
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (and test) a model; returns the final metrics (also what a sweeper optimises) and the
    parameter count (``n_params``)."""
    t_start = time.time()
    quiet_lightning()
    check_config(cfg)
    datamodule, run_test = build_data(cfg)  # cheap: checks splits, context and vocabulary, reads nothing
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), Path(cfg.paths.log_dir) / cfg.task_name, output_dir)
    check_resume(cfg, ckpt_path)
    init_from = cfg.get("init_from")
    if init_from:
        if ckpt_path:
            raise UserError("pass either ckpt_path (resume a run) or init_from (start a new run from weights), not both")
        check_init_from(init_from, OmegaConf.to_container(cfg.model, resolve=True))

    datamodule.prepare_data()
    datamodule.setup("fit")
    tokenizer = datamodule.tokenizer
    module = build_module(cfg, vocab_size=len(tokenizer))
    module.tokenizer = tokenizer
    if init_from:
        load_initial_weights(module.net, init_from, tokenizer)
        log.info(f"starting from the weights of {init_from}")
    tokenizer.save_pretrained(str(output_dir / "tokenizer"))
    trainer = build_trainer(cfg)

    n_params = sum(p.numel() for p in module.parameters())
    log.info(f"model: {module.net.config.mixer}, {n_params:,} parameters; run dir: {output_dir}")
    for lg in trainer.loggers:
        lg.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "n_params": n_params})

    metrics: dict[str, Any] = {"n_params": n_params}
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if run_test and not trainer.interrupted:
        best = next((c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor == "val/loss"), "")
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    if trainer.is_global_zero:
        _print_summary(cfg, trainer, module, datamodule, metrics, time.time() - t_start)
    return metrics


def _print_summary(cfg, trainer, module, datamodule: TaskData, metrics, seconds: float) -> None:
    lines = [f"run dir        : {cfg.paths.output_dir}", f"wall time      : {seconds / 60:.1f} min"]
    baseline = datamodule.baseline_ppl("validation") if "val/ppl" in metrics else None
    if baseline is not None:
        what, value = baseline
        lines.append(f"val ppl        : {metrics['val/ppl']:.2f}  ({what}: {value:.2f})")
        limit = cfg.trainer.get("limit_val_batches", 1.0)
        if limit not in (1.0, None):
            part = f"first {limit} validation batches" if isinstance(limit, int) else f"first {limit:.0%} of the validation split"
            lines.append(f"                 val/* score the {part}; evaluate.py scores the whole split")
    for key in ("val/word_ppl", "val/bpb", "test/ppl", "test/word_ppl", "test/bpb", "val/acc", "val/exact", "test/acc", "test/exact"):
        if key in metrics and math.isfinite(metrics[key]):
            lines.append(f"{key:<15}: {metrics[key]:.3f}")
    last = next((c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path), "")
    if last:
        lines.append(f"checkpoint     : {last}")
    sampler = next((c for c in trainer.callbacks if isinstance(c, SampleGeneration)), None)
    if sampler is not None:
        if not sampler.last_samples:
            sampler.on_validation_end(trainer, module)
        for s in sampler.last_samples:
            lines.append(f"sample         : {s!r}")
    print("\n".join(["", "=" * 72, *lines, "=" * 72]), flush=True)
