"""What the state buys: copying accuracy vs state size, associative recall vs sequence length.

    python -m bench memory --threads 1            # the grid of BENCHMARKS.md: 48 runs, about 55 min of
                                                  # training on 2 shared cores (load 2-8)
    python -m bench memory --quick --threads 1    # one seed, fewer state sizes and lengths

The paper's copying task (Table 2: remember 1024 tokens of a 64-symbol vocabulary, then reproduce
them) scaled to a CPU: ``mem_len`` tokens, then as many copy markers, and the model must output the
i-th memorised token at the i-th marker (``hyena_rtf.data.synthetic.CopyingDataModule``). The answer lies
``mem_len`` steps back, so a filter of order N has to span that distance; the sweep runs N from
well below ``mem_len`` to well above it. Implicit Hyena and attention (no state size) are the
references. Associative recall (``AssociativeRecallDataModule``: key-value pairs, blanks, query
keys) is run at several sequence lengths with every mixer.

Every run trains the same backbone (the tiny presets resized: D=64, 4 layers, Hyena order 2,
MLP 256) for the same number of steps with ``HyenaLMModule`` and a Lightning ``Trainer`` on the
CPU, then scores the whole test split with ``hyena_rtf.data.synthetic.score_recall`` (greedy
prediction at every scored position). Seeds change the initialisation and the generated data;
every mixer sees the same data for a given seed.

Training time per step is measured separately, interleaved over the state sizes
(``bench.timing.compare``), because wall time per run on a shared machine is not a comparison.

Finished runs are appended to ``<out>/memory_runs.jsonl`` and reused when the same run (same
settings) is asked for again, so an interrupted grid resumes; delete the file to start over. On a
machine with idle cores the two grids can fill that file in parallel before the report is built:

    python -m bench.memory copying --out bench/results & python -m bench.memory recall --out bench/results
    python -m bench memory --threads 1 --out bench/results   # reuses both grids, times the steps, writes the report
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from tqdm.auto import tqdm

from hyena_rtf.training.lit_module import HyenaLMModule
from hyena_rtf.modeling.configuration_hyena_rtf import MIXERS
from hyena_rtf.modeling.presets import PRESETS
from hyena_rtf.training.console import quiet_lightning
from hyena_rtf.data.synthetic import AssociativeRecallDataModule, CopyingDataModule, RecallDataModule
from hyena_rtf.evaluation.recall import score_recall

from .report import Report, Table
from .runfile import MetricCurve, RunFile, bench_trainer
from .timing import compare

TITLE = "Memory tasks: copying accuracy vs state size, associative recall vs sequence length"

# Mixers in report order; those absent from this checkout's MIXERS are skipped. The state mixers
# are swept over state sizes, the others run once per seed.
WANTED = ("hyena_rtf", "hyena_s4d", "hyena", "attention")
STATE_MIXERS = ("hyena_rtf", "hyena_s4d")

SIZES = {
    "full": dict(hidden=64, layers=4, l_max=512, batch=16, lr=3e-3, seeds=(0, 1), train_size=8000, eval_size=512,
                 mem_len=64, copy_vocab=16, states=(4, 16, 32, 64, 256), copy_steps=300,
                 ar_lengths=(32, 64, 128), ar_pairs=4, ar_queries=16, ar_vocab=17, ar_state=64, ar_steps=600, ar_seeds=(0, 1),
                 evals=3, val_batches=4, timing_repeats=5),
    "quick": dict(hidden=64, layers=4, l_max=512, batch=16, lr=3e-3, seeds=(0,), train_size=4000, eval_size=256,
                  mem_len=64, copy_vocab=16, states=(4, 16, 64, 256), copy_steps=200,
                  ar_lengths=(32, 128), ar_pairs=4, ar_queries=16, ar_vocab=17, ar_state=64, ar_steps=300, ar_seeds=(0,),
                  evals=2, val_batches=2, timing_repeats=3),
    "smoke": dict(hidden=16, layers=1, l_max=32, batch=4, lr=3e-3, seeds=(0, 1), train_size=32, eval_size=8,
                  mem_len=4, copy_vocab=6, states=(2, 16), copy_steps=3,
                  ar_lengths=(8, 16), ar_pairs=2, ar_queries=2, ar_vocab=9, ar_state=4, ar_steps=3, ar_seeds=(0, 1),
                  evals=1, val_batches=1, timing_repeats=2),
}


def model_kwargs(cfg: dict, mixer: str, vocab: int, state: Optional[int]) -> dict:
    """HyenaRTFConfig arguments: the mixer's tiny preset resized to the benchmark's backbone."""
    kw = {**PRESETS[f"{mixer}-tiny"], "vocab_size": vocab, "hidden_size": cfg["hidden"], "num_hidden_layers": cfg["layers"],
          "intermediate_size": 4 * cfg["hidden"], "output_rank": cfg["hidden"] // 2, "max_position_embeddings": cfg["l_max"]}
    if state is not None:
        kw["state_size"] = state
    return kw


def copying_data(cfg: dict, seed: int) -> CopyingDataModule:
    return CopyingDataModule(mem_len=cfg["mem_len"], delay=0, vocab_size=cfg["copy_vocab"], train_size=cfg["train_size"],
                             eval_size=cfg["eval_size"], batch_size=cfg["batch"], seed=seed)


def recall_data(cfg: dict, length: int, seed: int) -> AssociativeRecallDataModule:
    return AssociativeRecallDataModule(seq_len=length, num_pairs=cfg["ar_pairs"], num_queries=cfg["ar_queries"],
                                       vocab_size=cfg["ar_vocab"], train_size=cfg["train_size"],
                                       eval_size=cfg["eval_size"], batch_size=cfg["batch"], seed=seed)


def train_and_score(cfg: dict, data: RecallDataModule, model: dict, steps: int, seed: int, device: torch.device) -> dict:
    """Train one model for ``steps`` steps, then score the whole test split."""
    load = os.getloadavg()[0]
    L.seed_everything(seed, workers=True, verbose=False)
    module = HyenaLMModule(model=model, lr=cfg["lr"], filter_lr=cfg["lr"], weight_decay=0.0, warmup_steps=0.05)
    curve = MetricCurve("val/acc")
    trainer = bench_trainer(device, steps, max(steps // cfg["evals"], 1), cfg["val_batches"], [curve])
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    train_s = time.perf_counter() - start
    result = score_recall(module.net.eval().to(device), data, "test", batch_size=64, device=device, progress=False)
    return dict(acc=result.acc, exact=result.exact, loss=result.nll_sum / max(result.tokens_scored, 1), train_s=train_s,
                curve=curve.points, skipped=int(module.skipped_steps), load=load,
                params=sum(p.numel() for p in module.net.parameters()))


def step_times(cfg: dict, mixers: list[str], device: torch.device) -> Table:
    """Training step (forward, backward, AdamW) per state size, interleaved over all configs."""
    L_seq = 2 * cfg["mem_len"]
    configs = [(m, n) for m in mixers if m in STATE_MIXERS for n in cfg["states"]]
    configs += [(m, None) for m in mixers if m not in STATE_MIXERS]
    fns = {}
    for mixer, n in configs:
        torch.manual_seed(0)
        module = HyenaLMModule(model=model_kwargs(cfg, mixer, cfg["copy_vocab"], n)).to(device)
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
        x = torch.randint(0, cfg["copy_vocab"], (cfg["batch"], L_seq), device=device)  # (B, L)
        batch = {"input_ids": x, "targets": x}

        def step(module=module, opt=opt, batch=batch):
            nll, count = module.nll(batch)
            (nll / count).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        fns[(mixer, n)] = step
    t = compare(fns, repeats=cfg["timing_repeats"], warmup=1, device=device)
    table = Table(f"2. Training step time vs state size (B={cfg['batch']}, L={L_seq}, interleaved)",
                  ["mixer", "state size", "step ms", "IQR ms", "/ smallest N"])
    for mixer, n in configs:
        base = t[(mixer, cfg["states"][0])].median if n is not None else t[(mixer, n)].median
        table.add(mixer, n, t[(mixer, n)].median * 1e3, t[(mixer, n)].iqr * 1e3, t[(mixer, n)].median / base)
    table.notes.append(f"Median of {cfg['timing_repeats']} interleaved steps per config (bench.timing.compare), "
                       "one forward + backward + AdamW step of the copying backbone on random tokens.")
    return table


def _stats(values: list[float]) -> tuple[float, float, float]:
    return statistics.fmean(values), min(values), max(values)


COPY_KEYS = ("hidden", "layers", "l_max", "batch", "lr", "train_size", "eval_size", "evals", "val_batches",
             "mem_len", "copy_vocab", "copy_steps")
RECALL_KEYS = COPY_KEYS[:9] + ("ar_pairs", "ar_queries", "ar_vocab", "ar_steps", "ar_state")


def grid(task: str, cfg: dict, mixers: list[str], runs: RunFile, device: torch.device) -> dict:
    """Train (or reuse) every run of one task: copying keyed (mixer, N, seed), recall (mixer, L, seed)."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    quiet_lightning()  # also the LeafSpec deprecation Lightning triggers on torch >= 2.10
    if task == "copying":
        # Seed-major order: an interrupted grid still has whole seeds.
        jobs = [(m, n, s) for s in cfg["seeds"] for m in mixers for n in (cfg["states"] if m in STATE_MIXERS else (None,))]
        settings = json.dumps({k: cfg[k] for k in COPY_KEYS}, sort_keys=True)
    else:
        jobs = [(m, length, s) for s in cfg["ar_seeds"] for length in cfg["ar_lengths"] for m in mixers]
        settings = json.dumps({k: cfg[k] for k in RECALL_KEYS}, sort_keys=True)
    done = {}
    for mixer, x, seed in tqdm(jobs, desc=f"memory: {task} runs", unit="run", file=sys.stderr):
        if task == "copying":
            make = lambda: train_and_score(cfg, copying_data(cfg, seed), model_kwargs(cfg, mixer, cfg["copy_vocab"], x),  # noqa: E731
                                           cfg["copy_steps"], seed, device)
        else:
            n = cfg["ar_state"] if mixer in STATE_MIXERS else None
            make = lambda: train_and_score(cfg, recall_data(cfg, x, seed), model_kwargs(cfg, mixer, cfg["ar_vocab"], n),  # noqa: E731
                                           cfg["ar_steps"], seed, device)
        done[(mixer, x, seed)] = runs.get(f"{settings}|{task}|{mixer}|{x}|{seed}", make)
    return done


def _mixers(mixers: Optional[list[str]]) -> list[str]:
    """The requested mixers (default: those of WANTED that this checkout has)."""
    mixers = [m for m in WANTED if m in MIXERS] if mixers is None else list(mixers)
    unknown = [m for m in mixers if m not in MIXERS]
    if unknown:
        raise ValueError(f"unknown mixers {unknown}; this checkout has {list(MIXERS)}")
    return mixers


def run(mode: str, device: torch.device, out: Path, mixers: Optional[list[str]] = None) -> Report:
    """Train the copying and associative-recall grids of ``mode`` and tabulate them."""
    if mode not in SIZES:
        raise ValueError(f"mode must be one of {sorted(SIZES)}, got {mode!r}")
    cfg = SIZES[mode]
    mixers = _mixers(mixers)
    runs = RunFile(out / "memory_runs.jsonl")
    copy = grid("copying", cfg, mixers, runs, device)
    ar = grid("recall", cfg, mixers, runs, device)
    loads = [r["load"] for r in (*copy.values(), *ar.values())]
    load_start = os.getloadavg()
    timing = step_times(cfg, mixers, device)
    load_end = os.getloadavg()

    report = Report("memory", TITLE)
    n_seeds = len(cfg["seeds"])
    report.parts.append(
        f"Backbone: D={cfg['hidden']}, {cfg['layers']} layers, Hyena order 2, MLP {4 * cfg['hidden']}, l_max {cfg['l_max']}; "
        f"AdamW lr {cfg['lr']:g} (filters too), no weight decay, 5% warm-up then cosine to 0.1x, clipping 1.0, "
        f"batch {cfg['batch']}, {cfg['train_size']:,} training sequences; {n_seeds} seed(s) per cell (mean, and min-max "
        f"over seeds). Test: {cfg['eval_size']} held-out sequences per run, disjoint from training. Mixers: {', '.join(mixers)}"
        + ("" if "hyena_s4d" in mixers else " (hyena_s4d is not in this checkout)") + ". "
        f"Load average (1 min) when the runs started: {min(loads):.2f} to {max(loads):.2f}; "
        f"at the step timing {load_start[0]:.2f} to {load_end[0]:.2f}."
    )

    chance = 1 / (cfg["copy_vocab"] - 2)
    ctab = Table(f"1. Copying {cfg['mem_len']} tokens (vocabulary {cfg['copy_vocab']}), {cfg['copy_steps']} steps: "
                 "test accuracy vs state size",
                 ["mixer", "state size", "params", "acc %", "acc min %", "acc max %", "exact %", "train s per run"])
    for mixer in mixers:
        for n in cfg["states"] if mixer in STATE_MIXERS else (None,):
            rs = [copy[(mixer, n, s)] for s in cfg["seeds"]]
            acc, lo, hi = _stats([100 * r["acc"] for r in rs])
            ctab.add(mixer, n, rs[0]["params"], acc, lo, hi, statistics.fmean(100 * r["exact"] for r in rs),
                     statistics.fmean(r["train_s"] for r in rs))
    ctab.notes.append(f"Sequences of {2 * cfg['mem_len']} tokens: {cfg['mem_len']} symbols, then {cfg['mem_len']} copy "
                      f"markers; only the marker positions are scored. Chance: {100 * chance:.1f}% per token.")
    ctab.notes.append("'acc' is per scored token, 'exact' the share of sequences copied without a single error. "
                      "'train s per run' is wall time on a shared machine (not a speed comparison; see table 2).")
    report.parts.append(ctab)
    report.parts.append(timing)

    atab = Table(f"3. Associative recall ({cfg['ar_pairs']} pairs, {cfg['ar_queries']} queries, vocabulary "
                 f"{cfg['ar_vocab']}), {cfg['ar_steps']} steps, {len(cfg['ar_seeds'])} seed(s): test accuracy % vs sequence length",
                 ["mixer", "state size"] + [f"L={length}" for length in cfg["ar_lengths"]]
                 + [f"L={length} min-max" for length in cfg["ar_lengths"]])
    for mixer in mixers:
        accs = [[100 * ar[(mixer, length, s)]["acc"] for s in cfg["ar_seeds"]] for length in cfg["ar_lengths"]]
        atab.add(mixer, cfg["ar_state"] if mixer in STATE_MIXERS else None, *[statistics.fmean(a) for a in accs],
                 *[f"{min(a):.1f}-{max(a):.1f}" for a in accs])
    n_keys = (cfg["ar_vocab"] - 1) // 2
    atab.notes.append(f"Pairs first, queries last, blanks between: the distance from a pair to its query grows with L. "
                      f"Chance: {100 / (cfg['ar_vocab'] - 1 - n_keys):.1f}% per query.")
    report.parts.append(atab)
    report.plots.append(_plot(cfg, mixers, copy, ar, timing, out / "memory.png"))
    return report


def _plot(cfg: dict, mixers: list[str], copy: dict, ar: dict, timing: Table, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_c, ax_t, ax_a) = plt.subplots(1, 3, figsize=(15, 4))
    states = list(cfg["states"])
    for mixer in mixers:
        if mixer in STATE_MIXERS:
            accs = [[100 * copy[(mixer, n, s)]["acc"] for s in cfg["seeds"]] for n in states]
            line, = ax_c.plot(states, [statistics.fmean(a) for a in accs], "o-", label=mixer)
            ax_c.fill_between(states, [min(a) for a in accs], [max(a) for a in accs], alpha=0.2, color=line.get_color())
            ms = [ms for m, ms in zip(timing.column("mixer"), timing.column("step ms")) if m == mixer]
            ax_t.plot(states, ms, "o-", label=mixer)
        else:
            acc = statistics.fmean(100 * copy[(mixer, None, s)]["acc"] for s in cfg["seeds"])
            ax_c.axhline(acc, linestyle="--", color="gray" if mixer == "hyena" else "black", label=f"{mixer} (no state size)")
        ax_a.plot(cfg["ar_lengths"], [statistics.fmean(100 * ar[(mixer, length, s)]["acc"] for s in cfg["ar_seeds"])
                                      for length in cfg["ar_lengths"]], "o-", label=mixer)
    n_keys = (cfg["ar_vocab"] - 1) // 2
    ax_a.axhline(100 / (cfg["ar_vocab"] - 1 - n_keys), linestyle=":", color="gray", label="chance")
    ax_c.axhline(100 / (cfg["copy_vocab"] - 2), linestyle=":", color="gray", label="chance")
    ax_c.axvline(cfg["mem_len"], color="red", alpha=0.3, label=f"copy distance {cfg['mem_len']}")
    ax_c.set(xscale="log", xlabel="state size N", ylabel="test accuracy % (band: min-max over seeds)",
             title=f"copying {cfg['mem_len']} tokens, {cfg['copy_steps']} steps")
    ax_t.set(xscale="log", xlabel="state size N", ylabel="training step ms (median, interleaved)", title="step time vs N")
    ax_a.set(xscale="log", xlabel="sequence length", ylabel="test accuracy %", title="associative recall")
    ax_t.set_ylim(bottom=0)
    ax_c.set_xticks(states, [str(n) for n in states])
    ax_t.set_xticks(states, [str(n) for n in states])
    ax_a.set_xticks(list(cfg["ar_lengths"]), [str(n) for n in cfg["ar_lengths"]])
    ax_a.minorticks_off()
    for ax in (ax_c, ax_t):
        ax.minorticks_off()
    for ax in (ax_c, ax_t, ax_a):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Optional[list[str]] = None) -> int:
    """Fill the run file with one task's grid (for two grids in parallel); the report comes from
    ``python -m bench memory``, which reuses the runs."""
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=main.__doc__.splitlines()[0])
    parser.add_argument("task", choices=("copying", "recall"))
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true")
    size.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--mixers", nargs="+", default=None, help=f"default: those of {list(WANTED)} this checkout has")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]
    grid(args.task, cfg, _mixers(args.mixers), RunFile(args.out / "memory_runs.jsonl"), torch.device(args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
