"""Generate text with recurrent decoding (prompt prefilled in parallel, then O(1) steps per token).

    python generate.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt prompt="KING:"
    python generate.py ckpt_path=hf_export/ prompt="The" do_sample=false max_new_tokens=50
"""

import hydra
from omegaconf import DictConfig

from hyena_rtf.errors import run_cli


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig):
    # Imported here so that --help and config errors do not pay for torch and Lightning.
    from hyena_rtf.tasks.generate_task import generate

    run_cli(generate, cfg)


if __name__ == "__main__":
    main()
