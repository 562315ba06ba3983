"""The convert task behind ``convert.py``: a safari-family checkpoint in, a model of this project out."""

from __future__ import annotations

from omegaconf import DictConfig

from ..checkpoints.conversion import convert_checkpoint, summary_lines

__all__ = ["convert"]


def convert(cfg: DictConfig) -> dict:
    """Convert ``cfg.src`` into a Hugging Face directory at ``cfg.out_dir``; return the report."""
    report = convert_checkpoint(cfg.src, cfg.out_dir, config=cfg.config, tokenizer=cfg.tokenizer,
                                characters=list(cfg.characters), shift=cfg.shift, overwrite=cfg.overwrite)
    print(summary_lines(report), flush=True)
    return report
