"""Distil a Hyena model (implicit, S4D or RTF filters) into Hyena-RTF filters for recurrent decoding.

    python distill.py ckpt_path=logs/train/runs/<run> state_size=16
    python distill.py ckpt_path=<run>/checkpoints/last.ckpt state_size=64 out_dir=distilled_64
    python distill.py ckpt_path=<convert.py output dir> state_size=32 evaluate=false
    python distill.py ckpt_path=... constraint=l1_montel evaluate=false

Writes <out_dir>/checkpoints/last.ckpt (mixer=hyena_rtf; evaluate.py, generate.py and export.py
take it), <out_dir>/tokenizer/ and <out_dir>/checkpoints/distill.json (per-layer kernel errors
and pole radii, teacher and student perplexity, time taken).
"""

import hydra
from omegaconf import DictConfig

from hyena_rtf.errors import run_cli


def distill(cfg: DictConfig) -> dict:
    from hydra.utils import instantiate

    from hyena_rtf.distillation import distill_checkpoint, summary_table

    out_dir = cfg.out_dir or cfg.paths.output_dir
    eval_text = None
    if cfg.evaluate:
        eval_text = instantiate(cfg.data).corpus.text(cfg.split)
    summary = distill_checkpoint(
        cfg.ckpt_path, out_dir, cfg.state_size, cfg.constraint, eval_text=eval_text, eval_split=cfg.split,
        batch_size=cfg.batch_size, device=cfg.device, overwrite=cfg.overwrite, progress=cfg.progress,
        max_steps=cfg.max_steps, lr=cfg.lr, tol=cfg.tol, hankel_taps=cfg.hankel_taps,
    )
    print(summary_table(summary), flush=True)
    return summary


@hydra.main(version_base="1.3", config_path="conf", config_name="distill")
def main(cfg: DictConfig):
    run_cli(distill, cfg)


if __name__ == "__main__":
    main()
