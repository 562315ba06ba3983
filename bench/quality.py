"""Perplexity at equal compute on WikiText text, every run through ``train.py`` and ``evaluate.py``.

    python -m bench quality studies=grid,seeds jobs=2 --threads 1   # BENCHMARKS.md section 4
    python -m bench quality --smoke                                 # a check that it runs

A run is the command a user would type (``python train.py experiment=wikitext_cpu
model=<mixer>_tiny seed=<s> <overrides>`` on wiki.valid.raw, then ``python evaluate.py`` on all of
wiki.test.raw); BENCHMARKS.md section 4 describes the protocol (held-out validation text for every
choice, the test text scored once per run, paired seeds).

Studies (``studies=``; later ones use the choices of earlier ones):
- ``grid``: every mixer (``mixers=``) at learning rate x weight decay (``lrs=`` x ``wds=``), seed 0,
  with the preset's filter options; then RTF and S4D at other state sizes (``states=``) at their
  best cell.
- ``seeds``: every mixer at its best grid cell (lowest validation loss) for ``seeds=``: the headline.
- ``ablation``: Hyena-RTF variants (``ABLATION``, or those named by ``variants=``) at RTF's best
  cell, seed 0, beside the implicit Hyena's best cell.

Finished runs are kept in ``<out>/quality_runs.jsonl`` (``bench.runs``), keyed by the resolved
model, optimizer and data settings of the composed config, the seed and the starting weights, so an
interrupted study resumes and a changed setting (or a changed preset default) trains anew.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hyena_rtf.modeling.configuration_hyena_rtf import MIXERS
from hyena_rtf.modeling.filters import STATE_MIXERS

from .report import Line, Panel, Report, Table, save_plot
from .runs import WIKITEXT_SIZES, Run, Runner, as_tuple, compose_train, lr_wd

TITLE = "Perplexity at equal compute on WikiText-2 text: tuned mixers, paired runs"

STUDIES = ("grid", "seeds", "ablation")

# Hyena-RTF variants: name -> overrides on top of the preset (which carries the project's default);
# (key, factor) sets a learning rate to factor x the run's lr.
VARIANTS: dict[str, tuple] = {
    "preset default": (),
    "paper: xavier + l1_montel, no decay": ("model.rtf_init=xavier", "model.rtf_constraint=l1_montel",
                                            "model.rtf_h0_init=null", "model.rtf_decay=null"),
    "impulse: zeros + reflection, no decay": ("model.rtf_init=zeros", "model.rtf_constraint=reflection", "model.rtf_decay=null"),
    "zeros + none, no decay": ("model.rtf_init=zeros", "model.rtf_constraint=none", "model.rtf_decay=null"),
    "xavier + reflection, no decay": ("model.rtf_init=xavier", "model.rtf_constraint=reflection", "model.rtf_decay=null"),
    "decay horizons 0.3-1.5 l_max (long only)": ("model.rtf_decay=[0.3,1.5]",),
    "decay horizons 0.01-1.5 l_max": ("model.rtf_decay=[0.01,1.5]",),
    "l1_montel + graded decay": ("model.rtf_constraint=l1_montel",),
    "none + graded decay": ("model.rtf_constraint=none",),
    "sections + graded decay": ("model.rtf_constraint=sections",),
    "zeros numerator + graded decay": ("model.rtf_init=zeros",),
    "montel numerator + graded decay": ("model.rtf_init=montel",),
    "h0 = 1": ("model.rtf_h0_init=one",),
    "shared denominators (num_a = 1)": ("model.rtf_num_a=1",),
    "filters frozen (filter lr 0)": ("optim.filter_lr=0",),
    "pole lr x10": (("optim.filter_pole_lr", 10.0),),
    "pole lr x0.1": (("optim.filter_pole_lr", 0.1),),
    "numerator lr x10 (poles at lr)": (("optim.filter_lr", 10.0), ("optim.filter_pole_lr", 1.0)),
}
DISTILLED = "init from the distilled implicit model (constraint none)"
IMPLICIT_FROZEN = "implicit hyena, filters frozen (reference)"
ABLATION = (*VARIANTS, DISTILLED, IMPLICIT_FROZEN)

@dataclass(frozen=True)
class Protocol:
    """What the grid and the headline span; every mixer gets the same grid."""

    lrs: tuple[float, ...] = (1.5e-3, 3e-3, 6e-3)
    wds: tuple[float, ...] = (0.05, 0.25)
    states: tuple[int, ...] = (16, 256)  # besides the preset's 64, at the best cell
    seeds: tuple[int, ...] = (0, 1, 2)
    mixers: tuple[str, ...] = MIXERS
    variants: tuple[str, ...] = ()  # of the ablation; empty: all of ABLATION

    def __post_init__(self):
        bad = [m for m in self.mixers if m not in MIXERS]
        if bad or not self.mixers:
            raise ValueError(f"mixers must be a non-empty subset of {MIXERS}, got {self.mixers}")
        if not self.lrs or not self.wds or not self.seeds:
            raise ValueError("the grid needs at least one learning rate, weight decay and seed")
        unknown = [v for v in self.variants if v not in ABLATION]
        if unknown:
            raise ValueError(f"unknown ablation variants {unknown}; choose from {list(ABLATION)}")


def _variant(name: str, recipe: tuple[str, ...]) -> tuple[str, ...]:
    """The overrides of variant ``name`` on top of ``recipe`` (which sets optim.lr)."""
    lr = float(next(o.split("=")[1] for o in recipe if o.startswith("optim.lr=")))
    return recipe + tuple(o if isinstance(o, str) else f"{o[0]}={o[1] * lr:g}" for o in VARIANTS[name])


def _ppl(loss: Optional[float]) -> Optional[float]:
    return math.exp(loss) if loss is not None and math.isfinite(loss) else None


def _best(results: dict[Run, dict], runs: list[Run]) -> Run:
    """The run with the lowest final validation loss (held-out text; never the test split)."""
    return min(runs, key=lambda r: results[r]["val_loss"] if results[r]["val_loss"] is not None else math.inf)


def _mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _recipe_name(run: Run) -> str:
    return " ".join(o.replace("optim.", "").replace("model.", "") for o in run.overrides) or "preset"


def run_studies(runner: Runner, studies: tuple[str, ...], protocol: Protocol = Protocol()) -> tuple[Report, dict]:
    """Run ``studies`` (in the order of ``STUDIES``; all after the grid) over ``protocol`` and tabulate
    them; returns the report and every result."""
    mixers, lrs, wds, states_, seeds = protocol.mixers, protocol.lrs, protocol.wds, protocol.states, protocol.seeds
    bad = [s for s in studies if s not in STUDIES]
    if bad or not studies:
        raise ValueError(f"studies must be a non-empty subset of {STUDIES}, got {studies}")
    report = Report("quality", TITLE)
    everything: dict[Run, dict] = {}
    headline: Optional[dict[str, list[Run]]] = None

    best: dict[str, Run] = {}
    cells = [Run(m, 0, lr_wd(lr, wd)) for m in mixers for lr in lrs for wd in wds]
    res = runner.results(cells)
    for m in mixers:
        best[m] = _best(res, [c for c in cells if c.mixer == m])
    states = [Run(m, 0, best[m].overrides + (f"model.state_size={n}",)) for m in STATE_MIXERS if m in mixers for n in states_]
    res.update(runner.results(states))
    everything.update(res)
    for m in (m for m in STATE_MIXERS if m in mixers):
        best[m] = _best(res, [best[m]] + [s for s in states if s.mixer == m])
    if "grid" in studies:
        table = Table(f"Grid: learning rate {list(lrs)} x weight decay {list(wds)} per mixer (seed 0; state 64 unless named)",
                      ["mixer", "recipe", *COLUMNS, "chosen"])
        for run in cells + states:
            table.add(run.mixer, _recipe_name(run), *_row(res[run]), best[run.mixer] == run)
        table.notes.append("chosen: the lowest validation loss of the mixer (held-out 10% of the training text).")
        report.parts.append(table)

    if "seeds" in studies:
        runs = headline = {m: [Run(m, s, best[m].overrides) for s in seeds] for m in mixers}
        res = runner.results([r for rs in runs.values() for r in rs])
        everything.update(res)
        report.parts.append(_seed_table(f"Headline: each mixer at its best grid cell, seeds {list(seeds)}", runs, res))

    if "ablation" in studies:
        if "hyena_rtf" not in best or "hyena" not in best:
            raise ValueError("the ablation needs hyena_rtf and hyena among the mixers")
        base = best["hyena_rtf"].overrides
        names = protocol.variants or ABLATION
        runs = {name: Run("hyena_rtf", 0, _variant(name, base)) for name in names if name in VARIANTS}
        if DISTILLED in names:
            # Upper reference: start from the best implicit model distilled into RTFs (constraint
            # none), then train on at RTF's recipe.
            teacher = Path(runner.results([best["hyena"]])[best["hyena"]]["run_dir"])
            state = compose_train(["experiment=wikitext_cpu", "model=hyena_rtf_tiny"]).model.state_size
            student = runner.distill(teacher / "checkpoints" / "last.ckpt", state)
            runs[DISTILLED] = Run("hyena_rtf", 0, base + ("model.rtf_constraint=none", f"model.state_size={state}",
                                                          f"init_from={student}"))
        # How much the implicit model's own filters are worth, beside RTF's.
        runs["implicit hyena at its best cell (reference)"] = best["hyena"]
        if IMPLICIT_FROZEN in names:
            runs[IMPLICIT_FROZEN] = Run("hyena", 0, best["hyena"].overrides + ("optim.filter_lr=0",))
        res = runner.results(list(runs.values()))
        everything.update(res)
        report.parts.append(variant_table(
            f"Ablation: Hyena-RTF variants at its best cell ({_recipe_name(best['hyena_rtf'])}, seed 0)", runs, res))

    loads = [r["load"] for r in everything.values()]
    report.parts.append(f"{len(everything)} runs. Load average (1 min) when they started: {min(loads):.2f} to {max(loads):.2f}.")
    report.plots.append(_plot(everything, runner.out / "quality_curves.png", headline))
    return report, everything


COLUMNS = ["val ppl", "test token ppl", "test word ppl", "max pole radius", "kernel shift", "train s"]


def _row(r: dict) -> list:
    return [_ppl(r["val_loss"]), r["test_ppl"], r["test_word_ppl"], r["max_pole_radius"], r["kernel_shift"], r["train_s"]]


def variant_table(title: str, runs: dict[str, Run], res: dict[Run, dict]) -> Table:
    """One row per named run: held-out validation and test perplexity, pole radius, filter movement."""
    table = Table(title, ["variant", *COLUMNS])
    for name, run in runs.items():
        table.add(name, *_row(res[run]))
    table.notes.append("val: the held-out 10% of the training text at the last step; test: all of wiki.test.raw "
                       "(evaluate.py, 256-token windows); kernel shift: ||k - k_start|| / ||k_start|| over all long "
                       "filters at the end.")
    return table


def _seed_table(title: str, runs: dict[str, list[Run]], res: dict[Run, dict]) -> Table:
    table = Table(title, ["mixer", "recipe", "test token ppl", "std", "per seed", "val ppl", "test word ppl", "seeds"])
    for mixer, rs in runs.items():
        tok, sd = _mean_std([res[r]["test_ppl"] for r in rs])
        table.add(mixer, _recipe_name(rs[0]), tok, sd, " / ".join(f"{res[r]['test_ppl']:.1f}" for r in rs),
                  statistics.fmean(_ppl(res[r]["val_loss"]) for r in rs), statistics.fmean(res[r]["test_word_ppl"] for r in rs),
                  len(rs))
    table.notes.append("Mean and sample std over seeds; every seed shares initial weights (outside the long filters) "
                       "and data order across mixers.")
    return table


def _plot(results: dict[Run, dict], path: Path, headline: Optional[dict[str, list[Run]]] = None) -> Path:
    """Validation curves: with a headline, each mixer's mean over its seeds with the min-max band
    (the runs the table reports); otherwise each mixer's best run."""
    lines = []
    for mixer, runs in (headline or {}).items():
        curves = [dict(results[r]["val_curve"]) for r in runs if results[r]["val_curve"]]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        values = [[c[s] for c in curves] for s in steps]
        lines.append(Line(f"{mixer} (mean of {len(curves)} seeds)", steps, [statistics.fmean(v) for v in values],
                          [min(v) for v in values], [max(v) for v in values]))
    if not headline:
        by_mixer: dict[str, list] = {}
        for run, r in results.items():
            by_mixer.setdefault(run.mixer, []).append(r)
        for mixer, rs in by_mixer.items():
            best = min(rs, key=lambda r: r["val_loss"] if r["val_loss"] is not None else math.inf)
            steps, values = zip(*best["val_curve"]) if best["val_curve"] else ((), ())
            lines.append(Line(f"{mixer} (best of {len(rs)} runs)", list(steps), list(values)))
    return save_plot(path, [Panel("", "training step", "held-out validation loss (nats/token)", lines)])


# Quick mode without options: one cell, two seeds, no state sweep or ablation (12 runs of about
# 30 s on 2 cores), so `python -m bench --quick` stays a check of minutes; options widen it.
QUICK_PROTOCOL = dict(lrs=(3e-3,), wds=(0.1,), states=(), seeds=(0, 1))


def run(mode: str, device, out: Path, studies=None, jobs: int = 1, threads: int = 1, **protocol) -> Report:
    """``studies`` (of ``STUDIES``; default all, in quick mode without options grid and seeds) over
    ``Protocol(**protocol)`` (a single value stands for a list of one), trained by ``jobs``
    subprocesses of ``threads`` torch threads each."""
    if mode == "quick" and studies is None and not protocol:
        studies, protocol = ("grid", "seeds"), QUICK_PROTOCOL
    studies = STUDIES if studies is None else studies
    protocol = Protocol(**{k: as_tuple(v) for k, v in protocol.items()})
    runner = Runner(out, WIKITEXT_SIZES[mode], jobs, threads)
    return run_studies(runner, as_tuple(studies), protocol)[0]
