"""Tokenise a corpus into the token cache ahead of training (optional: train.py does it too).

    python data/prepare.py                          # the offline Shakespeare corpus, BPE 4096
    python data/prepare.py data=wikitext103         # WikiText-103 with GPT-2 BPE (needs the hub)
    python data/prepare.py data=files data.train_path=wiki.train.raw data.validation_path=wiki.valid.raw
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyena_rtf.errors import run_cli  # noqa: E402


def prepare(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    dm.prepare_data()
    print(f"cache: {dm.entry}")
    for split in dm.available_splits():
        m = dm.meta(split)
        print(f"{split:<10} {m['tokens']:>12,} tokens {m['words']:>12,} words {m['bytes']:>14,} bytes")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_cli(prepare, cfg)


if __name__ == "__main__":
    main()
