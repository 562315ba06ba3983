"""Export a training checkpoint as a self-contained Hugging Face model directory.

    python export.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt out_dir=hf_export
    # then: AutoModelForCausalLM.from_pretrained("hf_export", trust_remote_code=True)
"""

import hydra
from omegaconf import DictConfig

from hyena_rtf.errors import run_cli


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig):
    # Imported here so that --help and config errors do not pay for torch and Lightning.
    from hyena_rtf.tasks.export_task import export

    run_cli(export, cfg)


if __name__ == "__main__":
    main()
