"""LightningModule: the training concerns around a HyenaRTFForCausalLM (loss, metrics, optimizer)."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import SumMetric
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from .flops import flops_per_token
from ..evaluation.metrics import bits_per_byte, perplexity
from ..modeling.configuration_hyena_rtf import HyenaRTFConfig
from ..modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
from ..evaluation.recall import recall_counts

__all__ = ["HyenaLMModule"]


class HyenaLMModule(L.LightningModule):
    """Causal-LM training around :class:`HyenaRTFForCausalLM`.

    Args:
        model: keyword arguments of :class:`HyenaRTFConfig` (the Hydra ``model`` group).
        lr: peak learning rate of the non-filter parameters.
        weight_decay: AdamW weight decay of the non-filter parameters.
        betas: AdamW betas.
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
        betas: Sequence[float] = (0.9, 0.999),
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
        for stage in ("val", "test"):
            setattr(self, f"_{stage}_nll", SumMetric())
            setattr(self, f"_{stage}_tokens", SumMetric())
            # Recall tasks (hyena_rtf.data.synthetic): correct tokens, exact sequences, scored sequences.
            for name in ("correct", "exact", "seqs"):
                setattr(self, f"_{stage}_{name}", SumMetric())
        self.recall_metrics = False  # set from the datamodule in setup()
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
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        self.recall_metrics = bool(getattr(dm, "recall_metrics", False))
        if dm is not None and hasattr(dm, "meta"):
            for split, stage_name in (("validation", "val"), ("test", "test")):
                try:
                    meta = dm.meta(split)
                except Exception:  # split not prepared (e.g. fit without test data)
                    continue
                if meta.get("tokens"):
                    self.eval_ratios[stage_name] = {
                        "words_per_token": meta["words"] / meta["tokens"],
                        "bytes_per_token": meta["bytes"] / meta["tokens"],
                    }
            seq_len = getattr(dm, "seq_len", None)
            batch_size = getattr(dm, "batch_size", None)
            if seq_len and batch_size:
                # Lightning's ThroughputMonitor reads this for MFU; FFTs are counted analytically.
                self.flops_per_batch = int(3 * flops_per_token(self.net, seq_len) * seq_len * batch_size)

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
        getattr(self, f"_{stage}_nll").update(nll.double())
        getattr(self, f"_{stage}_tokens").update(count.double())
        if self.recall_metrics:
            for name, value in zip(("correct", "exact", "seqs"), recall_counts(logits, batch["targets"])):
                getattr(self, f"_{stage}_{name}").update(value.double())

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, stage: str) -> None:
        nll_metric, tok_metric = getattr(self, f"_{stage}_nll"), getattr(self, f"_{stage}_tokens")
        nll, tokens = nll_metric.compute(), tok_metric.compute()
        nll_metric.reset()
        tok_metric.reset()
        if tokens <= 0:
            return
        loss = (nll / tokens).item()
        metrics = {f"{stage}/loss": loss, f"{stage}/ppl": perplexity(nll.item(), tokens.item())}
        if self.recall_metrics:
            correct, exact, seqs = (getattr(self, f"_{stage}_{n}") for n in ("correct", "exact", "seqs"))
            metrics[f"{stage}/acc"] = (correct.compute() / tokens).item()
            metrics[f"{stage}/exact"] = (exact.compute() / seqs.compute().clamp_min(1)).item()
            for m in (correct, exact, seqs):
                m.reset()
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
        fused = self.device.type == "cuda"
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), fused=fused)
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
