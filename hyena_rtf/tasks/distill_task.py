"""The distil task behind ``distill.py``: a Hyena checkpoint in, a Hyena-RTF checkpoint out."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from ..checkpoints.distillation import distill_checkpoint, resolve_teacher, summary_table
from ..data.lm_datamodule import LMDataModule
from ..errors import UserError

__all__ = ["distill"]


def distill(cfg: DictConfig) -> dict:
    """Distil ``cfg.ckpt_path`` into RTF filters of ``cfg.state_size``; with ``cfg.evaluate`` also
    score teacher and student on ``cfg.split`` of ``cfg.data``'s corpus. Returns the summary."""
    out_dir = cfg.out_dir or cfg.paths.output_dir
    eval_text = _eval_text(cfg) if cfg.evaluate else None
    summary = distill_checkpoint(
        cfg.ckpt_path, out_dir, cfg.state_size, cfg.constraint, eval_text=eval_text, eval_split=cfg.split,
        batch_size=cfg.batch_size, device=cfg.device, overwrite=cfg.overwrite, progress=cfg.progress,
        max_steps=cfg.max_steps, lr=cfg.lr, tol=cfg.tol, hankel_taps=cfg.hankel_taps,
    )
    print(summary_table(summary), flush=True)
    return summary


def _eval_text(cfg: DictConfig) -> str:
    """The text teacher and student are scored on. Read before any fitting (a missing file fails in
    a second, not after minutes), but after the teacher is found (no download for a typo)."""
    resolve_teacher(cfg.ckpt_path)
    data = instantiate(cfg.data)
    if not isinstance(data, LMDataModule):
        raise UserError(f"distill.py scores teacher and student on text; data._target_={cfg.data.get('_target_')} "
                        "is not a text corpus: choose a text data config or pass evaluate=false")
    data.check([cfg.split])
    return data.corpus.text(cfg.split)
