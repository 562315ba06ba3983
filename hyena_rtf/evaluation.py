"""Perplexity evaluation of a checkpoint on a whole split, with the protocol stated beside it."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .metrics import bits_per_byte, perplexity

log = logging.getLogger(__name__)

__all__ = ["EvalResult", "windows", "score_tokens"]


@dataclass
class EvalResult:
    """Perplexities of one split and the protocol that produced them."""

    split: str
    context: int
    stride: int
    tokens_scored: int
    nll_sum: float
    token_ppl: float
    word_ppl: Optional[float]
    bits_per_byte: Optional[float]
    words: Optional[int]
    bytes: Optional[int]

    def protocol(self) -> str:
        kind = "non-overlapping chunks" if self.stride == self.context else f"sliding window, stride {self.stride}"
        return (
            f"split={self.split}, context={self.context}, {kind}; every token after the first is scored "
            f"exactly once ({self.tokens_scored:,} tokens)"
        )

    def table(self) -> str:
        rows = [("token ppl", f"{self.token_ppl:.3f}")]
        if self.word_ppl is not None:
            rows.append((f"word ppl ({self.words:,} words)", f"{self.word_ppl:.3f}"))
        if self.bits_per_byte is not None:
            rows.append((f"bits per byte ({self.bytes:,} bytes)", f"{self.bits_per_byte:.4f}"))
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{name:<{width}} : {val}" for name, val in rows)


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Evaluation windows over a token stream of length ``n_tokens``.

    Each window is ``(start, end, first)``: inputs are tokens[start:end], targets tokens[start+1:end+1],
    and only targets at input positions >= ``first`` are scored, so every token after the first is
    scored exactly once. ``stride == context`` gives non-overlapping chunks (the paper's protocol);
    a smaller stride gives every scored token at least ``context - stride`` tokens of context.
    """
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be in [1, context={context}], got {stride}")
    out, scored_until, start = [], 0, 0
    last = n_tokens - 1  # number of targets
    while scored_until < last:
        end = min(start + context, last)
        out.append((start, end, scored_until))
        scored_until = end
        start += stride
    return out


@torch.no_grad()
def score_tokens(model, ids: np.ndarray, context: int, stride: int, batch_size: int = 8,
                 device: str | torch.device = "cpu", progress: bool = True) -> tuple[float, int]:
    """Total NLL (nats, fp64) and number of scored tokens of ``ids`` under ``model`` (HF causal LM)."""
    wins = windows(len(ids), context, stride)
    full = [w for w in wins if w[1] - w[0] == context]
    rest = [w for w in wins if w[1] - w[0] != context]
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[w] for w in rest]
    nll, count = 0.0, 0
    for batch in tqdm(batches, desc="evaluating", unit="batch", disable=not progress):
        x = torch.stack([torch.from_numpy(np.asarray(ids[s:e], dtype=np.int64)) for s, e, _ in batch]).to(device)
        y = torch.stack([torch.from_numpy(np.asarray(ids[s + 1 : e + 1], dtype=np.int64)) for s, e, _ in batch]).to(device)
        logits = model(input_ids=x).logits.float()  # (B, T, V)
        lp = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).double()
        for row, (s, _, first) in enumerate(batch):
            scored = lp[row, first - s :]
            nll += scored.sum().item()
            count += scored.numel()
    return nll, count


def evaluate_ids(model, ids: np.ndarray, split: str, context: int, stride: Optional[int], meta: Optional[dict],
                 batch_size: int, device, progress: bool = True) -> EvalResult:
    """Score a whole tokenised split and convert to token ppl, word ppl and bits per byte."""
    stride = context if stride is None else stride
    nll, count = score_tokens(model, ids, context, stride, batch_size, device, progress)
    words = meta.get("words") if meta else None
    nbytes = meta.get("bytes") if meta else None
    return EvalResult(
        split=split, context=context, stride=stride, tokens_scored=count, nll_sum=nll,
        token_ppl=perplexity(nll, count),
        word_ppl=math.exp(min(nll / words, 700.0)) if words else None,
        bits_per_byte=bits_per_byte(nll, nbytes) if nbytes else None,
        words=words, bytes=nbytes,
    )


def write_result(result: EvalResult, path: Path, overwrite: bool) -> None:
    """Write the result as JSON; refuse to replace an existing file unless ``overwrite``."""
    from .errors import UserError

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
    from hydra.utils import instantiate

    from .checkpoints import load_for_inference
    from .errors import UserError

    if not cfg.get("ckpt_path"):
        raise UserError("evaluate needs ckpt_path=<file.ckpt or exported model dir>")
    # Everything that can fail on the user's input fails before the model loads or text is tokenised.
    datamodule = instantiate(cfg.data)  # only its corpus is used: the checkpoint's tokenizer tokenises
    if hasattr(datamodule, "check"):
        datamodule.check([cfg.split])
    out = result_path(cfg)
    if out.exists() and not cfg.get("overwrite", False):
        raise UserError(f"{out} exists; pass overwrite=true or choose another output file (output=...)")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_for_inference(cfg.ckpt_path, device)
    if tokenizer is None:
        raise UserError(f"{cfg.ckpt_path} carries no tokenizer; export it with its tokenizer first")
    if getattr(datamodule, "recall_metrics", False):  # a synthetic recall task: accuracy, not perplexity
        from .synthetic import score_recall

        result = score_recall(model, datamodule, cfg.split, cfg.batch_size, device, progress=cfg.get("progress", True))
    else:
        result = _score_corpus(cfg, model, tokenizer, datamodule, device)
    print(f"\n{result.protocol()}\n{result.table()}\n", flush=True)
    write_result(result, out, cfg.get("overwrite", False))
    print(f"results written to {out}")
    return result


def _score_corpus(cfg, model, tokenizer, datamodule, device) -> EvalResult:
    """Token / word perplexity and bits per byte of the whole split of a text corpus."""
    from .data import text_stats, tokenize_text
    from .errors import UserError

    corpus = datamodule.corpus
    text = corpus.text(cfg.split)
    ids = tokenize_text(tokenizer, text, cfg.data.get("add_eos", False), desc=f"tokenizing {cfg.split}")
    l_max = model.config.max_position_embeddings
    context = cfg.context or l_max
    if context > l_max:
        raise UserError(f"context={context} exceeds l_max={l_max}: parallel scoring is limited to the kernel length")
    if not cfg.get("include_tail", True):
        n = (len(ids) - 1) // context * context + 1  # drop the incomplete last chunk, as training does
        ids = ids[:n]
    stats = text_stats(text)
    return evaluate_ids(model, ids, cfg.split, context, cfg.stride, stats, cfg.batch_size, device,
                        progress=cfg.get("progress", True))
