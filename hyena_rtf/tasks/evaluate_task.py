"""The evaluate task behind ``evaluate.py``: a checkpoint's score on a whole split, written as JSON
beside the checkpoint with the protocol that produced it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from hydra.utils import instantiate

from ..checkpoints.loading import load_for_inference
from ..data.protocol import ScoreOptions, TaskData
from ..errors import UserError
from ..evaluation.perplexity import EvalResult

__all__ = ["evaluate", "result_path", "write_result"]


def write_result(result: EvalResult, path: Path, overwrite: bool) -> None:
    """Write the result as JSON; refuse to replace an existing file unless ``overwrite``."""
    from ..errors import UserError

    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass overwrite=true or choose another output file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({**asdict(result), "protocol": result.protocol()}, indent=2))
    tmp.replace(path)


def result_path(cfg) -> Path:
    """Where the results JSON goes: ``output`` if given; for a checkpoint of a training run
    (``<run>/checkpoints/<name>.ckpt``) that run's directory, as ``eval_<split>_<name>.json``
    (plus ``_context<N>``/``_stride<N>`` when those are set); otherwise evaluate's own run
    directory (``logs/eval/runs/<timestamp>/eval_<split>.json``)."""
    if cfg.get("output"):
        return Path(cfg.output)
    ckpt = Path(cfg.ckpt_path)
    if ckpt.suffix == ".ckpt" and ckpt.parent.name == "checkpoints":
        protocol = "".join(f"_{k}{cfg[k]}" for k in ("context", "stride") if cfg.get(k))
        return ckpt.parent.parent / f"eval_{cfg.split}_{ckpt.stem}{protocol}.json"
    return Path(cfg.paths.output_dir) / f"eval_{cfg.split}.json"


def evaluate(cfg) -> EvalResult:
    """The evaluate task: score one split of ``cfg.data``'s corpus with a checkpoint's model.

    The split is tokenised with the checkpoint's own tokenizer; word and byte counts come from
    the raw text, so word ppl and bits per byte compare across tokenizers.
    """
    if not cfg.get("ckpt_path"):
        raise UserError("evaluate needs ckpt_path=<file.ckpt or exported model dir>")
    # Everything that can fail on the user's input fails before the model loads or text is tokenised.
    datamodule = instantiate(cfg.data)  # its text or sequences; the checkpoint's tokenizer tokenises
    if not isinstance(datamodule, TaskData):
        raise UserError(f"data._target_={cfg.data.get('_target_')} is not a hyena_rtf.data.protocol.TaskData")
    datamodule.check([cfg.split])
    out = result_path(cfg)
    if out.exists() and not cfg.get("overwrite", False):
        raise UserError(f"{out} exists; pass overwrite=true or choose another output file (output=...)")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_for_inference(cfg.ckpt_path, device)
    if tokenizer is None:
        raise UserError(f"{cfg.ckpt_path} carries no tokenizer; export it with its tokenizer first")
    options = ScoreOptions(batch_size=cfg.batch_size, device=device, context=cfg.get("context"), stride=cfg.get("stride"),
                           include_tail=cfg.get("include_tail", True), progress=cfg.get("progress", True))
    result = datamodule.score(model, tokenizer, cfg.split, options)
    print(f"\n{result.protocol()}\n{result.table()}\n", flush=True)
    write_result(result, out, cfg.get("overwrite", False))
    print(f"results written to {out}")
    return result
