"""Train a Hyena-RTF language model.

    python train.py                                  # quickstart: small model, offline corpus, CPU
    python train.py experiment=wt103_hyena_rtf       # the paper's WikiText-103 recipe
    python train.py model=attention_small trainer=gpu data.batch_size=32
    python train.py ckpt_path=last                   # resume the latest run

Configuration lives in conf/ (see conf/train.yaml); every value can be overridden as key=value.
"""

import hydra
from omegaconf import DictConfig

from hyena_rtf.errors import run_cli


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig):
    # Imported here so that --help and config errors do not pay for torch and Lightning.
    from hyena_rtf.tasks.train_task import train

    metrics = run_cli(train, cfg)
    return metrics.get(cfg.get("optimized_metric")) if metrics else None


if __name__ == "__main__":
    main()
