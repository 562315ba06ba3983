"""Perplexity at equal compute: hyena_rtf vs hyena vs attention on real text, plus RTF ablations.

    python -m bench quality --quick --threads 1   # D=64, 2 layers, 400 steps: about 6-7 min on 2 cores
    python -m bench quality --threads 1           # D=128, 4 layers, 1000 steps: estimated 1.5 h

(The full-mode time is an estimate from the quick mode's cost per step and per evaluation, scaled
by tokens and width; it has not been measured.)

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

Runs:
1. the three mixers, ``seeds`` each (mean and sample std over seeds);
2. RTF init (zeros / xavier / montel) x constraint (none / l1_montel);
3. RTF state size (4, 16, 64, 256).
The hyena_rtf runs of table 1 use xavier, l1_montel and state size 64, so their first seed is also
that cell of tables 2 and 3 and is not trained twice. ``max_position_embeddings`` (the RTF kernel
length l_max) is 512 in every run, above the largest state size, while the models train on
``seq_len``-token chunks.

The WikiText files are looked up in ``$HYENA_RTF_SHARED/data/wikitext-2-raw/``, else in
``<repo>/../shared`` and ``/work/shared``.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

import lightning as L
import torch

from hyena_rtf.datamodule import LMDataModule
from hyena_rtf.evaluation import evaluate_ids
from hyena_rtf.lit_module import HyenaLMModule
from hyena_rtf.modeling.presets import PRESETS

from .report import Report, Table

# The three mixers of the paper's comparison (the config also accepts hyena_s4d; see bench/s4d.py).
MIXERS = ("hyena_rtf", "hyena", "attention")

TITLE = "Perplexity at equal compute on WikiText-2 text: hyena_rtf vs hyena vs attention"

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


class _Curve(L.Callback):
    """Collects (step, val/loss) after every validation."""

    def __init__(self):
        self.points: list[tuple[int, float]] = []

    def on_validation_end(self, trainer, pl_module):
        loss = trainer.callback_metrics.get("val/loss")
        if loss is not None:
            self.points.append((trainer.global_step, float(loss)))


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


def train_and_score(cfg: dict, data: LMDataModule, model: dict, seed: int, device: torch.device) -> dict:
    """Train one model for ``cfg["steps"]`` steps and score the whole test split."""
    L.seed_everything(seed, workers=True, verbose=False)
    data.hparams.seed = seed  # the data order follows the seed as well
    module = HyenaLMModule(model=model)
    curve = _Curve()
    trainer = L.Trainer(
        accelerator=device.type, devices=1, max_steps=cfg["steps"], val_check_interval=cfg["eval_every"],
        check_val_every_n_epoch=None, limit_val_batches=cfg["val_batches"], num_sanity_val_steps=0,
        gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[curve],
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    train_s = time.perf_counter() - start
    net = module.net.eval().to(device)
    result = evaluate_ids(net, data.token_array("test"), "test", cfg["seq_len"], None, data.meta("test"),
                          batch_size=16, device=device, progress=False)
    return dict(token_ppl=result.token_ppl, word_ppl=result.word_ppl, curve=curve.points, train_s=train_s,
                tokens_scored=result.tokens_scored, skipped=int(module.skipped_steps))


def _mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _finite(x: float) -> Optional[float]:
    return x if x is not None and math.isfinite(x) else None


def run(mode: str, device: torch.device, out: Path) -> Report:
    """Run every training run of ``mode`` ("full", "quick" or "smoke") and tabulate them."""
    if mode not in SIZES:
        raise ValueError(f"mode must be one of {sorted(SIZES)}, got {mode!r}")
    cfg = SIZES[mode]
    wiki = find_shared() / WIKITEXT
    # Seventeen fits would each print Lightning's accelerator summary and stop message.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    report = Report("quality", TITLE)
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
        runs: dict[tuple, dict] = {}

        def do(key: tuple, model: dict, seed: int) -> dict:
            if key + (seed,) not in runs:
                runs[key + (seed,)] = train_and_score(cfg, data, model, seed, device)
            return runs[key + (seed,)]

        main_key = lambda m: (m, MAIN_INIT, MAIN_CONSTRAINT, MAIN_STATE) if m == "hyena_rtf" else (m,)  # noqa: E731
        for mixer in MIXERS:
            for seed in cfg["seeds"]:
                do(main_key(mixer), model_kwargs(cfg, mixer, vocab), seed)
        for init in INITS:
            for constraint in CONSTRAINTS:
                for seed in cfg["ablation_seeds"]:
                    do(("hyena_rtf", init, constraint, MAIN_STATE),
                       model_kwargs(cfg, "hyena_rtf", vocab, rtf_init=init, rtf_constraint=constraint), seed)
        for n in STATES:
            for seed in cfg["ablation_seeds"]:
                do(("hyena_rtf", MAIN_INIT, MAIN_CONSTRAINT, n), model_kwargs(cfg, "hyena_rtf", vocab, state_size=n), seed)

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

    mixers = Table(f"1. Test perplexity by mixer ({len(cfg['seeds'])} seeds each: mean ± std)",
                   ["mixer", "params", "token ppl", "token ppl std", "word ppl", "word ppl std", "train s per run", "seeds"])
    for mixer in MIXERS:
        rs = [runs[main_key(mixer) + (s,)] for s in cfg["seeds"]]
        tok, tok_sd = _mean_std([r["token_ppl"] for r in rs])
        word, word_sd = _mean_std([r["word_ppl"] for r in rs])
        params = sum(p.numel() for p in HyenaLMModule(model=model_kwargs(cfg, mixer, vocab)).net.parameters())
        mixers.add(mixer, params, _finite(tok), _finite(tok_sd), _finite(word), _finite(word_sd),
                   statistics.fmean(r["train_s"] for r in rs), len(rs))
    mixers.notes.append(setup.split(". Test")[0] + ".")
    mixers.notes.append("hyena_rtf: xavier init, l1_montel constraint, state size 64. Std is the sample std over seeds.")
    report.parts.append(mixers)

    seeds_note = f"{len(cfg['ablation_seeds'])} seed{'s' if len(cfg['ablation_seeds']) > 1 else ''} per cell"
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

    states = Table(f"3. RTF state size (hyena_rtf, xavier, l1_montel; {seeds_note})",
                   ["state size", "params", "token ppl", "word ppl", "train s per run"])
    for n in STATES:
        rs = [runs[("hyena_rtf", MAIN_INIT, MAIN_CONSTRAINT, n, s)] for s in cfg["ablation_seeds"]]
        params = sum(p.numel() for p in HyenaLMModule(model=model_kwargs(cfg, "hyena_rtf", vocab, state_size=n)).net.parameters())
        states.add(n, params, _finite(statistics.fmean(r["token_ppl"] for r in rs)),
                   _finite(statistics.fmean(r["word_ppl"] for r in rs)), statistics.fmean(r["train_s"] for r in rs))
    secs = states.column("train s per run")
    states.notes.append(
        f"{seeds_note}. Training time per run at state {STATES[-1]} vs {STATES[0]}: {secs[-1] / secs[0]:.2f}x "
        "(the kernel is computed state-free; wall time of a shared machine, not an interleaved measurement)."
    )
    report.parts.append(states)
    report.parts.append(f"{len(runs)} training runs in total (the first hyena_rtf seed is shared by the three tables).")
    report.plots.append(_plot(cfg, runs, main_key, out / "quality_curves.png"))
    return report


def _plot(cfg: dict, runs: dict, main_key, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_m, ax_a) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for mixer in MIXERS:
        curves = [runs[main_key(mixer) + (s,)]["curve"] for s in cfg["seeds"]]
        steps = [p[0] for p in curves[0]]
        vals = [[c[i][1] for c in curves] for i in range(len(steps))]
        mean = [statistics.fmean(v) for v in vals]
        line, = ax_m.plot(steps, mean, "o-", label=f"{mixer} (mean of {len(curves)})")
        ax_m.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], alpha=0.2, color=line.get_color())
    for key, r in runs.items():
        if key[0] == "hyena_rtf" and key[-1] == cfg["ablation_seeds"][0]:
            _, init, constraint, n, _ = key
            ax_a.plot([p[0] for p in r["curve"]], [p[1] for p in r["curve"]], ".-", label=f"{init}/{constraint}/N={n}")
    for ax, title in ((ax_m, "mixers (band: min-max over seeds)"), (ax_a, "hyena_rtf ablations (seed 0)")):
        ax.set_xlabel("training step")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    ax_m.set_ylabel("loss on the first test batches (nats/token)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
