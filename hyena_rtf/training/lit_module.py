"""LightningModule: the training concerns around a HyenaRTFForCausalLM (loss, metrics, optimizer)."""

from __future__ import annotations

import math
import inspect
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import get_class
from torch import nn
from torchmetrics import SumMetric
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from ..data.protocol import TaskData
from ..evaluation.metrics import bits_per_byte, perplexity
from ..modeling.configuration_hyena_rtf import HyenaRTFConfig
from ..modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
from .flops import flops_per_token

__all__ = ["HyenaLMModule"]


class HyenaLMModule(L.LightningModule):
    """Causal-LM training around :class:`HyenaRTFForCausalLM`.

    Args:
        model: keyword arguments of :class:`HyenaRTFConfig` (the Hydra ``model`` group).
        lr: peak learning rate of the non-filter parameters.
        weight_decay: weight decay of the non-filter parameters.
        optimizer: the optimizer class and its other arguments, ``{"_target_": "torch.optim.AdamW",
            "betas": [0.9, 0.999]}`` (the default); it receives the parameter groups and ``lr``.
        filter_lr: peak learning rate of the long-filter (RTF / implicit) parameters.
        filter_weight_decay: weight decay of the long-filter parameters.
        filter_pole_lr: peak learning rate of the filters' pole parameters (RTF denominators, S4D
            step sizes and A); None: ``filter_lr``, like the rest of the filters.
        decay_norm_and_bias: apply weight decay to norms, biases and embeddings too (the paper does).
        warmup_steps: linear warm-up steps; a value in (0, 1) is a fraction of the total steps.
        min_lr_rate: the cosine schedule ends at ``min_lr_rate`` times each group's peak lr.
        compile: wrap the network in ``torch.compile`` for training (checkpoint keys stay clean).
        nonfinite: what a non-finite loss does: ``"skip"`` the step (counted in ``train/skipped``)
            or ``"stop"`` the run (the last good checkpoint is kept).
    """

    def __init__(
        self,
        model: dict,
        lr: float = 1e-3,
        weight_decay: float = 0.25,
        optimizer: Optional[dict] = None,
        filter_lr: float = 1e-3,
        filter_weight_decay: float = 0.0,
        filter_pole_lr: Optional[float] = None,
        decay_norm_and_bias: bool = True,
        warmup_steps: float = 0.01,
        min_lr_rate: float = 0.1,
        compile: bool = False,
        nonfinite: str = "skip",
    ):
        super().__init__()
        if nonfinite not in ("skip", "stop"):
            raise ValueError(f"nonfinite must be 'skip' or 'stop', got {nonfinite!r}")
        if lr <= 0 or filter_lr < 0 or (filter_pole_lr is not None and filter_pole_lr < 0):
            raise ValueError(
                f"lr must be > 0 and filter_lr, filter_pole_lr >= 0, got lr={lr}, filter_lr={filter_lr}, "
                f"filter_pole_lr={filter_pole_lr}"
            )
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.save_hyperparameters()
        self.net = HyenaRTFForCausalLM(HyenaRTFConfig(**dict(model)))
        self._compiled: Optional[torch.nn.Module] = None
        self.eval_ratios: dict[str, dict[str, float]] = {}
        self.tokenizer = None  # set by the training task; saved inside checkpoints
        # Summed NLL and scored tokens per evaluation stage, and the data's own metrics (set in setup).
        self.eval_sums = nn.ModuleDict({s: nn.ModuleDict({"nll": SumMetric(), "tokens": SumMetric()}) for s in ("val", "test")})
        self.data_metrics = nn.ModuleDict({s: nn.ModuleDict() for s in ("val", "test")})
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ forward / loss
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, L, V) for token ids (B, L)."""
        net = self._compiled if (self.training and self._compiled is not None) else self.net
        return net(input_ids=input_ids).logits

    def nll(self, batch: dict, logits: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed negative log-likelihood (fp32) and number of scored tokens (targets != -100) of a
        batch; ``logits`` of the batch's inputs are computed unless given."""
        logits = self(batch["input_ids"]) if logits is None else logits  # (B, L, V)
        targets = batch["targets"]  # (B, L)
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum", ignore_index=-100)
        return nll, (targets != -100).sum()

    def setup(self, stage: str) -> None:
        if self.hparams.compile and stage == "fit" and self._compiled is None:
            self._compiled = torch.compile(self.net)
        dm = self.trainer.datamodule if self._trainer is not None else None
        if not isinstance(dm, TaskData):  # loaders passed by hand: loss and perplexity only
            return
        for split, stage_name in (("validation", "val"), ("test", "test")):
            self.data_metrics[stage_name] = nn.ModuleDict(dm.eval_metrics())
            rates = dm.split_rates(split)
            if rates:
                self.eval_ratios[stage_name] = rates
        if dm.seq_len and dm.batch_size:
            # Lightning's ThroughputMonitor reads this for MFU; FFTs are counted analytically.
            self.flops_per_batch = int(3 * flops_per_token(self.net, dm.seq_len) * dm.seq_len * dm.batch_size)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict, batch_idx: int) -> Optional[torch.Tensor]:
        nll, count = self.nll(batch)
        loss = nll / count.clamp_min(1)
        if not torch.isfinite(loss):
            if self.hparams.nonfinite == "stop":
                raise FloatingPointError(
                    f"non-finite training loss at step {self.global_step}; stopping (nonfinite=stop). "
                    "The last checkpoint written before this step is intact"
                )
            self.skipped_steps += 1
            self.log("train/skipped", self.skipped_steps.float(), on_step=True, prog_bar=True)
            return None  # Lightning skips backward and the optimizer step
        self.log("train/loss", loss, on_step=True, prog_bar=True)
        self.log("train/ppl", torch.exp(loss.detach()), on_step=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, prog_bar=True)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        # A finite loss can still give non-finite gradients (overflow): never apply them.
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.stack([g.detach().float().norm() for g in grads])).all():
            if self.hparams.nonfinite == "stop":
                raise FloatingPointError(f"non-finite gradients at step {self.global_step}; stopping (nonfinite=stop)")
            for g in grads:
                g.zero_()
            self.skipped_steps += 1
            self.log("train/skipped", self.skipped_steps.float(), on_step=True, prog_bar=True)

    def _eval_step(self, batch: dict, stage: str) -> None:
        logits = self(batch["input_ids"])  # (B, L, V)
        nll, count = self.nll(batch, logits)
        self.eval_sums[stage]["nll"].update(nll.double())
        self.eval_sums[stage]["tokens"].update(count.double())
        for metric in self.data_metrics[stage].values():
            metric.update(logits, batch["targets"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, stage: str) -> None:
        sums = self.eval_sums[stage]
        nll, tokens = sums["nll"].compute(), sums["tokens"].compute()
        data_metrics = {name: m.compute().item() for name, m in self.data_metrics[stage].items()} if tokens > 0 else {}
        for m in (*sums.values(), *self.data_metrics[stage].values()):
            m.reset()
        if tokens <= 0:
            return
        loss = (nll / tokens).item()
        metrics = {f"{stage}/loss": loss, f"{stage}/ppl": perplexity(nll.item(), tokens.item())}
        metrics.update({f"{stage}/{name}": value for name, value in data_metrics.items()})
        ratios = self.eval_ratios.get(stage)
        if ratios:
            # Token-weighted NLL converted with the split's words/bytes per token (exact when the
            # whole split is scored; evaluate.py does that).
            metrics[f"{stage}/word_ppl"] = math.exp(min(loss / ratios["words_per_token"], 700.0))
            metrics[f"{stage}/bpb"] = bits_per_byte(nll.item(), tokens.item() * ratios["bytes_per_token"])
        self.log_at_step(metrics, prog_bar=(stage == "val"))

    def log_at_step(self, metrics: dict[str, float], prog_bar: bool = False) -> None:
        """Log evaluation-time metrics under ``global_step``, the number of optimizer updates behind
        the weights they measure: the same number as the ``step_XXXXXXX.ckpt`` saved after them.

        (Lightning would write them one step earlier; training losses already follow this rule:
        the loss of the batch that makes update k is computed on the weights after k - 1 updates.)
        """
        self.log_dict(metrics, prog_bar=prog_bar, logger=False, sync_dist=False)  # callbacks, checkpoints
        if self._trainer is not None and not self.trainer.sanity_checking:
            for logger in self.loggers:
                logger.log_metrics({**metrics, "epoch": float(self.current_epoch)}, step=self.global_step)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = self.net.param_groups(
            weight_decay=hp.weight_decay,
            filter_lr=hp.filter_lr,
            filter_weight_decay=hp.filter_weight_decay,
            decay_norm_and_bias=hp.decay_norm_and_bias,
            filter_pole_lr=hp.get("filter_pole_lr"),
        )
        spec = dict(hp.get("optimizer") or {"_target_": "torch.optim.AdamW"})
        optimizer_cls = get_class(spec.pop("_target_"))
        if "fused" in inspect.signature(optimizer_cls).parameters and "fused" not in spec:
            spec["fused"] = self.device.type == "cuda"  # one kernel per step where the optimizer has one
        optimizer = optimizer_cls(groups, lr=hp.lr, **spec)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(hp.warmup_steps * total) if hp.warmup_steps < 1 else int(hp.warmup_steps)
        # min_lr_rate (not min_lr) so the filter group decays relative to its own peak lr.
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, num_warmup_steps=warmup, num_training_steps=total, min_lr_rate=hp.min_lr_rate
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Dropout masks continue exactly after a resume (data order is restored by the datamodule).
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()
        # The tokenizer travels inside the checkpoint so evaluate/generate need nothing else.
        if self.tokenizer is not None:
            checkpoint["tokenizer_json"] = self.tokenizer.backend_tokenizer.to_str()
            checkpoint["tokenizer_special"] = {
                k: getattr(self.tokenizer, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
            }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("rng_state")
        if rng:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])
        if "tokenizer_json" in checkpoint:
            from ..data.tokenization import tokenizer_from_json

            self.tokenizer = tokenizer_from_json(checkpoint["tokenizer_json"], checkpoint.get("tokenizer_special"))
