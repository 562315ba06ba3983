"""Decoding speed and memory: recurrent Hyena-RTF vs recomputation vs attention with a KV cache.

    python -m bench.decode                       # small preset, positions 128..16384, batch 1 and 8
    python -m bench.decode --quick --threads 1   # positions up to 4096, fewer repeats

For each position P (tokens already in the context) and batch size B it times greedy decoding,
one ``model(...)`` call per new token with ``logits_to_keep=1`` (so the LM head is part of every
step), for three ways of decoding the same backbone:

- ``recurrent``: Hyena-RTF with its recurrent state, fast-forwarded to P by a parallel prefill of
  P random tokens (FFT, chunks of l_max) on one sequence and copied to the B rows.
- ``recompute``: the same Hyena-RTF weights without state: every token re-runs the parallel
  forward over the prefix, truncated to the last l_max tokens (the only way to decode the
  convolutional model without a recurrence).
- ``attention``: the attention model of the same preset with rotary positions (learned ones stop at
  l_max) and transformers' DynamicCache, filled with random keys and values of the right shape
  (the cost of a step depends on the cache length only).

The three are timed interleaved (one step of each in turn, ``bench.timing.compare``), so load on a
shared machine hits them alike; the table shows medians. Memory is the decoding state: the
recurrent state (constant in P), the key-value cache (linear in P) and, for recomputation, the
window of l_max token ids it keeps (the activations of its forward pass are not counted).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
from hyena_rtf.modeling.presets import preset_config

from .report import Report, Table, header
from .timing import compare

TITLE = "Decoding: recurrent Hyena-RTF vs recomputation vs attention KV cache"

MODES = {
    "full": dict(preset="small", positions=[128, 1024, 4096, 16384], batches=[1, 8], repeats=16),
    "quick": dict(preset="small", positions=[128, 1024, 4096], batches=[1, 8], repeats=8),
    "smoke": dict(preset="tiny", positions=[16, 200], batches=[1, 2], repeats=2),
}


def _recurrent(model, position: int, batch: int, device):
    """A decode-step closure on a HyenaCache prefilled to ``position``; and the state bytes."""
    vocab = model.config.vocab_size
    cache = model.new_cache()
    prompt = torch.randint(0, vocab, (1, position), device=device)
    model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(batch)
    tok = [torch.randint(0, vocab, (batch, 1), device=device)]

    def step():
        out = model(input_ids=tok[0], cache=cache, use_cache=True, logits_to_keep=1)
        tok[0] = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)

    return step, cache.memory_bytes()


def _recompute(model, position: int, batch: int, device):
    l_max, vocab = model.config.max_position_embeddings, model.config.vocab_size
    window = [torch.randint(0, vocab, (batch, min(position, l_max)), device=device)]

    def step():
        logits = model(input_ids=window[0], logits_to_keep=1).logits  # (B, 1, V)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        window[0] = torch.cat([window[0], nxt], 1)[:, -l_max:]  # (B, <= l_max)

    return step, window[0].numel() * window[0].element_size()


def _attention(model, position: int, batch: int, device):
    cfg = model.config
    cache = model.new_cache()
    heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    for layer in range(cfg.num_hidden_layers):
        kv = torch.randn(2, batch, heads, position, head_dim, device=device)  # (2, B, H, P, d)
        cache.update(kv[0], kv[1], layer)
    tok = [torch.randint(0, cfg.vocab_size, (batch, 1), device=device)]
    kv_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))

    def step():
        out = model(input_ids=tok[0], cache=cache, use_cache=True, logits_to_keep=1)
        tok[0] = out.logits[:, -1].argmax(-1, keepdim=True)

    return step, kv_bytes


METHODS = {
    "recurrent (Hyena-RTF)": ("rtf", _recurrent),
    "recompute (Hyena-RTF, window l_max)": ("rtf", _recompute),
    "attention + KV cache": ("attention", _attention),
}


def run(mode: str, device: torch.device, out: Optional[Path] = None, **overrides) -> Report:
    """Measure every (batch, position, method) of ``mode`` and return the report."""
    settings = {**MODES[mode], **overrides}
    torch.manual_seed(0)
    models = {
        "rtf": HyenaRTFForCausalLM(preset_config(f"hyena_rtf-{settings['preset']}")).to(device).eval(),
        "attention": HyenaRTFForCausalLM(
            preset_config(f"attention-{settings['preset']}", position_embedding_type="rotary")
        ).to(device).eval(),
    }
    cfg = models["rtf"].config
    report = Report("decode", TITLE)
    report.parts.append(
        f"Preset `{settings['preset']}`: D={cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
        f"l_max={cfg.max_position_embeddings}, RTF state {cfg.state_size}, vocabulary {cfg.vocab_size} "
        f"(the LM head is part of every step). Median of {settings['repeats']} interleaved steps after one warm-up."
    )
    table = Table(
        "Per-token decoding latency and decoding-state memory",
        ["method", "batch", "position", "ms / token", "IQR ms", "tokens / s", "state MiB"],
    )
    with torch.inference_mode():
        for batch in settings["batches"]:
            for position in settings["positions"]:
                steps, sizes = {}, {}
                for name, (model_key, prepare) in METHODS.items():
                    steps[name], sizes[name] = prepare(models[model_key], position, batch, device)
                timings = compare(steps, repeats=settings["repeats"], warmup=1, device=device)
                for name, t in timings.items():
                    ms, iqr, mib = t.median * 1e3, t.iqr * 1e3, sizes[name] / 2**20
                    table.add(name, batch, position, ms, iqr, batch / t.median, mib)
    table.notes.append("Recurrent state memory is the same at every position; the KV cache grows linearly with it.")
    table.notes.append(
        "transformers' DynamicCache appends by concatenation, copying the whole cache each step: part of "
        "the attention cost at long positions is that copy."
    )
    report.parts.append(table)
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="positions up to 4096, fewer repeats")
    size.add_argument("--smoke", action="store_true", help="tiny model, two positions (checks that it runs)")
    p.add_argument("--preset", default=None, help="model size: tiny | small | 125m (default: the mode's)")
    p.add_argument("--positions", type=int, nargs="+", default=None)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, dest="batches")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    overrides = {k: v for k, v in vars(args).items() if k in ("preset", "positions", "batches", "repeats") and v}
    start = time.perf_counter()
    device = torch.device(args.device)
    report = run(mode, device, **overrides)
    command = "python -m bench.decode " + " ".join(sys.argv[1:] if argv is None else argv)
    head = header(device, command) + (
        f"\n- mode: {mode}, wall time {time.perf_counter() - start:.0f} s"
    )
    print(report.to_markdown(head), flush=True)


if __name__ == "__main__":
    main()
