"""Evaluate a checkpoint's perplexity on a whole split.

    python evaluate.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    python evaluate.py ckpt_path=hf_export/ data=wikitext103 split=test
    python evaluate.py ckpt_path=... data=files data.test_path=wiki.test.raw   # local text
    python evaluate.py ckpt_path=... stride=256          # sliding window instead of chunks
"""

import hydra
from omegaconf import DictConfig

from hyena_rtf.errors import run_cli


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig):
    # Imported here so that --help and config errors do not pay for torch and Lightning.
    from hyena_rtf.tasks.evaluate_task import evaluate

    result = run_cli(evaluate, cfg)
    return result.token_ppl


if __name__ == "__main__":
    main()
