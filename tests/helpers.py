"""Shared helpers for pipeline tests: Hydra composition on tiny settings."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

TINY_MODEL = [
    "model=hyena_rtf_tiny",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.max_position_embeddings=64",
    "model.state_size=4",
    "model.output_rank=null",
]


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path, return_hydra: bool = True) -> DictConfig:
    """Compose a config from conf/ the way the entry points do, with outputs under ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir.parent)
    return cfg


def wikitext_data(wikitext_dir: Path, cache_dir: Path) -> list[str]:
    """Train on WikiText validation text, evaluate on its test text, small BPE, short chunks."""
    return [
        "data=files",
        f"data.train_path={wikitext_dir / 'wiki.valid.raw'}",
        f"data.validation_path={wikitext_dir / 'wiki.test.raw'}",
        f"data.test_path={wikitext_dir / 'wiki.test.raw'}",
        "data.vocab_size=512",
        "data.seq_len=64",
        "data.batch_size=8",
        f"paths.data_dir={cache_dir}",
    ]


@torch.no_grad()
def argmax_loop(model, ids: torch.Tensor, n: int, window: int | None = None) -> torch.Tensor:
    """Reference greedy decoding: a full parallel forward over the (last ``window``) tokens per step.

    Independent of every decoding cache: it only uses the model's parallel mode.
    """
    seq = ids
    for _ in range(n):
        ctx = seq if window is None else seq[:, -window:]
        nxt = model(ctx).logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        seq = torch.cat([seq, nxt], 1)
    return seq
