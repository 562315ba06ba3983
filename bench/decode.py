"""Decoding speed and memory: recurrent Hyena-RTF vs recomputation vs attention with a KV cache.

    python -m bench.decode                     # small preset, positions 128..16384, batch 1 and 8
    python -m bench.decode --preset tiny --positions 128 1024 --batch-sizes 1

For each position P (tokens already in the context) and batch size B, it times greedy decoding of
a few tokens, one ``model(...)`` call per token with ``logits_to_keep=1`` (LM head included), and
reports the median per-token latency after one warm-up token:

- ``recurrent``: Hyena-RTF with its recurrent state. The state is fast-forwarded to P by a parallel
  prefill of P random tokens (FFT, chunks of l_max) on one sequence, then copied to the B rows.
- ``recompute``: the same Hyena-RTF weights without state: every token re-runs the parallel
  forward over the prefix, truncated to the last l_max tokens (the only way to decode the
  convolutional model without a recurrence).
- ``attention``: the attention model of the same preset with rotary positions (learned ones stop at
  l_max) and transformers' DynamicCache. Its cache is filled with random keys and values of the right
  shape: the cost of a decode step depends on the cache length only.

All three share the backbone of the preset (``small``: D=256, 4 layers, l_max 512, GPT-2 vocabulary,
so the 50257-way LM head is a fixed part of every step). Memory is the size of the decoding
state: the recurrent state (constant), the key-value cache (grows with P) and, for recomputation,
the token window it must keep (l_max ids) plus the activations of a forward over it (not counted).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
from hyena_rtf.modeling.presets import preset_config


def _median(times: list[float]) -> float:
    times = sorted(times)
    return times[len(times) // 2]


def _decode(model, cache, batch: int, steps: int, vocab: int) -> float:
    """Median seconds per decoded token (one forward per token), after one warm-up step."""
    tok = torch.randint(0, vocab, (batch, 1))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        out = model(input_ids=tok, past_key_values=cache, use_cache=True, logits_to_keep=1)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        times.append(time.perf_counter() - start)
    return _median(times[1:])


def bench_recurrent(model, position: int, batch: int, steps: int) -> tuple[float, int]:
    vocab = model.config.vocab_size
    cache = model.new_cache()
    model(input_ids=torch.randint(0, vocab, (1, position)), past_key_values=cache, use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(batch)
    return _decode(model, cache, batch, steps, vocab), cache.memory_bytes()


def bench_recompute(model, position: int, batch: int, steps: int) -> tuple[float, int]:
    l_max, vocab = model.config.max_position_embeddings, model.config.vocab_size
    window = torch.randint(0, vocab, (batch, min(position, l_max)))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        logits = model(input_ids=window[:, -l_max:], logits_to_keep=1).logits  # (B, 1, V)
        window = torch.cat([window, logits[:, -1].argmax(-1, keepdim=True)], 1)
        times.append(time.perf_counter() - start)
    return _median(times[1:]), window[:, -l_max:].numel() * 8


def bench_attention(model, position: int, batch: int, steps: int) -> tuple[float, int]:
    cfg = model.config
    cache = model.new_cache()
    heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    for layer in range(cfg.num_hidden_layers):
        kv = torch.randn(2, batch, heads, position, head_dim)
        cache.update(kv[0], kv[1], layer)
    seconds = _decode(model, cache, batch, steps, cfg.vocab_size)
    kv_bytes = 2 * cfg.num_hidden_layers * batch * position * cfg.hidden_size * 4  # at position P
    return seconds, kv_bytes


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small", help="model size: tiny | small | 125m")
    p.add_argument("--positions", type=int, nargs="+", default=[128, 1024, 4096, 16384])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--steps", type=int, default=32, help="timed tokens per point (recurrent, attention)")
    p.add_argument("--recompute-steps", type=int, default=5, help="timed tokens per point (recompute)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rtf = HyenaRTFForCausalLM(preset_config(f"hyena_rtf-{args.preset}")).eval()
    attn = HyenaRTFForCausalLM(preset_config(f"attention-{args.preset}", position_embedding_type="rotary")).eval()
    cfg = rtf.config
    print(
        f"# decode benchmark: preset {args.preset} (D={cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
        f"l_max={cfg.max_position_embeddings}, state {cfg.state_size}, vocab {cfg.vocab_size}); "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n"
    )
    print("| method | batch | position | ms / token | tokens / s | state memory |")
    print("|---|---:|---:|---:|---:|---:|")
    methods = [
        ("recurrent (Hyena-RTF)", rtf, bench_recurrent, args.steps),
        ("recompute (Hyena-RTF, window l_max)", rtf, bench_recompute, args.recompute_steps),
        ("attention + KV cache", attn, bench_attention, args.steps),
    ]
    with torch.inference_mode():
        for batch in args.batch_sizes:
            for name, model, fn, steps in methods:
                for position in args.positions:
                    seconds, nbytes = fn(model, position, batch, steps)
                    print(
                        f"| {name} | {batch} | {position} | {seconds * 1e3:.2f} | {batch / seconds:.1f} "
                        f"| {nbytes / 2**20:.2f} MiB |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
