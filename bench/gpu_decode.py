"""Decoding cells of the GPU benchmark: ms/token of recurrent Hyena-RTF vs attention with a KV cache.

Per (batch, position) the variants below are timed interleaved (``bench.timing.compare``, several
greedy steps per sample so that the synchronisation at the end of a sample is amortised):

- ``recurrent, model forward``: ``model(..., past_key_values=HyenaCache)`` per token, the path
  ``generate`` takes (the same closure as ``bench.decode``).
- ``recurrent, static buffers``: :class:`~hyena_rtf.modeling.graph_decode.RecurrentDecoder` run
  eagerly (the same step function without the model's output wrappers).
- ``recurrent, CUDA graph``: the same decoder replaying one captured graph per token (CUDA only;
  captured once per batch size, since the state does not grow with the position).
- ``attention + KV cache``: the attention model of the same size, rotary positions, transformers'
  DynamicCache filled with random keys/values of the right shape (``bench.decode``).

The floor per token is the memory traffic a step cannot avoid at the device's peak bandwidth:
every weight read once, plus the recurrent state read and written (Hyena-RTF) or the key-value
cache read (attention).
"""

from __future__ import annotations

from typing import Optional

import torch

from hyena_rtf.modeling.graph_decode import RecurrentDecoder
from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
from hyena_rtf.modeling.presets import preset_config

from .decode import _attention
from .gpu_cells import Cells, free_memory
from .timing import compare

__all__ = ["decode_pass", "VARIANTS"]

VARIANTS = ("recurrent, model forward", "recurrent, static buffers", "recurrent, CUDA graph", "attention + KV cache")


def _prefill(model, position: int, device) -> object:
    cache = model.new_cache()
    prompt = torch.randint(0, model.config.vocab_size, (1, position), device=device)
    model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache


def _model_forward_step(model, cache, batch: int, device):
    tok = [torch.randint(0, model.config.vocab_size, (batch, 1), device=device)]

    def step():
        out = model(input_ids=tok[0], past_key_values=cache, use_cache=True, logits_to_keep=1)
        tok[0] = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)

    return step


def _decoder_step(decoder: RecurrentDecoder, device):
    tok = [torch.randint(0, decoder.model.config.vocab_size, (decoder.batch_size, 1), device=device)]

    def step():
        tok[0] = decoder.step(tok[0]).argmax(-1, keepdim=True)  # (B, 1)

    return step


def _param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def decode_pass(cells: Cells, cfg: dict, device: torch.device, peak_bw: Optional[float]) -> None:
    """Section "decode": every (batch, position, variant) of ``cfg``, interleaved per (batch, position)."""
    size = cfg["size"]
    models = {}

    def load():
        torch.manual_seed(0)
        models["rtf"] = HyenaRTFForCausalLM(preset_config(f"hyena_rtf-{size}")).to(device).eval()
        models["attention"] = HyenaRTFForCausalLM(
            preset_config(f"attention-{size}", position_embedding_type="rotary")).to(device).eval()
        return {}

    if cells.run("decode_prepare", load, estimate_s=cfg["build_s"], what="models")["status"] != "ok":
        return
    rtf, attn = models["rtf"], models["attention"]
    use_graph = device.type == "cuda"
    variants = [v for v in VARIANTS if use_graph or v != "recurrent, CUDA graph"]
    with torch.inference_mode():
        for batch in cfg["batches"]:
            decoders = {"recurrent, static buffers": RecurrentDecoder(rtf, batch, use_graph=False)}
            if use_graph:
                decoders["recurrent, CUDA graph"] = RecurrentDecoder(rtf, batch, use_graph=True)
            for position in cfg["positions"]:
                steps, state_bytes = {}, {}
                for variant in variants:
                    def prepare(variant=variant):
                        if variant == "attention + KV cache":
                            step, state_bytes[variant] = _attention(attn, position, batch, device)
                        else:
                            cache = _prefill(rtf, position, device)
                            cache.batch_repeat_interleave(batch)
                            state_bytes[variant] = cache.memory_bytes()
                            if variant == "recurrent, model forward":
                                step = _model_forward_step(rtf, cache, batch, device)
                            else:
                                decoders[variant].load(cache.states, position)
                                step = _decoder_step(decoders[variant], device)
                        step()  # a first step here: a failure (or the graph capture) stays in this cell
                        steps[variant] = step
                        return {}

                    rec = cells.run("decode_prepare", prepare, estimate_s=cfg["prepare_s"], variant=variant,
                                    batch=batch, position=position)
                    if rec["status"] != "ok":
                        cells.record("decode", variant=variant, batch=batch, position=position, status=rec["status"])
                if not steps:
                    continue
                timings: dict = {}

                def timed():
                    timings.update(compare(steps, repeats=cfg["repeats"], warmup=2, inner=cfg["inner"], device=device))
                    return {}

                rec = cells.run("decode_timing", timed, estimate_s=cfg["timing_s"], batch=batch, position=position)
                for variant in steps:
                    row = dict(variant=variant, batch=batch, position=position)
                    if variant not in timings:
                        cells.record("decode", **row, status=rec["status"])
                        continue
                    t = timings[variant]
                    model = attn if variant.startswith("attention") else rtf
                    # Recurrent: the state is read and written once per step; attention: the cache read.
                    traffic = _param_bytes(model) + (state_bytes[variant] if variant.startswith("attention")
                                                     else 2 * state_bytes[variant])
                    cells.record("decode", **row, ms_per_token=t.median * 1e3, iqr_ms=t.iqr * 1e3,
                                 tokens_per_s=batch / t.median, state_mib=state_bytes[variant] / 2**20,
                                 floor_ms=traffic / peak_bw * 1e3 if peak_bw else None)
                steps.clear()
                free_memory(device)
            decoders.clear()
            free_memory(device)
