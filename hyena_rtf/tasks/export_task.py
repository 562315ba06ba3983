"""The export task behind ``export.py``: a checkpoint in, a self-contained Hugging Face directory out."""

from __future__ import annotations

from omegaconf import DictConfig

from ..checkpoints.hf_export import export_hf
from ..checkpoints.loading import load_for_inference

__all__ = ["export"]


def export(cfg: DictConfig) -> str:
    """Write ``cfg.ckpt_path``'s model and tokenizer to ``cfg.out_dir``; return the directory."""
    model, tokenizer = load_for_inference(cfg.ckpt_path)
    out = export_hf(model, tokenizer, cfg.out_dir, overwrite=cfg.overwrite)
    print(f"exported to {out}")
    return str(out)
