"""What the state buys: copying accuracy vs state size, associative recall vs sequence length.

    python -m bench memory --threads 1            # the grid of BENCHMARKS.md section 9
    python -m bench memory --quick --threads 1    # one seed, fewer state sizes and lengths

Every run is ``python train.py experiment=copying model=<mixer>_tiny model.state_size=N seed=S``
(or ``experiment=associative_recall ... data.seq_len=L``), composed from ``conf/`` and run by the
train task in this process (``bench.runs.train_in_process``); training time per step is measured
separately, interleaved over the state sizes. Protocol and reading: BENCHMARKS.md section 9.

Finished runs are kept in ``<out>/memory_runs.jsonl`` (``bench.runs.RunFile``), so an interrupted
grid resumes. The two grids can fill it in parallel first (``tasks=`` trains one task's grid and
reports nothing else):

    python -m bench memory tasks=copying --out bench/results & python -m bench memory tasks=recall --out bench/results
    python -m bench memory --threads 1 --out bench/results   # reuses both grids, times the steps, writes the report
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from hyena_rtf.modeling.filters import STATE_MIXERS
from hyena_rtf.modeling.mixers import MIXER_CLASSES

from .report import Line, Panel, Report, Table, save_plot
from .runs import RunFile, as_tuple, build_model, compose_train, run_key, train_in_process
from .timing import compare
from .workloads import train_step

TITLE = "Memory tasks: copying accuracy vs state size, associative recall vs sequence length"

# Mixers whose filters have a state of state_size are swept over state sizes (first in the
# tables); the others run once per seed.
MIXERS = STATE_MIXERS + tuple(m for m in MIXER_CLASSES if m not in STATE_MIXERS)
TASKS = {"copying": "copying", "recall": "associative_recall"}  # task -> conf/experiment/<name>.yaml

# Per mode: the grid, and overrides of the experiments' sizes (full: the experiments as they are).
SIZES = {
    "full": dict(seeds=(0, 1), states=(4, 16, 32, 64, 256), lengths=(32, 64, 128), recall_seeds=(0, 1),
                 recall_state=64, timing_repeats=5, both=(), copying=(), recall=()),
    "quick": dict(seeds=(0,), states=(4, 16, 64, 256), lengths=(32, 128), recall_seeds=(0,), recall_state=64,
                  timing_repeats=3, both=("data.train_size=4000", "data.eval_size=256", "trainer.limit_val_batches=2"),
                  copying=("trainer.max_steps=200", "trainer.val_check_interval=100"),
                  recall=("trainer.max_steps=300", "trainer.val_check_interval=150")),
    "smoke": dict(seeds=(0, 1), states=(2, 16), lengths=(8, 16), recall_seeds=(0, 1), recall_state=4, timing_repeats=2,
                  both=("model.hidden_size=16", "model.num_hidden_layers=1", "model.intermediate_size=64",
                        "model.output_rank=8", "model.max_position_embeddings=32", "data.batch_size=4",
                        "data.train_size=32", "data.eval_size=8", "trainer.max_steps=3", "trainer.val_check_interval=3",
                        "trainer.limit_val_batches=1"),
                  copying=("data.mem_len=4", "data.vocab_size=6"),
                  recall=("data.num_pairs=2", "data.num_queries=2", "data.vocab_size=9")),
}


def config(task: str, mixer: str, size: Optional[int], seed: int, mode: str, device: torch.device, out_dir=None):
    """The composed train config of one run: ``size`` is the state size (copying) or length (recall)."""
    s = SIZES[mode]
    overrides = [f"experiment={TASKS[task]}", f"model={mixer}_tiny", f"seed={seed}", f"trainer.accelerator={device.type}",
                 *s["both"], *s[task]]
    state = size if task == "copying" else s["recall_state"]
    if mixer in STATE_MIXERS and state is not None:
        overrides.append(f"model.state_size={state}")
    if task == "recall":
        overrides.append(f"data.seq_len={size}")
    return compose_train(overrides, out_dir)


def grid(task: str, mode: str, mixers: list[str], runs: RunFile, device: torch.device) -> dict:
    """Train (or reuse) every run of one task: copying keyed (mixer, N, seed), recall (mixer, L, seed)."""
    s = SIZES[mode]
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # dozens of runs: keep the output short
    if task == "copying":  # seed-major order: an interrupted grid still has whole seeds
        jobs = [(m, n, seed) for seed in s["seeds"] for m in mixers for n in (s["states"] if m in STATE_MIXERS else (None,))]
    else:
        jobs = [(m, length, seed) for seed in s["recall_seeds"] for length in s["lengths"] for m in mixers]
    done = {}
    for mixer, size, seed in tqdm(jobs, desc=f"memory: {task} runs", unit="run", file=sys.stderr):
        with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
            cfg = config(task, mixer, size, seed, mode, device, Path(tmp))
            done[(mixer, size, seed)] = runs.get(run_key(cfg, task=task), lambda: train_in_process(cfg))
    return done


def step_times(mode: str, mixers: list[str], device: torch.device) -> Table:
    """Training step (forward, backward, AdamW) per state size, interleaved over all configs."""
    s = SIZES[mode]
    configs = [(m, n) for m in mixers for n in (s["states"] if m in STATE_MIXERS else (None,))]
    fns = {}
    for mixer, n in configs:
        cfg = config("copying", mixer, n, 0, mode, device)
        torch.manual_seed(0)
        model = build_model(cfg).to(device)
        x = torch.randint(0, cfg.data.vocab_size, (cfg.data.batch_size, 2 * cfg.data.mem_len), device=device)  # (B, L)
        fns[(mixer, n)] = train_step(model, x, x)[0]
    t = compare(fns, repeats=s["timing_repeats"], warmup=1, device=device)
    table = Table(f"2. Training step time vs state size (B={cfg.data.batch_size}, L={2 * cfg.data.mem_len}, interleaved)",
                  ["mixer", "state size", "step ms", "IQR ms", "/ smallest N"])
    for mixer, n in configs:
        base = t[(mixer, s["states"][0] if n is not None else None)].median
        table.add(mixer, n, t[(mixer, n)].median * 1e3, t[(mixer, n)].iqr * 1e3, t[(mixer, n)].median / base)
    table.notes.append(f"Median of {s['timing_repeats']} interleaved steps (forward + backward + AdamW) per config.")
    return table


def _accs(runs: dict, keys: list) -> list[float]:
    return [100 * runs[k]["test/acc"] for k in keys]


def run(mode: str, device: torch.device, out: Path, mixers=None, tasks=tuple(TASKS)) -> Report:
    """Train the copying and associative-recall grids of ``mode`` and tabulate them (with one of
    ``tasks`` only: train that grid, e.g. in parallel with the other, and report nothing else)."""
    s, mixers, tasks = SIZES[mode], _mixers(mixers and as_tuple(mixers)), as_tuple(tasks)
    runs = RunFile(out / "memory_runs.jsonl")
    if len(tasks) == 1:
        report = Report("memory", TITLE)
        report.parts.append(f"{len(grid(tasks[0], mode, mixers, runs, device))} {tasks[0]} runs in {runs.path}.")
        return report
    copy, ar = grid("copying", mode, mixers, runs, device), grid("recall", mode, mixers, runs, device)
    timing = step_times(mode, mixers, device)
    c, r = config("copying", mixers[0], None, 0, mode, device), config("recall", mixers[0], s["lengths"][0], 0, mode, device)
    loads = [x["load"] for x in (*copy.values(), *ar.values())]
    report = Report("memory", TITLE)
    report.parts.append(
        f"Backbone: D={c.model.hidden_size}, {c.model.num_hidden_layers} layers, Hyena order {c.model.hyena_order}, MLP "
        f"{c.model.intermediate_size}, l_max {c.model.max_position_embeddings}; AdamW lr {c.optim.lr:g} (filters too), "
        f"weight decay {c.optim.weight_decay:g}, {c.optim.warmup_steps:.0%} warm-up then cosine to {c.optim.min_lr_rate:g}x, "
        f"clipping {c.trainer.gradient_clip_val}, batch {c.data.batch_size}, {c.data.train_size:,} training sequences; "
        f"{len(s['seeds'])} seed(s) per cell (mean, and min-max over seeds). Test: {c.data.eval_size} held-out sequences "
        f"per run, disjoint from training. Mixers: {', '.join(mixers)}. Load average (1 min) when the runs started: "
        f"{min(loads):.2f} to {max(loads):.2f}."
    )
    ctab = Table(f"1. Copying {c.data.mem_len} tokens (vocabulary {c.data.vocab_size}), {c.trainer.max_steps} steps: "
                 "test accuracy vs state size",
                 ["mixer", "state size", "params", "acc %", "acc min %", "acc max %", "exact %", "train s per run"])
    for mixer in mixers:
        for n in s["states"] if mixer in STATE_MIXERS else (None,):
            rs = [copy[(mixer, n, seed)] for seed in s["seeds"]]
            accs = _accs(copy, [(mixer, n, seed) for seed in s["seeds"]])
            ctab.add(mixer, n, rs[0]["params"], statistics.fmean(accs), min(accs), max(accs),
                     statistics.fmean(100 * x["test/exact"] for x in rs), statistics.fmean(x["train_s"] for x in rs))
    ctab.notes.append(f"Chance: {100 / (c.data.vocab_size - 2):.1f}% per token; columns: BENCHMARKS.md section 9.")
    atab = Table(f"3. Associative recall ({r.data.num_pairs} pairs, {r.data.num_queries} queries, vocabulary "
                 f"{r.data.vocab_size}), {r.trainer.max_steps} steps, {len(s['recall_seeds'])} seed(s): test accuracy % "
                 "vs sequence length", ["mixer", "state size"] + [f"L={n}" for n in s["lengths"]]
                 + [f"L={n} min-max" for n in s["lengths"]])
    for mixer in mixers:
        accs = [_accs(ar, [(mixer, n, seed) for seed in s["recall_seeds"]]) for n in s["lengths"]]
        atab.add(mixer, s["recall_state"] if mixer in STATE_MIXERS else None, *[statistics.fmean(a) for a in accs],
                 *[f"{min(a):.1f}-{max(a):.1f}" for a in accs])
    values = r.data.vocab_size - 1 - (r.data.vocab_size - 1) // 2
    atab.notes.append(f"Chance: {100 / values:.1f}% per query.")
    report.parts += [ctab, timing, atab]
    report.plots.append(_plot(s, mixers, copy, ar, timing, 100 / (c.data.vocab_size - 2), 100 / values, out / "memory.png"))
    return report


def _plot(s: dict, mixers: list[str], copy: dict, ar: dict, timing: Table, chance: float, ar_chance: float,
          path: Path) -> Path:
    copying = Panel("copying vs state size", "state size N", "test accuracy % (band: min-max over seeds)", xlog=True,
                    hlines=[(chance, "chance")])
    steps = Panel("step time vs N", "state size N", "training step ms (median, interleaved)", xlog=True)
    recall = Panel("associative recall", "sequence length", "test accuracy %", xlog=True, hlines=[(ar_chance, "chance")])
    for mixer in mixers:
        if mixer in STATE_MIXERS:
            accs = [_accs(copy, [(mixer, n, seed) for seed in s["seeds"]]) for n in s["states"]]
            copying.lines.append(Line(mixer, list(s["states"]), [statistics.fmean(a) for a in accs],
                                      [min(a) for a in accs], [max(a) for a in accs]))
            ms = [v for m, v in zip(timing.column("mixer"), timing.column("step ms")) if m == mixer]
            steps.lines.append(Line(mixer, list(s["states"]), ms))
        else:
            acc = statistics.fmean(_accs(copy, [(mixer, None, seed) for seed in s["seeds"]]))
            copying.hlines.append((acc, f"{mixer} (no state size)"))
        accs = [statistics.fmean(_accs(ar, [(mixer, n, seed) for seed in s["recall_seeds"]])) for n in s["lengths"]]
        recall.lines.append(Line(mixer, list(s["lengths"]), accs))
    return save_plot(path, [copying, steps, recall])


def _mixers(mixers: Optional[list[str]]) -> list[str]:
    """The requested mixers (default: every registered one)."""
    unknown = [m for m in mixers or () if m not in MIXERS]
    if unknown:
        raise ValueError(f"unknown mixers {unknown}; choose from {list(MIXERS)}")
    return list(mixers or MIXERS)
