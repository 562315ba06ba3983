"""Convert a safari-family Hyena checkpoint (safari, HyenaDNA, the RTF paper's runs) into a model of this project.

    python convert.py src=hyenadna-tiny-1k-seqlen out_dir=hyenadna_hf            # config.json + weights.ckpt
    python convert.py src=<safari run dir> out_dir=converted                      # .hydra/config.yaml + checkpoints/
    python convert.py src=hyena_small.pt config=configs/evals/hyena_small_150b.yaml out_dir=hyena_small_hf

Writes a Hugging Face directory (evaluate.py, generate.py, distill.py and export.py take it) with
the tokenizer and a conversion.json report. Bad input ends with one error line before anything is written.
"""

import hydra
from omegaconf import DictConfig

from hyena_rtf.errors import run_cli


@hydra.main(version_base="1.3", config_path="conf", config_name="convert")
def main(cfg: DictConfig):
    # Imported here so that --help and config errors do not pay for torch and Lightning.
    from hyena_rtf.tasks.convert_task import convert

    run_cli(convert, cfg)


if __name__ == "__main__":
    main()
