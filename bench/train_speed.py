"""LM training throughput of the three mixers on one backbone: tokens/s and peak memory vs length.

    python -m bench train_speed --quick --threads 1   # tiny preset, L = 256..4096: about 10 s
    python -m bench train_speed --threads 1           # small preset, L = 1024..16384: about 6 min

One training step is forward, cross-entropy, backward and an AdamW step, batch 1, on sequences of
length L with ``max_position_embeddings = L``. The three models are built from the same preset
(``<mixer>-small``, or ``<mixer>-tiny`` in the quick and smoke modes) and differ only in the
mixer. All three are timed interleaved at each L (``bench.timing.compare``), so drifts of a shared
machine hit them alike. Peak memory is the CPU/CUDA method of ``bench.timing`` around one step
(after the warm-up has created the optimizer state, so it is activations, gradients and
temporaries).

Dropout is switched off in all three models (the same override for each): on CPU the fused
scaled-dot-product attention kernel, whose memory is linear in L, is only taken without dropout,
and the comparison should not be decided by a fallback path.

The vocabulary is 4096 tokens (the project's default trained BPE, as in ``bench.quality``) for all
three, instead of the presets' GPT-2 50257: with the GPT-2 vocabulary the embedding, the LM head,
the (L, 50257) logits and the AdamW update of the embedding take most of a step at these widths on
a CPU, and the three mixers come out within a few percent of each other at every length.

A mixer whose first step fails for lack of memory, or takes longer than the mode's time cap, is
recorded as such in the table and left out of the timing loop at that length.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
from hyena_rtf.modeling.presets import preset_config

from .report import Report, Table
from .timing import compare, peak_memory, synchronize

# The three mixers of the paper's comparison (the config also accepts hyena_s4d; see bench/s4d.py).
MIXERS = ("hyena_rtf", "hyena", "attention")

TITLE = "LM training throughput: hyena_rtf vs hyena (implicit filter) vs attention"

SIZES = {
    "full": dict(preset="small", lengths=(1024, 4096, 16384), repeats=3, warmup=1, cap_s=120.0, vocab=4096),
    "quick": dict(preset="tiny", lengths=(256, 1024, 4096), repeats=5, warmup=1, cap_s=30.0, vocab=4096),
    "smoke": dict(preset="tiny", lengths=(32, 64), repeats=2, warmup=1, cap_s=30.0, vocab=4096),
}

MB = 1e-6
NO_DROPOUT = dict(embed_dropout=0.0, resid_dropout=0.0, mixer_dropout=0.0)


def build(mixer: str, preset: str, L: int, vocab: int, device: torch.device) -> HyenaRTFForCausalLM:
    """The ``<mixer>-<preset>`` model with context L, ``vocab`` tokens and dropout off."""
    config = preset_config(f"{mixer}-{preset}", max_position_embeddings=L, vocab_size=vocab, **NO_DROPOUT)
    return HyenaRTFForCausalLM(config).to(device).train()


def train_step_fn(model: HyenaRTFForCausalLM, L: int, device: torch.device):
    """A closure doing one full training step (batch 1, random tokens) on ``model``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (1, L + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]

    def step():
        logits = model(input_ids=x).logits  # (1, L, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def _first_step(step, device: torch.device, cap_s: float) -> tuple[str, float | None]:
    """Run one step: ("ok", seconds), ("out of memory", None) or ("over time cap", seconds)."""
    start = time.perf_counter()
    try:
        step()
        synchronize(device)
    except (torch.OutOfMemoryError, MemoryError):
        return "out of memory", None
    except RuntimeError as e:  # CPU allocation failures surface as plain RuntimeErrors
        if "memory" in str(e).lower() or "alloc" in str(e).lower():
            return "out of memory", None
        raise
    elapsed = time.perf_counter() - start
    return ("ok" if elapsed <= cap_s else "over time cap"), elapsed


def throughput(cfg: dict, device: torch.device, report: Report, out: Path) -> None:
    preset = cfg["preset"]
    shape = preset_config(f"hyena_rtf-{preset}", vocab_size=cfg["vocab"])
    table = Table(
        f"1. Training step (fwd + bwd + AdamW), batch 1, preset {preset} "
        f"(D={shape.hidden_size}, {shape.num_hidden_layers} layers, vocab {shape.vocab_size})",
        ["L", "mixer", "step ms", "IQR ms", "tokens/s", "peak MB", "params", "status"],
    )
    for L in cfg["lengths"]:
        steps, status, params = {}, {}, {}
        for mixer in MIXERS:
            torch.manual_seed(0)
            model = build(mixer, preset, L, cfg["vocab"], device)
            params[mixer] = sum(p.numel() for p in model.parameters())
            step = train_step_fn(model, L, device)
            status[mixer], first = _first_step(step, device, cfg["cap_s"])
            if status[mixer] == "ok":
                steps[mixer] = step
            elif first is not None:
                status[mixer] = f"over time cap ({first:.0f} s for one step > {cfg['cap_s']:.0f} s)"
        # The warm-up of compare() adds to the first step; all mixers of this L interleaved.
        t = compare(steps, repeats=cfg["repeats"], warmup=max(cfg["warmup"] - 1, 0), device=device) if steps else {}
        for mixer in MIXERS:
            if mixer in t:
                mem = peak_memory(steps[mixer], device) * MB
                table.add(L, mixer, t[mixer].median * 1e3, t[mixer].iqr * 1e3, L / t[mixer].median, mem,
                          params[mixer], "ok")
            else:
                table.add(L, mixer, None, None, None, None, params[mixer], status[mixer])
        del steps
    table.notes.append(
        "params differ only through position-dependent weights: attention's learned position table "
        "(L x D) and the implicit filter's positional encoding grow with L; RTF has none."
    )
    report.parts.append(table)
    report.parts.append(_ratios(table))
    report.plots.append(_plot(table, out / "train_speed.png"))


def _ratios(table: Table) -> Table:
    tps = {(r[0], r[1]): r[4] for r in table.rows}
    lengths = sorted({r[0] for r in table.rows})
    ratios = Table("2. Throughput ratios (tokens/s of hyena_rtf divided by the other mixer's)",
                   ["L", "hyena_rtf / attention", "hyena_rtf / hyena"])
    for L in lengths:
        rtf = tps.get((L, "hyena_rtf"))
        row = [L]
        for other in ("attention", "hyena"):
            o = tps.get((L, other))
            row.append(rtf / o if rtf and o else None)
        ratios.add(*row)
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
    ratios.notes.append("Vocabulary 4096 and dropout off for all three mixers (see the module docstring for why).")
    return ratios


def _plot(table: Table, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mixer in MIXERS:
        pts = [(r[0], r[4]) for r in table.rows if r[1] == mixer and r[4] is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=mixer)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L (batch 1)")
    ax.set_ylabel("training tokens/s")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_lines():  # every mixer may have failed (memory or time cap)
        ax.legend()
    ax.set_title("Training throughput vs length")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(mode: str, device: torch.device, out: Path) -> Report:
    """Run the throughput sweep at the sizes of ``mode`` ("full", "quick" or "smoke")."""
    if mode not in SIZES:
        raise ValueError(f"mode must be one of {sorted(SIZES)}, got {mode!r}")
    report = Report("train_speed", TITLE)
    throughput(SIZES[mode], device, report, out)
    return report
