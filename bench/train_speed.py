"""LM training throughput of the three mixers on one backbone: tokens/s and peak memory vs length.

    python -m bench train_speed --quick --threads 1   # tiny preset, L = 256..4096: about 10 s
    python -m bench train_speed --threads 1           # small preset, L = 1024..16384: about 6 min
    python -m bench gpu                               # the 125m presets on CUDA (mode "gpu")

One training step (``bench.workloads.train_step``) of each mixer's preset model with
``max_position_embeddings = L``, the three interleaved at each L; on CUDA also MFU, the analytic
floors of :func:`step_floor` and ``torch.compile`` beside eager. A mixer whose first step runs out
of memory or over the mode's time cap is recorded as such. Protocol: BENCHMARKS.md sections 3 and 6.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from hyena_rtf.training.flops import train_flops_per_token
from hyena_rtf.modeling.presets import preset_config

from .report import Line, Panel, Report, Table, save_plot
from .timing import compare, first_call, is_oom, peak_memory
from .workloads import preset_model, train_step

# The three mixers of the paper's comparison (the config also accepts hyena_s4d; see bench/s4d.py).
MIXERS = ("hyena_rtf", "hyena", "attention")

TITLE = "LM training throughput: hyena_rtf vs hyena (implicit filter) vs attention"

NO_DROPOUT = dict(embed_dropout=0.0, resid_dropout=0.0, mixer_dropout=0.0)
CPU = dict(tokens=None, overrides=dict(vocab_size=4096, **NO_DROPOUT), amp=None, compile_lengths=())
SIZES = {
    "full": dict(CPU, preset="small", lengths=(1024, 4096, 16384), repeats=3, warmup=1, cap_s=120.0),
    "quick": dict(CPU, preset="tiny", lengths=(256, 1024, 4096), repeats=5, warmup=1, cap_s=30.0),
    "smoke": dict(CPU, preset="tiny", lengths=(32, 64), repeats=2, warmup=1, cap_s=30.0),
    "gpu": dict(preset="125m", lengths=(1024, 4096, 16384), tokens=32768, overrides={}, amp=torch.bfloat16,
                compile_lengths=(4096,), repeats=10, warmup=2, cap_s=60.0),
}

MB = 1e-6
# Dense bf16 tensor-core peak and HBM bandwidth from the vendors' data sheets, by a substring of
# the device name; MFU and floors are left out on devices not listed (BENCH_PEAK_TFLOPS /
# BENCH_PEAK_TBS set them by hand).
PEAKS = {"H200": (989.4e12, 4.8e12), "H100": (989.4e12, 3.35e12), "A100": (312e12, 2.0e12)}
# Lower bound on memory traffic per parameter per step: the forward reads each fp32 weight (4 B);
# fused AdamW reads parameter, gradient and both moments and writes parameter and moments (28 B).
PARAM_BYTES_PER_STEP = 32
# Estimate of the fp32 FFT traffic of one long convolution, per token and channel, forward plus
# backward: five real FFT passes that each read and write about n = 2L reals of 4 B (80 B), and
# three complex products that read two spectra and write one (72 B). Used for a floor, not measured.
FFT_BYTES_PER_TOKEN_CHANNEL = 152


def device_peaks(device: torch.device) -> tuple[Optional[float], Optional[float]]:
    """(bf16 FLOP/s, bytes/s) of ``device``, None where unknown."""
    flops = bw = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        flops, bw = next((v for k, v in PEAKS.items() if k in name), (None, None))
    env = os.environ.get
    return (float(env("BENCH_PEAK_TFLOPS")) * 1e12 if env("BENCH_PEAK_TFLOPS") else flops,
            float(env("BENCH_PEAK_TBS")) * 1e12 if env("BENCH_PEAK_TBS") else bw)


def step_floor(model: torch.nn.Module, L: int, tokens: int, peak_flops: float, peak_bw: float) -> tuple[float, float]:
    """Analytic floor of one training step in seconds: (FLOPs at the peak, bytes at the peak).

    FLOPs: ``hyena_rtf.training.flops`` (FFTs included, 3x forward). Bytes, a lower bound: the weights and
    AdamW traffic, plus the estimated FFT traffic of the long convolutions."""
    cfg = model.config
    long_convs = 0 if cfg.mixer == "attention" else (cfg.hyena_order - 1) * cfg.num_hidden_layers
    step_bytes = (PARAM_BYTES_PER_STEP * sum(p.numel() for p in model.parameters())
                  + FFT_BYTES_PER_TOKEN_CHANNEL * cfg.hidden_size * long_convs * tokens)
    return train_flops_per_token(model, L) * tokens / peak_flops, step_bytes / peak_bw


def _prepare(cfg: dict, mixer: str, L: int, device: torch.device, compiled: bool):
    """The step closure of one (mixer, L) after its first call, its status, and the model."""
    torch.manual_seed(0)
    model = preset_model(f"{mixer}-{cfg['preset']}", device, train=True, max_position_embeddings=L, **cfg["overrides"])
    batch = max(cfg["tokens"] // L, 1) if cfg["tokens"] else 1
    ids = torch.randint(0, model.config.vocab_size, (batch, L + 1), device=device)
    step, _ = train_step(model, ids[:, :-1], ids[:, 1:], torch.compile(model) if compiled else None, cfg["amp"])
    try:
        seconds = first_call(step, device)
    except Exception as err:  # noqa: BLE001 - CPU allocation failures surface as plain RuntimeErrors
        if not is_oom(err):
            raise
        return None, "out of memory", model
    if compiled:  # the first call compiles: its time, less an eager step's, is the compile time
        return step, f"ok (compile + first step {seconds:.0f} s)", model
    if seconds > cfg["cap_s"]:
        return None, f"over time cap ({seconds:.0f} s for one step > {cfg['cap_s']:.0f} s)", model
    return step, "ok", model


def throughput(cfg: dict, device: torch.device, report: Report, out: Path) -> None:
    """Table 1: every mixer at every L, interleaved per L; then the ratios and the plot."""
    preset = cfg["preset"]
    shape = preset_config(f"hyena_rtf-{preset}", **cfg["overrides"])
    peak_flops, peak_bw = device_peaks(device)
    extra = ["MFU %", "floor ms (FLOPs)", "floor ms (bytes)"] if peak_flops and peak_bw else []
    per_step = f"{cfg['tokens']:,} tokens per step" if cfg["tokens"] else "batch 1"
    table = Table(
        f"1. Training step (fwd + bwd + AdamW), {per_step}, preset {preset} "
        f"(D={shape.hidden_size}, {shape.num_hidden_layers} layers, vocab {shape.vocab_size})",
        ["L", "mixer", "step ms", "IQR ms", "tokens/s", "peak MB", "params", "status", *extra],
    )
    for L in cfg["lengths"]:
        steps, status, models = {}, {}, {}
        variants = [(m, False) for m in MIXERS] + [(m, True) for m in MIXERS if L in cfg["compile_lengths"]]
        for mixer, compiled in variants:
            name = f"{mixer} (compiled)" if compiled else mixer
            step, status[name], models[name] = _prepare(cfg, mixer, L, device, compiled)
            if step is not None:
                steps[name] = step
        # The warm-up of compare() adds to the first step; all variants of this L interleaved.
        t = compare(steps, repeats=cfg["repeats"], warmup=max(cfg["warmup"] - 1, 0), device=device) if steps else {}
        for name, model in models.items():
            params = sum(p.numel() for p in model.parameters())
            if name not in t:
                table.add(L, name, None, None, None, None, params, status[name], *[None] * len(extra))
                continue
            tokens = L * (max(cfg["tokens"] // L, 1) if cfg["tokens"] else 1)
            floors = step_floor(model, L, tokens, peak_flops, peak_bw) if extra else ()
            table.add(L, name, t[name].median * 1e3, t[name].iqr * 1e3, tokens / t[name].median,
                      peak_memory(steps[name], device) * MB, params, status[name],
                      *([100 * floors[0] / t[name].median, floors[0] * 1e3, floors[1] * 1e3] if extra else []))
        del steps, models
    table.notes.append("Setup and reading: BENCHMARKS.md sections 3 and 6.")
    report.parts += [table, _ratios(table)]
    lines = [Line(m, [r[0] for r in table.rows if r[1] == m], [r[4] for r in table.rows if r[1] == m]) for m in MIXERS]
    report.plots.append(save_plot(out / "train_speed.png", [Panel(
        "Training throughput vs length", "sequence length L", "training tokens/s", lines, xlog=True, ylog=True)]))


def _ratios(table: Table) -> Table:
    tps = {(r[0], r[1]): r[4] for r in table.rows}
    lengths = sorted({r[0] for r in table.rows})
    ratios = Table("2. Throughput ratios (tokens/s of hyena_rtf divided by the other mixer's)",
                   ["L", "hyena_rtf / attention", "hyena_rtf / hyena"])
    for L in lengths:
        rtf = tps.get((L, "hyena_rtf"))
        ratios.add(L, *[rtf / tps[(L, o)] if rtf and tps.get((L, o)) else None for o in ("attention", "hyena")])
    beats_attn = [L for L, r in zip(lengths, ratios.column("hyena_rtf / attention")) if r is not None and r > 1]
    attn_missing = [L for L, r in zip(lengths, ratios.column("hyena_rtf / attention")) if r is None]
    beats_hyena = [L for L, r in zip(lengths, ratios.column("hyena_rtf / hyena")) if r is not None and r > 1]
    ratios.notes.append(
        f"Target: hyena_rtf ahead of attention from L=4096 on. hyena_rtf faster at L in {beats_attn}"
        + (f"; attention did not finish at L in {attn_missing} (see the status column)" if attn_missing else "")
        + "."
    )
    ratios.notes.append(
        f"Target: hyena_rtf ahead of the implicit-filter hyena at every L. hyena_rtf faster at L in {beats_hyena} "
        f"of {lengths}."
    )
    ratios.notes.append("Ratios of medians from one interleaved loop per L; > 1 means hyena_rtf trains faster.")
    return ratios


def run(mode: str, device: torch.device, out: Path) -> Report:
    """Run the throughput sweep at the sizes of ``mode`` ("full", "quick", "smoke" or "gpu")."""
    if mode not in SIZES:
        raise ValueError(f"mode must be one of {sorted(SIZES)}, got {mode!r}")
    report = Report("train_speed", TITLE)
    throughput(SIZES[mode], device, report, out)
    return report
