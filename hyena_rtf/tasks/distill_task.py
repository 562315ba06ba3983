"""The distil task behind ``distill.py``: a Hyena checkpoint in, a Hyena-RTF checkpoint out."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from ..checkpoints.distillation import distill_checkpoint, summary_table

__all__ = ["distill"]


def distill(cfg: DictConfig) -> dict:
    """Distil ``cfg.ckpt_path`` into RTF filters of ``cfg.state_size``; with ``cfg.evaluate`` also
    score teacher and student on ``cfg.split`` of ``cfg.data``'s corpus. Returns the summary."""
    out_dir = cfg.out_dir or cfg.paths.output_dir
    # The corpus is read before any fitting: a missing file fails in a second, not after minutes.
    eval_text = instantiate(cfg.data).corpus.text(cfg.split) if cfg.evaluate else None
    summary = distill_checkpoint(
        cfg.ckpt_path, out_dir, cfg.state_size, cfg.constraint, eval_text=eval_text, eval_split=cfg.split,
        batch_size=cfg.batch_size, device=cfg.device, overwrite=cfg.overwrite, progress=cfg.progress,
        max_steps=cfg.max_steps, lr=cfg.lr, tol=cfg.tol, hankel_taps=cfg.hankel_taps,
    )
    print(summary_table(summary), flush=True)
    return summary
