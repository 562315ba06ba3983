"""Training callbacks: text samples at validation, pole-radius and filter-movement monitor, token throughput."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelSummary, ThroughputMonitor
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from ..data.protocol import TaskData
from ..modeling.long_filter import LongFilter
from ..modeling.rtf import RTF

__all__ = ["SampleGeneration", "StabilityMonitor", "TokenThroughputMonitor", "ParameterSummary"]

log = logging.getLogger(__name__)


class SampleGeneration(L.Callback):
    """After each validation, generate from fixed prompts (recurrent decoding) and log the text.

    Samples are printed, appended to ``<run dir>/samples.txt`` and sent to W&B as a table when a
    WandbLogger is attached. Needs ``pl_module.tokenizer``. ``prompts=None`` takes the datamodule's
    ``sample_prompts`` (each data config names prompts that suit its text), else ``["The "]``.
    """

    def __init__(
        self,
        prompts: Optional[Sequence[str]] = None,
        max_new_tokens: int = 48,
        do_sample: bool = True,
        top_k: int = 40,
        temperature: float = 0.8,
    ):
        self.prompts = list(prompts) if prompts is not None else None
        self.max_new_tokens = max_new_tokens
        self.gen_kwargs = {"do_sample": do_sample, "top_k": top_k, "temperature": temperature}
        self.last_samples: list[str] = []

    def _prompts(self, trainer: L.Trainer) -> list[str]:
        if self.prompts is not None:
            return self.prompts
        dm = trainer.datamodule
        return list((dm.sample_prompts if isinstance(dm, TaskData) else None) or ["The "])

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tok = getattr(pl_module, "tokenizer", None)
        if tok is None or trainer.sanity_checking:
            return
        net = pl_module.net
        was_training = net.training
        net.eval()
        samples = []
        with torch.no_grad():
            for prompt in self._prompts(trainer):
                ids = tok(prompt, return_tensors="pt").input_ids.to(pl_module.device)
                if ids.numel() == 0:
                    continue
                out = net.generate(
                    ids, max_new_tokens=self.max_new_tokens, pad_token_id=tok.eos_token_id, **self.gen_kwargs
                )
                samples.append(tok.decode(out[0], skip_special_tokens=True))
        net.train(was_training)
        self.last_samples = samples
        step = trainer.global_step
        for s in samples:
            rank_zero_info(f"[sample @ step {step}] {s!r}")
        out_dir = Path(trainer.default_root_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "samples.txt", "a", encoding="utf-8") as f:
            for s in samples:
                f.write(f"step {step}: {s}\n")
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_text(key="samples", columns=["step", "text"], data=[[step, s] for s in samples])


class StabilityMonitor(L.Callback):
    """After each validation: the largest RTF pole radius and how far the long filters have moved.

    Logs ``stability/max_pole_radius`` and ``stability/layer_<i>`` (RTF filters: radii from the
    companion matrices' eigenvalues, so exact; only ``constraint="none"`` lets them reach 1, and
    the monitor is how a user sees that) and ``filters/kernel_shift``: the relative distance of
    every long filter's kernel (any filter class) from its kernel when training started,
    ``||k - k_start|| / ||k_start||`` over all filters together, with ``filters/kernel_shift_layer_<i>``
    per filter. A shift near 0 means the long filters are not learning.
    """

    def __init__(self):
        self._start: Optional[list[torch.Tensor]] = None

    @staticmethod
    def _kernels(pl_module: L.LightningModule) -> list[torch.Tensor]:
        with torch.no_grad():
            return [f.kernel().detach().double().cpu() for f in pl_module.modules() if isinstance(f, LongFilter)]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # On a resumed run this is the resumed kernel: the shift then counts from the resume.
        self._start = self._kernels(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {}
        for i, rtf in enumerate(m for m in pl_module.modules() if isinstance(m, RTF)):
            metrics[f"stability/layer_{i}"] = rtf.poles().abs().max().item()
        if metrics:
            metrics["stability/max_pole_radius"] = max(metrics.values())
        if self._start:
            now = self._kernels(pl_module)
            moved = [float((k - k0).norm()) for k, k0 in zip(now, self._start)]
            sizes = [float(k0.norm()) for k0 in self._start]
            for i, (d, n) in enumerate(zip(moved, sizes)):
                metrics[f"filters/kernel_shift_layer_{i}"] = d / max(n, 1e-12)
            metrics["filters/kernel_shift"] = sum(d * d for d in moved) ** 0.5 / max(sum(n * n for n in sizes) ** 0.5, 1e-12)
        if metrics:
            write = getattr(pl_module, "log_at_step", None) or pl_module.log_dict
            write(metrics)


class TokenThroughputMonitor(ThroughputMonitor):
    """Lightning's ThroughputMonitor for token batches: items are tokens, samples are sequences.

    MFU uses ``pl_module.flops_per_batch``, which the LightningModule computes analytically
    (FFTs included; torch's FLOP counter ignores them).
    """

    def __init__(self, **kwargs):
        super().__init__(
            batch_size_fn=lambda batch: batch["input_ids"].shape[0],
            length_fn=lambda batch: batch["input_ids"].numel(),
            **kwargs,
        )


class ParameterSummary(ModelSummary):
    """The model summary at the start of training: parameters per top-level module.

    Lightning's own table adds a FLOPs column measured by torch's FLOP counter, which cannot see
    the FFT convolutions and would print 0; the throughput monitor reports FLOPs analytically.
    Modules without parameters (the metric accumulators) are left out.
    """

    @staticmethod
    def summarize(summary_data, total_parameters: int, trainable_parameters: int, model_size: float,
                  total_training_modes: dict, total_flops: int, **summarize_kwargs) -> None:
        cols = dict(summary_data)
        rows = [(n, t, p) for n, t, p in zip(cols["Name"], cols["Type"], cols["Params"]) if str(p).strip() != "0"]
        width = max([len(n) for n, _, _ in rows] + [4])
        lines = [f"  {n:<{width}}  {t}  {p} parameters" for n, t, p in rows]
        lines.append(f"  total: {total_parameters:,} parameters ({trainable_parameters:,} trainable, {model_size:.1f} MB)")
        log.info("model summary\n" + "\n".join(lines))
