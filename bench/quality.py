"""Perplexity at equal compute: hyena_rtf vs hyena_s4d vs hyena vs attention on real text, plus RTF ablations.

    python -m bench quality --quick --threads 1   # D=64, 2 layers, 400 steps, tables 1-3
    python -m bench quality --threads 1           # D=128, 4 layers, 1000 steps, tables 1-3
    python -m bench.quality --tables 1 --threads 2 --out bench/results      # full mode, table 1 only
    python -m bench.quality --quick --tables 1 4 --threads 2 --out bench/results

``python -m bench.quality`` runs a chosen subset of the tables (``--tables``), optionally with
fewer ``--steps`` or other ``--seeds`` than the mode's (``--seeds`` applies to every table, the
one-seed ablations of tables 2 and 3 included), and writes ``<out>/quality.md`` like
``python -m bench quality`` does.

Every run trains the same small backbone for the same number of steps on the same tokens: the
WikiText-2 *validation* text (``wiki.valid.raw``) as training data and the WikiText-2 *test*
text (``wiki.test.raw``) for evaluation, with one byte-level BPE trained on the training text.
The pipeline is the project's own, in-process: ``LMDataModule(corpus="files")`` tokenises and
chunks, ``HyenaLMModule`` holds loss, optimizer groups and the cosine schedule, and a Lightning
``Trainer`` on the CPU (logger, checkpoints, progress bar off) runs the steps. At the end the whole
test split is scored with ``hyena_rtf.evaluation.evaluate_ids`` (non-overlapping chunks of the
training length, every token after the first scored once): token perplexity and word-level
perplexity (total NLL over whitespace-separated words of the raw text).

The validation curves are the loss on the first ``val_batches`` batches of the test split,
measured every ``eval_every`` steps; nothing is selected or stopped early on them.

Tables:
1. the four mixers (hyena_rtf and hyena_s4d with state size 64), ``seeds`` each (mean and sample
   std over seeds);
2. RTF init (zeros / xavier / montel) x constraint (none / l1_montel);
3. RTF state size (4, 16, 64, 256);
4. (only when asked for) the long-filter optimizer group of hyena_rtf and hyena: the default
   (filter lr = lr, no weight decay on filters), filters decayed like every other weight, filter
   lr 0.1x, filters frozen at their initialisation (filter lr 0); ``seeds`` each.
The hyena_rtf runs of table 1 use xavier, l1_montel and state size 64, so their first seed is also
that cell of tables 2 and 3, and table 1's runs are table 4's default rows; none is trained twice.
``max_position_embeddings`` (the RTF kernel length l_max) is 512 in every run, above the largest
state size, while the models train on ``seq_len``-token chunks.

Finished runs are appended to ``<out>/quality_runs.jsonl`` (``bench.runfile``) and reused when the
same run (same sizes, steps, model and optimizer settings, seed) is asked for again, so an
interrupted grid resumes; delete the file to start over.

The WikiText files are looked up in ``$HYENA_RTF_SHARED/data/wikitext-2-raw/``, else in
``<repo>/../shared`` and ``/work/shared``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from tqdm.auto import tqdm

from hyena_rtf.datamodule import LMDataModule
from hyena_rtf.evaluation import evaluate_ids
from hyena_rtf.lit_module import HyenaLMModule
from hyena_rtf.modeling.presets import PRESETS
from hyena_rtf.training import quiet_lightning

from .report import Report, Table, header
from .runfile import MetricCurve, RunFile, bench_trainer

# The paper's comparison (RTF, implicit Hyena, attention) plus the diagonal SSM of the same state size.
MIXERS = ("hyena_rtf", "hyena_s4d", "hyena", "attention")

TITLE = "Perplexity at equal compute on WikiText-2 text: hyena_rtf vs hyena_s4d vs hyena vs attention"

SIZES = {
    "full": dict(hidden=128, layers=4, seq_len=256, batch=8, steps=1000, eval_every=100, val_batches=16,
                 vocab=4096, seeds=(0, 1, 2), ablation_seeds=(0,)),
    "quick": dict(hidden=64, layers=2, seq_len=128, batch=8, steps=400, eval_every=50, val_batches=8,
                  vocab=2048, seeds=(0, 1, 2), ablation_seeds=(0,)),
    "smoke": dict(hidden=16, layers=1, seq_len=32, batch=2, steps=4, eval_every=2, val_batches=2,
                  vocab=300, seeds=(0, 1), ablation_seeds=(0,)),
}
L_MAX = 512
MAIN_STATE, MAIN_INIT, MAIN_CONSTRAINT = 64, "xavier", "l1_montel"
INITS = ("zeros", "xavier", "montel")
CONSTRAINTS = ("none", "l1_montel")
STATES = (4, 16, 64, 256)
WIKITEXT = Path("data") / "wikitext-2-raw"
TABLES = (1, 2, 3, 4)
DEFAULT_TABLES = (1, 2, 3)
# Table 4: HyenaLMModule optimizer arguments per variant (lr 1e-3 and weight decay 0.25 are the defaults).
# "filters frozen" (filter lr 0) keeps every long filter at its initialisation: how much training them is worth.
OPTIM = {"default": {}, "filters decayed": {"filter_weight_decay": 0.25}, "filter lr 0.1x": {"filter_lr": 1e-4},
         "filters frozen": {"filter_lr": 0.0}}
OPTIM_MIXERS = ("hyena_rtf", "hyena")
# The settings that change a run's result; with the model, optimizer and seed they key the run file.
RUN_KEYS = ("hidden", "layers", "seq_len", "batch", "steps", "eval_every", "val_batches", "vocab")


def find_shared() -> Path:
    """The shared folder holding ``data/wikitext-2-raw`` (see the module docstring for the order)."""
    repo = Path(__file__).resolve().parents[1]
    env = os.environ.get("HYENA_RTF_SHARED")
    candidates = [Path(env)] if env else [repo.parent / "shared", Path("/work/shared")]
    for c in candidates:
        if (c / WIKITEXT / "wiki.valid.raw").is_file() and (c / WIKITEXT / "wiki.test.raw").is_file():
            return c
    raise FileNotFoundError(
        f"no {WIKITEXT}/wiki.valid.raw and wiki.test.raw under {[str(c) for c in candidates]}; "
        "set HYENA_RTF_SHARED to the folder that holds data/wikitext-2-raw"
    )


def model_kwargs(cfg: dict, mixer: str, vocab: int, **overrides) -> dict:
    """HyenaRTFConfig arguments: the tiny preset resized to the mode's backbone."""
    return {
        **PRESETS[f"{mixer}-tiny"],
        "vocab_size": vocab,
        "hidden_size": cfg["hidden"],
        "num_hidden_layers": cfg["layers"],
        "intermediate_size": 4 * cfg["hidden"],
        "output_rank": cfg["hidden"] // 2,
        "max_position_embeddings": L_MAX,
        "state_size": MAIN_STATE,
        "rtf_init": MAIN_INIT,
        "rtf_constraint": MAIN_CONSTRAINT,
        **overrides,
    }


def train_and_score(cfg: dict, data: LMDataModule, model: dict, seed: int, device: torch.device,
                    optim: Optional[dict] = None) -> dict:
    """Train one model for ``cfg["steps"]`` steps and score the whole test split.

    ``optim``: HyenaLMModule optimizer arguments that replace its defaults.
    """
    load = os.getloadavg()[0]
    L.seed_everything(seed, workers=True, verbose=False)
    data.hparams.seed = seed  # the data order follows the seed as well
    module = HyenaLMModule(model=model, **(optim or {}))
    curve = MetricCurve("val/loss")
    trainer = bench_trainer(device, cfg["steps"], cfg["eval_every"], cfg["val_batches"], [curve])
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    train_s = time.perf_counter() - start
    net = module.net.eval().to(device)
    result = evaluate_ids(net, data.token_array("test"), "test", cfg["seq_len"], None, data.meta("test"),
                          batch_size=16, device=device, progress=False)
    return dict(token_ppl=result.token_ppl, word_ppl=result.word_ppl, curve=curve.points, train_s=train_s,
                tokens_scored=result.tokens_scored, skipped=int(module.skipped_steps), load=load)


def _mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _finite(x: float) -> Optional[float]:
    return x if x is not None and math.isfinite(x) else None


def sizes(mode: str, steps: Optional[int] = None, seeds: Optional[tuple] = None) -> dict:
    """The settings of ``mode``, with the number of steps or the seeds replaced when given."""
    if mode not in SIZES:
        raise ValueError(f"mode must be one of {sorted(SIZES)}, got {mode!r}")
    cfg = dict(SIZES[mode])
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        cfg.update(steps=steps, eval_every=min(cfg["eval_every"], steps))
    if seeds is not None:
        if not seeds:
            raise ValueError("seeds must not be empty")
        cfg.update(seeds=tuple(seeds), ablation_seeds=tuple(seeds))  # every table gets the seeds asked for
    return cfg


def run(mode: str, device: torch.device, out: Path, tables: tuple = DEFAULT_TABLES, steps: Optional[int] = None,
        seeds: Optional[tuple] = None) -> Report:
    """Train (or reuse from ``<out>/quality_runs.jsonl``) the runs of ``tables`` in ``mode``
    ("full", "quick" or "smoke"; ``steps`` and ``seeds`` replace the mode's) and tabulate them."""
    bad = [t for t in tables if t not in TABLES]
    if bad or not tables:
        raise ValueError(f"tables must be a non-empty subset of {TABLES}, got {tables}")
    cfg = sizes(mode, steps, seeds)
    wiki = find_shared() / WIKITEXT
    # Many fits would each print Lightning's accelerator summary and stop message.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    quiet_lightning()  # also the LeafSpec deprecation Lightning triggers on torch >= 2.10
    report = Report("quality", TITLE)
    stored = RunFile(out / "quality_runs.jsonl")
    settings = json.dumps({k: cfg[k] for k in RUN_KEYS}, sort_keys=True)
    with tempfile.TemporaryDirectory(prefix="hyena_rtf_quality_") as cache:
        # Token caches go to a temporary folder: derived from shared data, never kept in the repo.
        data = LMDataModule(
            corpus="files", train_path=str(wiki / "wiki.valid.raw"), validation_path=str(wiki / "wiki.test.raw"),
            test_path=str(wiki / "wiki.test.raw"), tokenizer="bpe", vocab_size=cfg["vocab"], seq_len=cfg["seq_len"],
            batch_size=cfg["batch"], cache_dir=cache,
        )
        data.prepare_data()
        vocab = len(data.tokenizer)
        train_tokens = data.meta("train")["tokens"]

        main_key = lambda m: (m, MAIN_INIT, MAIN_CONSTRAINT, MAIN_STATE) if m == "hyena_rtf" else (m,)  # noqa: E731
        jobs: dict[tuple, tuple[dict, int, str]] = {}  # run key -> (model kwargs, seed, optimizer variant)
        if 1 in tables or 4 in tables:
            # Seed-major: an interrupted grid still has whole seeds.
            for seed in cfg["seeds"]:
                for mixer in MIXERS if 1 in tables else OPTIM_MIXERS:
                    jobs[main_key(mixer) + (seed,)] = (model_kwargs(cfg, mixer, vocab), seed, "default")
        if 4 in tables:
            for seed in cfg["seeds"]:
                for mixer in OPTIM_MIXERS:
                    for variant in list(OPTIM)[1:]:
                        jobs[("optim", mixer, variant, seed)] = (model_kwargs(cfg, mixer, vocab), seed, variant)
        if 2 in tables:
            for init in INITS:
                for constraint in CONSTRAINTS:
                    for seed in cfg["ablation_seeds"]:
                        jobs[("hyena_rtf", init, constraint, MAIN_STATE, seed)] = (
                            model_kwargs(cfg, "hyena_rtf", vocab, rtf_init=init, rtf_constraint=constraint), seed, "default")
        if 3 in tables:
            for n in STATES:
                for seed in cfg["ablation_seeds"]:
                    jobs[("hyena_rtf", MAIN_INIT, MAIN_CONSTRAINT, n, seed)] = (
                        model_kwargs(cfg, "hyena_rtf", vocab, state_size=n), seed, "default")
        runs: dict[tuple, dict] = {}
        for key, (model, seed, variant) in tqdm(jobs.items(), desc="quality runs", unit="run", file=sys.stderr):
            run_key = f"{settings}|{json.dumps(model, sort_keys=True)}|{json.dumps(OPTIM[variant], sort_keys=True)}|{seed}"
            runs[key] = stored.get(run_key, lambda: train_and_score(cfg, data, model, seed, device, OPTIM[variant]))
        for (mixer, variant, seed) in [(m, v, s) for m in OPTIM_MIXERS for v in OPTIM for s in cfg["seeds"]]:
            if variant == "default" and main_key(mixer) + (seed,) in runs:
                runs[("optim", mixer, variant, seed)] = runs[main_key(mixer) + (seed,)]

    steps_tokens = cfg["steps"] * cfg["batch"] * cfg["seq_len"]
    setup = (
        f"Backbone: D={cfg['hidden']}, {cfg['layers']} layer{'s' if cfg['layers'] > 1 else ''}, MLP {4 * cfg['hidden']}, low-rank head "
        f"{cfg['hidden'] // 2}, BPE vocabulary {vocab} trained on wiki.valid.raw ({train_tokens:,} tokens), "
        f"{cfg['steps']} steps of {cfg['batch']} x {cfg['seq_len']} tokens ({steps_tokens:,} tokens, "
        f"{steps_tokens / train_tokens:.2f} epochs), AdamW lr 1e-3, weight decay 0.25, cosine with 1% warm-up, "
        f"clipping 1.0 (HyenaLMModule defaults), l_max {L_MAX}. Test: all of wiki.test.raw, "
        f"non-overlapping {cfg['seq_len']}-token chunks."
    )
    report.parts.append(setup)

    if 1 in tables:
        mixers = Table(f"1. Test perplexity by mixer ({len(cfg['seeds'])} seeds each: mean ± std)",
                       ["mixer", "params", "token ppl", "token ppl std", "word ppl", "word ppl std", "train s per run",
                        "seeds"])
        for mixer in MIXERS:
            rs = [runs[main_key(mixer) + (s,)] for s in cfg["seeds"]]
            tok, tok_sd = _mean_std([r["token_ppl"] for r in rs])
            word, word_sd = _mean_std([r["word_ppl"] for r in rs])
            mixers.add(mixer, _params(cfg, mixer, vocab), _finite(tok), _finite(tok_sd), _finite(word), _finite(word_sd),
                       statistics.fmean(r["train_s"] for r in rs), len(rs))
        mixers.notes.append(setup.split(". Test")[0] + ".")
        mixers.notes.append("hyena_rtf: xavier init, l1_montel constraint, state size 64; hyena_s4d: state size 64 "
                            "(32 conjugate pairs), S4D-Lin init. Std is the sample std over seeds.")
        report.parts.append(mixers)

    if 4 in tables:
        optim = Table(f"4. Long-filter optimizer group ({len(cfg['seeds'])} seeds each: mean ± std)",
                      ["mixer", "filter group", "token ppl", "token ppl std", "word ppl", "word ppl std", "seeds"])
        for mixer in OPTIM_MIXERS:
            for variant in OPTIM:
                rs = [runs[("optim", mixer, variant, s)] for s in cfg["seeds"]]
                tok, tok_sd = _mean_std([r["token_ppl"] for r in rs])
                word, word_sd = _mean_std([r["word_ppl"] for r in rs])
                optim.add(mixer, variant, _finite(tok), _finite(tok_sd), _finite(word), _finite(word_sd), len(rs))
        optim.notes.append("Filter group: every long-filter parameter (RTF coefficients, feed-through and scale; the implicit "
                           "filter's positional encoding and MLP). default: lr 1e-3 (= the others'), weight decay 0; "
                           "'filters decayed': weight decay 0.25 like every other parameter; 'filter lr 0.1x': lr 1e-4; 'filters frozen': lr 0, the filters "
                           "keep their initialisation.")
        report.parts.append(optim)

    seeds_note = f"{len(cfg['ablation_seeds'])} seed{'s' if len(cfg['ablation_seeds']) > 1 else ''} per cell"
    if 2 in tables:
        ablation = Table(f"2. RTF init x constraint (hyena_rtf, state 64; {seeds_note})",
                         ["init", "constraint", "token ppl", "word ppl", "skipped steps", "seeds"])
        for init in INITS:
            for constraint in CONSTRAINTS:
                rs = [runs[("hyena_rtf", init, constraint, MAIN_STATE, s)] for s in cfg["ablation_seeds"]]
                ablation.add(init, constraint, _finite(statistics.fmean(r["token_ppl"] for r in rs)),
                             _finite(statistics.fmean(r["word_ppl"] for r in rs)), sum(r["skipped"] for r in rs), len(rs))
        ablation.notes.append(f"{seeds_note} ({'one seed only: differences below the seed std of table 1 are noise' if len(cfg['ablation_seeds']) == 1 else 'mean over seeds'}).")
        ablation.notes.append("'skipped steps': steps whose loss or gradients were not finite (HyenaLMModule skips them).")
        report.parts.append(ablation)

    if 3 in tables:
        states = Table(f"3. RTF state size (hyena_rtf, xavier, l1_montel; {seeds_note})",
                       ["state size", "params", "token ppl", "word ppl", "train s per run"])
        for n in STATES:
            rs = [runs[("hyena_rtf", MAIN_INIT, MAIN_CONSTRAINT, n, s)] for s in cfg["ablation_seeds"]]
            states.add(n, _params(cfg, "hyena_rtf", vocab, state_size=n), _finite(statistics.fmean(r["token_ppl"] for r in rs)),
                       _finite(statistics.fmean(r["word_ppl"] for r in rs)), statistics.fmean(r["train_s"] for r in rs))
        secs = states.column("train s per run")
        states.notes.append(
            f"{seeds_note}. Training time per run at state {STATES[-1]} vs {STATES[0]}: {secs[-1] / secs[0]:.2f}x "
            "(the kernel is computed state-free; wall time of a shared machine, not an interleaved measurement)."
        )
        report.parts.append(states)
    loads = [r["load"] for r in runs.values() if "load" in r]
    report.parts.append(
        f"{len(jobs)} training runs in total (shared cells are trained once). "
        + (f"Load average (1 min) when the runs started: {min(loads):.2f} to {max(loads):.2f}." if loads else "")
    )
    report.plots.append(_plot(cfg, runs, main_key, tables, out / "quality_curves.png"))
    return report


def _params(cfg: dict, mixer: str, vocab: int, **overrides) -> int:
    return sum(p.numel() for p in HyenaLMModule(model=model_kwargs(cfg, mixer, vocab, **overrides)).net.parameters())


def _plot(cfg: dict, runs: dict, main_key, tables: tuple, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ablations = any(t in tables for t in (2, 3, 4))  # the second panel only when there is something to draw in it
    fig, axes = plt.subplots(1, 2 if ablations else 1, figsize=(11 if ablations else 6, 4), sharey=True, squeeze=False)
    ax_m, ax_a = axes[0][0], (axes[0][1] if ablations else None)
    for mixer in MIXERS if 1 in tables else OPTIM_MIXERS:
        curves = [runs[main_key(mixer) + (s,)]["curve"] for s in cfg["seeds"]]
        steps = [p[0] for p in curves[0]]
        vals = [[c[i][1] for c in curves] for i in range(len(steps))]
        mean = [statistics.fmean(v) for v in vals]
        line, = ax_m.plot(steps, mean, "o-", label=f"{mixer} (mean of {len(curves)})")
        ax_m.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], alpha=0.2, color=line.get_color())
    for key, r in runs.items() if ablations else ():
        if key[0] == "hyena_rtf" and key[-1] == cfg["ablation_seeds"][0] and (2 in tables or 3 in tables):
            _, init, constraint, n, _ = key
            ax_a.plot([p[0] for p in r["curve"]], [p[1] for p in r["curve"]], ".-", label=f"{init}/{constraint}/N={n}")
        elif key[0] == "optim" and key[2] != "default" and key[-1] == cfg["seeds"][0]:
            ax_a.plot([p[0] for p in r["curve"]], [p[1] for p in r["curve"]], ".-", label=f"{key[1]}: {key[2]}")
    panels = [(ax_m, "mixers (band: min-max over seeds)")] + ([(ax_a, f"ablations (seed {cfg['seeds'][0]})")] if ablations else [])
    for ax, title in panels:
        ax.set_xlabel("training step")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    ax_m.set_ylabel("loss on the first test batches (nats/token)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Optional[list[str]] = None) -> int:
    """Run some of the quality tables (optionally with other steps or seeds) and write ``<out>/quality.md``."""
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=main.__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true")
    size.add_argument("--smoke", action="store_true")
    parser.add_argument("--tables", type=int, nargs="+", default=list(DEFAULT_TABLES), choices=TABLES,
                        help=f"tables to run (default: {list(DEFAULT_TABLES)}; 4 only when asked for)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the mode's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the mode's)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench/results"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    command = "python -m bench.quality " + " ".join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    report = run(mode, torch.device(args.device), args.out, tuple(sorted(set(args.tables))), args.steps,
                 None if args.seeds is None else tuple(args.seeds))
    head = header(torch.device(args.device), command) + f"\n- mode: {mode}, wall time {time.perf_counter() - start:.0f} s"
    text = report.to_markdown(head)
    (args.out / "quality.md").write_text(text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
