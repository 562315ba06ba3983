"""The generate task: prompt -> streamed text through recurrent decoding (``model.generate``)."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import torch
from transformers import TextStreamer

from ..errors import UserError

__all__ = ["encode_prompt", "generate_text"]


def encode_prompt(tokenizer, prompt: Optional[str], prompt_ids: Optional[Sequence[int]], vocab_size: int) -> torch.Tensor:
    """Token ids (1, T) of a text prompt or an explicit id list, validated against the vocabulary."""
    if (prompt is None) == (prompt_ids is None):
        raise UserError("give exactly one of prompt='text' or prompt_ids=[ids]")
    if prompt_ids is not None:
        ids = [int(i) for i in prompt_ids]
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise UserError(f"prompt_ids {bad[:5]} are outside the vocabulary [0, {vocab_size}); fix the ids")
    else:
        if tokenizer is None:
            raise UserError("this checkpoint has no tokenizer; pass prompt_ids=[...] instead of prompt")
        ids = tokenizer(prompt).input_ids
    if not ids:
        raise UserError("the prompt is empty; give at least one token (e.g. prompt='The')")
    return torch.tensor([ids], dtype=torch.long)


def generate_text(
    model,
    tokenizer,
    input_ids: torch.Tensor,
    max_new_tokens: int = 100,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    stream: bool = True,
) -> torch.Tensor:
    """Generate with HF ``generate`` (prefill + recurrent steps), streaming text to stdout."""
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if do_sample and temperature <= 0:
        raise UserError(f"temperature must be > 0 when sampling, got {temperature}")
    streamer = TextStreamer(tokenizer) if (stream and tokenizer is not None) else None
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, repetition_penalty=repetition_penalty)
    if do_sample:
        kwargs.update(temperature=temperature, top_k=top_k, top_p=top_p)
    pad = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    with torch.no_grad():
        out = model.generate(input_ids.to(model.device), streamer=streamer, pad_token_id=pad, **kwargs)
    if streamer is None and tokenizer is None:
        print(out[0].tolist(), file=sys.stdout)
    return out


def generate(cfg) -> str:
    """The generate task: load a checkpoint or HF directory, stream a continuation of the prompt."""
    from pathlib import Path

    from ..checkpoints.loading import load_for_inference

    if not cfg.get("ckpt_path"):
        raise UserError("generate needs ckpt_path=<file.ckpt or exported model dir>")
    if cfg.get("seed") is not None:
        torch.manual_seed(cfg.seed)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_for_inference(cfg.ckpt_path, device)
    prompt_ids = list(cfg.prompt_ids) if cfg.get("prompt_ids") is not None else None
    prompt = cfg.get("prompt")
    if prompt is None and prompt_ids is None:
        prompt = tokenizer.eos_token if tokenizer is not None else None
        if prompt is None:
            raise UserError("give prompt='text' or prompt_ids=[...]")
    ids = encode_prompt(tokenizer, prompt, prompt_ids, model.config.vocab_size)
    out = generate_text(
        model, tokenizer, ids, cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_k, cfg.top_p,
        cfg.repetition_penalty,
    )
    text = tokenizer.decode(out[0], skip_special_tokens=True) if tokenizer is not None else str(out[0].tolist())
    print(flush=True)
    if cfg.get("save", True):
        path = Path(cfg.paths.output_dir) / "generation.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
    return text
