"""The train task behind ``train.py``: build data, model, callbacks, loggers and trainer from a
Hydra config, fit, test, and print a summary a user can act on."""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning as L

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..checkpoints.loading import check_init_from, load_initial_weights, resolve_ckpt_path
from ..errors import UserError
from ..training.lit_module import HyenaLMModule
from ..evaluation.metrics import unigram_ppl

log = logging.getLogger(__name__)

__all__ = ["train", "instantiate_dict_list", "build_module", "check_config", "check_resume", "quiet_lightning"]

# Callbacks that write to a logger and refuse to run without one (logger=none).
_NEED_LOGGER = ("LearningRateMonitor", "ThroughputMonitor", "TokenThroughputMonitor")
_GPT2_VOCAB = 50257


def _constructor_keys(fn) -> set[str]:
    return {n for n, p in inspect.signature(fn).parameters.items()
            if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _unknown_keys(group: str, given, known: set[str]) -> None:
    unknown = sorted(set(given) - known - {"_target_"})
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" (did you mean {group}.{close[0]}?)" if close else ""
        raise UserError(f"unknown option {group}.{key}{hint}: it would be silently ignored; see conf/{group}/ for the valid keys")


def check_config(cfg: DictConfig) -> None:
    """Everything about a train config that can be checked without reading or tokenising data:
    unknown keys in the model/data/optim/trainer groups, seq_len against the model's context,
    vocabulary sizes. Raises :class:`UserError` with the option to change."""
    from ..data.lm_datamodule import DEFAULT_BPE_VOCAB, LMDataModule
    from ..modeling.configuration_hyena_rtf import HyenaRTFConfig

    _unknown_keys("model", cfg.model, _constructor_keys(HyenaRTFConfig.__init__))
    if cfg.data.get("_target_") == "hyena_rtf.data.lm_datamodule.LMDataModule":
        _unknown_keys("data", cfg.data, _constructor_keys(LMDataModule.__init__))
    _unknown_keys("optim", cfg.optim, _constructor_keys(HyenaLMModule.__init__) - {"model", "compile", "nonfinite"})
    _unknown_keys("trainer", cfg.trainer, _constructor_keys(L.Trainer.__init__))

    seq_len, l_max = cfg.data.get("seq_len"), cfg.model.get("max_position_embeddings")
    if "mem_len" in cfg.data and l_max is not None:  # data=copying: the block, the delay, the copies
        length = 2 * cfg.data.mem_len + cfg.data.get("delay", 0)
        if length > l_max:
            raise UserError(
                f"data=copying makes sequences of 2 * data.mem_len + data.delay = {length} tokens, more than "
                f"model.max_position_embeddings={l_max}; lower data.mem_len or data.delay, or raise model.max_position_embeddings"
            )
    if seq_len is not None and l_max is not None and seq_len > l_max:
        raise UserError(
            f"data.seq_len={seq_len} exceeds the model's context model.max_position_embeddings={l_max}; "
            f"lower data.seq_len to at most {l_max} or raise model.max_position_embeddings"
        )
    model_vocab = cfg.model.get("vocab_size")
    tokenizer = cfg.data.get("tokenizer")
    data_vocab = {"gpt2": _GPT2_VOCAB, "bpe": cfg.data.get("vocab_size") or DEFAULT_BPE_VOCAB}.get(tokenizer)
    if model_vocab not in (None, "auto") and data_vocab is not None and model_vocab < data_vocab:
        raise UserError(
            f"model.vocab_size={model_vocab} is smaller than the tokenizer's {data_vocab} (data.tokenizer={tokenizer}); "
            "set model.vocab_size=null to take it from the tokenizer"
        )


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


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "Tip:" not in msg and "Skipping setting a default" not in msg


def quiet_lightning() -> None:
    """One copy of each Lightning log line, without advertisements or known-harmless warnings.

    Lightning adds its own stderr handler when it is imported before logging is configured (as
    under Hydra), so each line printed twice; with the handler removed, its records go to the
    root handlers (console and ``<run dir>/train.log``) once.
    """
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if type(h) is logging.StreamHandler:
                lg.removeHandler(h)
        if logging.getLogger().handlers:
            lg.propagate = True
        if not any(isinstance(f, _DropTips) for f in lg.filters):
            lg.addFilter(_DropTips())
    for lg in (logging.getLogger("lightning.pytorch.utilities.rank_zero"), logging.getLogger("lightning.fabric.utilities.rank_zero")):
        if not any(isinstance(f, _DropTips) for f in lg.filters):
            lg.addFilter(_DropTips())
    # torch >= 2.10 deprecates LeafSpec, which Lightning 2.6 still uses internally.
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


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
    quiet_lightning()
    check_config(cfg)
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

    datamodule = instantiate(cfg.data)
    run_test = bool(cfg.get("test", False))
    if hasattr(datamodule, "check"):
        needed = []
        if cfg.get("train", True):
            needed.append("train")
            if cfg.trainer.get("limit_val_batches", 1.0) != 0:
                needed.append("validation")
        if run_test and "test" not in datamodule.available_splits():
            log.warning(f"corpus={datamodule.hparams.corpus} has no test split (data.test_path); skipping the final test")
            run_test = False
        datamodule.check(needed + (["test"] if run_test else []))
    datamodule.prepare_data()
    datamodule.setup("fit")
    tokenizer = datamodule.tokenizer
    module = build_module(cfg, vocab_size=len(tokenizer))
    module.tokenizer = tokenizer
    if init_from:
        load_initial_weights(module.net, init_from, tokenizer)
        log.info(f"starting from the weights of {init_from}")
    tokenizer.save_pretrained(str(output_dir / "tokenizer"))

    callbacks = instantiate_dict_list(cfg.get("callbacks"))
    loggers = instantiate_dict_list(cfg.get("logger"))
    if not loggers:
        dropped = [type(c).__name__ for c in callbacks if type(c).__name__ in _NEED_LOGGER]
        callbacks = [c for c in callbacks if type(c).__name__ not in _NEED_LOGGER]
        if dropped:
            log.info(f"logger=none: not running {', '.join(dropped)} (they write to a logger)")
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    n_params = sum(p.numel() for p in module.parameters())
    log.info(f"model: {module.net.config.mixer}, {n_params:,} parameters; run dir: {output_dir}")
    for lg in trainer.loggers:
        lg.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "n_params": n_params})

    metrics: dict[str, Any] = {}
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


def _print_summary(cfg, trainer, module, datamodule, metrics, seconds: float) -> None:
    lines = [f"run dir        : {cfg.paths.output_dir}", f"wall time      : {seconds / 60:.1f} min"]
    if "val/ppl" in metrics and hasattr(datamodule, "token_array"):
        uni = unigram_ppl(datamodule.token_array("train"), datamodule.token_array("validation"), len(datamodule.tokenizer))
        lines.append(f"val ppl        : {metrics['val/ppl']:.2f}  (unigram ppl of the same tokenizer on the same split: {uni:.2f})")
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
    sampler = next((c for c in trainer.callbacks if type(c).__name__ == "SampleGeneration"), None)
    if sampler is not None:
        if not sampler.last_samples:
            sampler.on_validation_end(trainer, module)
        for s in sampler.last_samples:
            lines.append(f"sample         : {s!r}")
    print("\n".join(["", "=" * 72, *lines, "=" * 72]), flush=True)
