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


@hydra.main(version_base="1.3", config_path="conf", config_name="distill")
def main(cfg: DictConfig):
    # Imported here so that --help and config errors do not pay for torch and Lightning.
    from hyena_rtf.tasks.distill_task import distill

    run_cli(distill, cfg)


if __name__ == "__main__":
    main()
