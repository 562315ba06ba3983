"""Decoding speed and memory: recurrent Hyena-RTF vs recomputation vs attention with a KV cache.

    python -m bench decode --threads 1           # small preset, positions 128..16384, batch 1 and 8
    python -m bench decode --quick --threads 1   # positions up to 4096, fewer repeats
    python -m bench gpu                          # the 125m presets on CUDA (mode "gpu"), batch 1 and 16

Greedy decoding of the same backbone by each method of :data:`METHODS` (on CUDA also
:data:`CUDA_METHODS`), timed by :func:`bench.workloads.decoding_table`. Protocol and reading:
BENCHMARKS.md sections 2 and 6.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional

import torch

from .report import Report
from .workloads import attention_step, decoder_step, decoding_table, preset_model, recompute_step, recurrent_step

TITLE = "Decoding: recurrent Hyena-RTF vs recomputation vs attention KV cache"

MODES = {
    "full": dict(preset="small", positions=[128, 1024, 4096, 16384], batches=[1, 8], repeats=16, inner=1),
    "quick": dict(preset="small", positions=[128, 1024, 4096], batches=[1, 8], repeats=8, inner=1),
    "smoke": dict(preset="tiny", positions=[16, 200], batches=[1, 2], repeats=2, inner=1),
    # Several tokens per sample on a GPU, so the synchronisation at its end is amortised.
    "gpu": dict(preset="125m", positions=[128, 1024, 4096, 16384], batches=[1, 16], repeats=10, inner=8),
}

METHODS = {
    "recurrent (Hyena-RTF)": ("rtf", recurrent_step),
    "recompute (Hyena-RTF, window l_max)": ("rtf", recompute_step),
    "attention + KV cache": ("attention", attention_step),
}
CUDA_METHODS = {
    "recurrent, static buffers": ("rtf", partial(decoder_step, use_graph=False)),
    "recurrent, CUDA graph": ("rtf", partial(decoder_step, use_graph=True)),
}


def run(mode: str, device: torch.device, out: Optional[Path] = None, **overrides) -> Report:
    """Measure every (batch, position, method) of ``mode`` (``overrides`` replace its settings)."""
    settings = {**MODES[mode], **overrides}
    torch.manual_seed(0)
    preset = settings["preset"]
    models = {"rtf": preset_model(f"hyena_rtf-{preset}", device),
              "attention": preset_model(f"attention-{preset}", device, position_embedding_type="rotary")}
    methods = {**METHODS, **(CUDA_METHODS if device.type == "cuda" else {})}
    cfg = models["rtf"].config
    report = Report("decode", TITLE)
    report.parts.append(
        f"Preset `{preset}`: D={cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
        f"l_max={cfg.max_position_embeddings}, RTF state {cfg.state_size}, vocabulary {cfg.vocab_size} "
        f"(the LM head is part of every step). Median of {settings['repeats']} interleaved steps after one warm-up."
    )
    table = decoding_table("Per-token decoding latency and decoding-state memory",
                           {name: (models[key], prepare) for name, (key, prepare) in methods.items()},
                           settings["batches"], settings["positions"], device, settings["repeats"], inner=settings["inner"])
    table.notes.append("Targets and reading: BENCHMARKS.md sections 2 and 6 (recurrent faster than attention + KV cache at "
                       "position 4096, and flat in position: 'vs first position' within 1.2).")
    report.parts.append(table)
    return report
