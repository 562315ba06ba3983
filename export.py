"""Export a training checkpoint as a self-contained Hugging Face model directory.

    python export.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt out_dir=hf_export
    # then: AutoModelForCausalLM.from_pretrained("hf_export", trust_remote_code=True)
"""

import hydra
from omegaconf import DictConfig

from hyena_rtf.errors import run_cli


def export(cfg: DictConfig) -> str:
    from hyena_rtf.checkpoints import load_for_inference
    from hyena_rtf.export import export_hf

    model, tokenizer = load_for_inference(cfg.ckpt_path)
    out = export_hf(model, tokenizer, cfg.out_dir, overwrite=cfg.overwrite)
    print(f"exported to {out}")
    return str(out)


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig):
    run_cli(export, cfg)


if __name__ == "__main__":
    main()
