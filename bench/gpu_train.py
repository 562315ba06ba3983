"""Training-step cells of the GPU benchmark: the three 125M recipes, eager and ``torch.compile``.

A step is forward under bf16 autocast, fp32 cross-entropy over the full vocabulary, backward and
a fused AdamW step (what the Lightning module runs, minus logging). The number of tokens per step
is fixed across sequence lengths (batch = tokens / L), so tokens/s compare directly.

Two passes, so that the cheap eager numbers are never starved by compilation:

1. Eager, every L: the three mixers built at that L, timed interleaved.
2. Compiled, L in priority order: each mixer is compiled (first call timed: compile time, reported
   separately) if the estimate fits the budget; the eager and compiled variants of every mixer at
   that L are then timed in one interleaved loop, so "compiled / eager" is a side-by-side ratio.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
import torch.nn.functional as F

from hyena_rtf.training.flops import train_flops_per_token
from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
from hyena_rtf.modeling.presets import preset_config

from .gpu_cells import Cells, free_memory
from .timing import compare, peak_memory, synchronize

__all__ = ["MIXERS", "build", "make_step", "step_floor", "eager_pass", "compile_pass"]

MIXERS = ("hyena_rtf", "hyena", "attention")

# Lower bound on memory traffic per parameter per step: the forward reads each fp32 weight (4 B);
# fused AdamW reads parameter, gradient and both moments and writes parameter and moments (28 B).
PARAM_BYTES_PER_STEP = 32
# Estimate of the fp32 FFT traffic of one long convolution, per token and channel, forward plus
# backward: five real FFT passes (rfft u, irfft y; rfft grad, irfft grad_u, irfft grad_k) that each
# read and write about n = 2L reals of 4 B (16 B per token each, 80 B), and three complex products
# that read two spectra and write one (24 B per token each, 72 B). Used for a floor, not measured.
FFT_BYTES_PER_TOKEN_CHANNEL = 152


def build(mixer: str, size: str, L: int, device: torch.device, overrides: Optional[dict] = None) -> HyenaRTFForCausalLM:
    """The ``<mixer>-<size>`` preset with context ``L`` (and ``overrides``), on ``device``, train mode."""
    config = preset_config(f"{mixer}-{size}", max_position_embeddings=L, **(overrides or {}))
    return HyenaRTFForCausalLM(config).to(device).train()


def make_step(model: torch.nn.Module, net: torch.nn.Module, batch: int, L: int, device: torch.device,
              amp_dtype: Optional[torch.dtype]):
    """A closure running one training step of ``net`` (``model`` or its compiled wrapper) with its
    own fused AdamW over ``model``'s parameters; and the bytes of that optimizer's state."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, L + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]

    def step():
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = net(input_ids=x).logits  # (B, L, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step, optimizer


def _state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    opt = sum(t.numel() * t.element_size() for st in optimizer.state.values() for t in st.values()
              if torch.is_tensor(t))
    return params + opt


def step_floor(model: torch.nn.Module, L: int, tokens: int, peak_flops: Optional[float],
               peak_bw: Optional[float]) -> dict[str, Any]:
    """Analytic floor of one step: FLOPs (``hyena_rtf.training.flops``, FFTs included), a lower bound on
    bytes (weights and AdamW traffic, plus the estimated FFT traffic of the long convolutions), and
    the time each would take at the device's peak (None when the peak is unknown)."""
    flops = train_flops_per_token(model, L) * tokens
    n_params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    long_convs = 0 if cfg.mixer == "attention" else (cfg.hyena_order - 1) * cfg.num_hidden_layers
    fft_bytes = FFT_BYTES_PER_TOKEN_CHANNEL * cfg.hidden_size * long_convs * tokens
    step_bytes = PARAM_BYTES_PER_STEP * n_params + fft_bytes
    return {
        "step_tflop": flops / 1e12,
        "step_gb_floor": step_bytes / 1e9,
        "floor_ms_flops": flops / peak_flops * 1e3 if peak_flops else None,
        "floor_ms_bytes": step_bytes / peak_bw * 1e3 if peak_bw else None,
        "params": n_params,
    }


def _first_call(step, device) -> float:
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def eager_pass(cells: Cells, cfg: dict, device: torch.device, amp_dtype, peak_flops, peak_bw) -> None:
    """Section "train": every mixer at every L, eager, interleaved per L."""
    tokens = cfg["tokens"]
    for L in cfg["lengths"]:
        batch = max(tokens // L, 1)
        steps, info = {}, {}
        for mixer in MIXERS:
            def prepare(mixer=mixer):
                torch.manual_seed(0)
                model = build(mixer, cfg["size"], L, device, cfg.get("overrides"))
                step, opt = make_step(model, model, batch, L, device, amp_dtype)
                first = _first_call(step, device)
                steps[mixer] = step
                info[mixer] = {"model": model, "opt": opt, "first_s": first}
                return {}

            rec = cells.run("train_prepare", prepare, estimate_s=cfg["build_s"], mixer=mixer, L=L, compiled=False)
            if rec["status"] != "ok":
                cells.record("train", mixer=mixer, L=L, batch=batch, compiled=False, status=rec["status"])
        if not steps:
            continue
        timings: dict = {}

        def timed():
            timings.update(compare(steps, repeats=cfg["repeats"], warmup=cfg["warmup"], device=device))
            return {}

        estimate = sum(i["first_s"] for i in info.values()) * (cfg["repeats"] + cfg["warmup"] + 1)
        rec = cells.run("train_timing", timed, estimate_s=estimate, L=L, compiled=False)
        alone = set()
        if rec["status"] != "ok" and not rec["status"].startswith("skipped"):
            # One mixer failing inside the interleaved loop (memory held by the others) must not
            # cost the rest: time each alone, and say so in its row.
            for mixer, step in steps.items():
                def timed_alone(mixer=mixer, step=step):
                    timings.update(compare({mixer: step}, repeats=cfg["repeats"], warmup=cfg["warmup"], device=device))
                    alone.add(mixer)
                    return {}

                cells.run("train_timing", timed_alone, estimate_s=info[mixer]["first_s"] * (cfg["repeats"] + 2),
                          L=L, compiled=False, mixer=mixer)
        for mixer, step in steps.items():
            model = info[mixer]["model"]
            row = dict(mixer=mixer, L=L, batch=batch, tokens=batch * L, compiled=False)
            if mixer not in timings:
                cells.record("train", **row, status=rec["status"])
                continue
            _record_timed(cells, row, model, info[mixer]["opt"], step, timings[mixer], L, device, peak_flops, peak_bw,
                          timed_alone=mixer in alone)
        steps.clear()
        info.clear()
        free_memory(device)


def _record_timed(cells, row, model, opt, step, t, L, device, peak_flops, peak_bw, **extra) -> None:
    tokens = row["tokens"]
    floor = step_floor(model, L, tokens, peak_flops, peak_bw)

    def measure():
        act = peak_memory(step, device)
        state = _state_bytes(model, opt)
        mfu = floor["step_tflop"] * 1e12 / t.median / peak_flops if peak_flops else None
        return dict(step_ms=t.median * 1e3, iqr_ms=t.iqr * 1e3, tokens_per_s=tokens / t.median, mfu=mfu,
                    state_gb=state / 1e9, step_peak_gb=(state + act) / 1e9, **floor, **extra)

    cells.run("train", measure, **row)


def compile_pass(cells: Cells, cfg: dict, device: torch.device, amp_dtype, peak_flops, peak_bw) -> None:
    """Section "train" (compiled rows) and "compile": budget permitting, per L in priority order."""
    tokens = cfg["tokens"]
    seen: list[float] = []  # compile times so far: the slowest one is the next estimate
    for L in cfg["compile_lengths"]:
        batch = max(tokens // L, 1)
        steps, info = {}, {}
        for mixer in MIXERS:
            def prepare(mixer=mixer):
                torch.manual_seed(0)
                model = build(mixer, cfg["size"], L, device, cfg.get("overrides"))
                eager, opt_e = make_step(model, model, batch, L, device, amp_dtype)
                eager_s = min(_first_call(eager, device), _first_call(eager, device))
                compiled_net = torch.compile(model)
                comp, opt_c = make_step(model, compiled_net, batch, L, device, amp_dtype)
                first = _first_call(comp, device)
                steps[(mixer, False)], steps[(mixer, True)] = eager, comp
                info[mixer] = {"model": model, "opt": {False: opt_e, True: opt_c}, "step_s": eager_s}
                return {"compile_s": max(first - eager_s, 0.0), "first_compiled_call_s": first}

            estimate = 1.25 * max(seen) if seen else cfg["compile_s"]  # margin: compile cannot be interrupted
            rec = cells.run("compile", prepare, estimate_s=estimate + cfg["build_s"], mixer=mixer, L=L)
            if rec.get("compile_s") is not None:
                seen.append(rec["compile_s"])
            if rec["status"] != "ok":
                cells.record("train", mixer=mixer, L=L, batch=batch, tokens=batch * L, compiled=True,
                             status=rec["status"])
        if not steps:
            continue
        timings: dict = {}

        def timed():
            timings.update(compare(steps, repeats=cfg["repeats"], warmup=cfg["warmup"], device=device))
            return {}

        est_time = sum(2 * i["step_s"] for i in info.values()) * (cfg["repeats"] + cfg["warmup"] + 1)
        rec = cells.run("train_timing", timed, estimate_s=est_time, L=L, compiled=True)
        for mixer in info:
            model = info[mixer]["model"]
            row = dict(mixer=mixer, L=L, batch=batch, tokens=batch * L, compiled=True)
            if (mixer, True) not in timings:
                cells.record("train", **row, status=rec["status"])
                continue
            t_c, t_e = timings[(mixer, True)], timings[(mixer, False)]
            _record_timed(cells, row, model, info[mixer]["opt"][True], steps[(mixer, True)], t_c, L, device,
                          peak_flops, peak_bw, eager_ms_same_loop=t_e.median * 1e3,
                          speedup_vs_eager=t_e.median / t_c.median)
        steps.clear()
        info.clear()
        torch._dynamo.reset()  # drop compiled code and guards of this L before the next
        free_memory(device)
