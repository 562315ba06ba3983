"""What the benchmarks time: preset models, one training step, and one decoded token per method.

Each function returns a closure that does one unit of work, so that ``bench.timing.compare`` can
interleave the variants a table compares. Every benchmark that times the same thing uses the same
closure here (decoding speed in ``decode``, ``distill`` and ``convert``, all through
:func:`decoding_table`; the training step in ``train_speed`` and ``memory``), so their numbers
measure the same work.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from hyena_rtf.modeling.graph_decode import RecurrentDecoder
from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
from hyena_rtf.modeling.presets import preset_config

from .report import Table
from .timing import compare

__all__ = ["preset_model", "train_step", "recurrent_step", "recompute_step", "attention_step", "decoder_step",
           "decoding_table"]

Step = Callable[[], object]


def preset_model(name: str, device: torch.device, train: bool = False, **overrides) -> HyenaRTFForCausalLM:
    """The preset ``name`` (``<mixer>-<size>``, ``hyena_rtf.modeling.presets``) with ``overrides``."""
    model = HyenaRTFForCausalLM(preset_config(name, **overrides)).to(device)
    return model.train(train)


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, net: Optional[torch.nn.Module] = None,
               amp_dtype: Optional[torch.dtype] = None) -> tuple[Step, torch.optim.Optimizer]:
    """One training step on the batch ``x`` -> ``y`` (B, L): forward (``net``, default ``model``;
    e.g. its compiled wrapper) under optional autocast, fp32 cross-entropy, backward, AdamW (fused
    on CUDA) over ``model``'s parameters. Returns the closure and its optimizer."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=x.device.type == "cuda")
    net = model if net is None else net

    def step():
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = net(input_ids=x).logits  # (B, L, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step, optimizer


def _greedy(model, cache, tok: list) -> Step:
    """One ``model(...)`` call per token with the LM head (``logits_to_keep=1``), fed its own argmax."""

    def step():
        out = model(input_ids=tok[0], cache=cache, use_cache=True, logits_to_keep=1)
        tok[0] = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)

    return step


def _prefilled(model, position: int, batch: int, device):
    """A HyenaCache fast-forwarded to ``position`` by a parallel prefill of one sequence of random
    tokens, copied to ``batch`` rows."""
    cache = model.new_cache()
    prompt = torch.randint(0, model.config.vocab_size, (1, position), device=device)
    model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(batch)
    return cache


def recurrent_step(model, position: int, batch: int, device) -> tuple[Step, int]:
    """Recurrent decoding from a state at ``position``; and the state's bytes (constant in position)."""
    cache = _prefilled(model, position, batch, device)
    tok = [torch.randint(0, model.config.vocab_size, (batch, 1), device=device)]
    return _greedy(model, cache, tok), cache.memory_bytes()


def recompute_step(model, position: int, batch: int, device) -> tuple[Step, int]:
    """Decoding without state: every token re-runs the parallel forward over the last l_max tokens
    (the only way to decode a convolutional model without a recurrence); and the window's bytes."""
    l_max, vocab = model.config.max_position_embeddings, model.config.vocab_size
    window = [torch.randint(0, vocab, (batch, min(position, l_max)), device=device)]

    def step():
        logits = model(input_ids=window[0], logits_to_keep=1).logits  # (B, 1, V)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        window[0] = torch.cat([window[0], nxt], 1)[:, -l_max:]  # (B, <= l_max)

    return step, window[0].numel() * window[0].element_size()


def attention_step(model, position: int, batch: int, device) -> tuple[Step, int]:
    """Attention decoding with transformers' DynamicCache holding ``position`` random keys and values
    (a step's cost depends on the cache's length only); and the cache's bytes."""
    cfg = model.config
    cache = model.new_cache()
    heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    for layer in range(cfg.num_hidden_layers):
        kv = torch.randn(2, batch, heads, position, head_dim, device=device)  # (2, B, H, P, d)
        cache.update(kv[0], kv[1], layer)
    kv_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    tok = [torch.randint(0, cfg.vocab_size, (batch, 1), device=device)]
    return _greedy(model, cache, tok), kv_bytes


def decoder_step(model, position: int, batch: int, device, use_graph: bool) -> tuple[Step, int]:
    """Recurrent decoding through :class:`RecurrentDecoder` (static state buffers; with ``use_graph``
    one CUDA graph replay per token), from the same prefilled state as :func:`recurrent_step`."""
    cache = _prefilled(model, position, batch, device)
    decoder = RecurrentDecoder(model, batch, use_graph=use_graph)
    decoder.load(cache.states, position)
    tok = [torch.randint(0, model.config.vocab_size, (batch, 1), device=device)]

    def step():
        tok[0] = decoder.step(tok[0]).argmax(-1, keepdim=True)  # (B, 1)

    return step, cache.memory_bytes()


def decoding_table(title: str, methods: dict[str, tuple[torch.nn.Module, Callable]], batches: Sequence[int],
                   positions: Sequence[int], device, repeats: int, warmup: int = 1, inner: int = 1,
                   together: bool = False) -> Table:
    """Greedy decoding by every method (name -> (model, one of the ``*_step`` functions above)) at
    every batch size and position: ms per token, tokens/s, the decoding state's MiB, the first
    method's time over this one's at the same batch and position, and this method's time over its
    own at the first position. The methods of one (batch, position) are timed interleaved; with
    ``together``, all (method, position) pairs of a batch size in one loop."""
    table = Table(title, ["method", "batch", "position", "ms / token", "IQR ms", "tokens / s", "state MiB",
                          "speed-up vs first method", "vs first position"])
    first = next(iter(methods))
    with torch.inference_mode():
        for batch in batches:
            timings, sizes = {}, {}
            for group in [positions] if together else [[p] for p in positions]:
                steps = {}
                for position in group:
                    for name, (model, prepare) in methods.items():
                        steps[(name, position)], sizes[(name, position)] = prepare(model, position, batch, device)
                timings.update(compare(steps, repeats=repeats, warmup=warmup, inner=inner, device=device))
            for (name, position), t in timings.items():
                table.add(name, batch, position, t.median * 1e3, t.iqr * 1e3, batch / t.median, sizes[(name, position)] / 2**20,
                          timings[(first, position)].median / t.median, t.median / timings[(name, positions[0])].median)
    return table
