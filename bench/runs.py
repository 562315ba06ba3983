"""Training runs of the benchmarks, through the project's own entry points, kept in a run file.

A run is a Hydra-composed ``conf/train.yaml`` config run by ``train.py``'s task: in subprocesses of
``train.py`` / ``evaluate.py`` / ``distill.py`` (:class:`Runner`, several at a time: ``quality``,
``distill``), or in this process (:func:`train_in_process`: the short synthetic-task runs of
``memory``). Each finished run is appended to a JSON-lines :class:`RunFile` under a key naming every
setting that changes its result, so a stopped grid resumes where it was.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = Path("data") / "wikitext-2-raw"

# Sizes of ``experiment=wikitext_cpu`` per mode: the full experiment, a D=64 quick form, and tiny
# smoke sizes (tests).
WIKITEXT_SIZES = {
    "full": (),
    "quick": ("trainer.max_steps=300", "model.hidden_size=64", "model.num_hidden_layers=2", "model.intermediate_size=256",
              "model.output_rank=32", "data.vocab_size=2048", "data.seq_len=128"),
    "smoke": ("trainer.max_steps=4", "trainer.val_check_interval=2", "model.hidden_size=16", "model.num_hidden_layers=1",
              "model.intermediate_size=32", "model.output_rank=8", "model.max_position_embeddings=64",
              "model.state_size=8", "data.vocab_size=300", "data.seq_len=32", "data.batch_size=2",
              "model.num_attention_heads=2"),
}


class RunFile:
    """Results of finished runs by key, read from and appended to ``path`` (JSON lines)."""

    def __init__(self, path: Path):
        self.path, self.done = Path(path), {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    self.done[rec["key"]] = rec["result"]

    def get(self, key: str, make: Callable[[], dict]) -> dict:
        """The stored result of ``key``, else ``make()``, recorded before it is returned."""
        if key not in self.done:
            result = make()
            # Appended line by line (not rewritten): a run killed mid-way loses only itself.
            with self.path.open("a") as f:
                f.write(json.dumps({"key": key, "result": result}) + "\n")
            self.done[key] = json.loads(json.dumps(result))  # what a restart reads back (tuples become lists)
        return self.done[key]


def compose_train(overrides: list[str], output_dir: Optional[Path] = None):
    """The ``conf/train.yaml`` config with ``overrides``, composed as ``train.py`` composes it; its
    run directory is ``output_dir`` (Hydra's own is not set outside ``train.py``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir or "unused")
    return cfg


def run_key(cfg, **extra) -> str:
    """What decides a run's result: the resolved model, optimizer, data and step settings of its
    composed config (so a changed preset or default trains anew), its seed and starting weights."""
    from omegaconf import OmegaConf

    decided = {group: OmegaConf.to_container(cfg[group], resolve=True) for group in ("model", "optim", "data")}
    decided["trainer"] = {k: cfg.trainer.get(k) for k in ("max_steps", "val_check_interval", "limit_val_batches",
                                                          "gradient_clip_val", "accumulate_grad_batches", "precision")}
    decided.update(seed=cfg.seed, init_from=cfg.get("init_from"), **extra)
    return json.dumps(decided, sort_keys=True)


def build_model(cfg):
    """The model of a composed config (a synthetic task's: the vocabulary is the task's), in train mode."""
    from hydra.utils import instantiate

    from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM

    vocab = cfg.model.vocab_size or cfg.data.vocab_size
    return HyenaRTFForCausalLM(instantiate(cfg.model, vocab_size=vocab, _convert_="all"))


def train_in_process(cfg) -> dict:
    """Run ``train.py``'s task on the composed ``cfg`` in this process: its final metrics, the
    parameter count, the wall time and the load average at the start."""
    from hyena_rtf.tasks.train_task import train

    load = os.getloadavg()[0]
    start = time.perf_counter()
    metrics = train(cfg)
    train_s = time.perf_counter() - start
    return {**metrics, "params": metrics.pop("n_params"), "train_s": train_s, "load": load}


def find_shared() -> Path:
    """The folder holding ``data/wikitext-2-raw``: ``$HYENA_RTF_SHARED``, else ``../shared``, else ``/work/shared``."""
    env = os.environ.get("HYENA_RTF_SHARED")
    candidates = [Path(env)] if env else [REPO.parent / "shared", Path("/work/shared")]
    for c in candidates:
        if (c / WIKITEXT / "wiki.valid.raw").is_file() and (c / WIKITEXT / "wiki.test.raw").is_file():
            return c
    raise FileNotFoundError(
        f"no {WIKITEXT}/wiki.valid.raw and wiki.test.raw under {[str(c) for c in candidates]}; "
        "set HYENA_RTF_SHARED to the folder that holds data/wikitext-2-raw"
    )


def as_tuple(value) -> tuple:
    """A ``key=value`` option of ``python -m bench`` as a tuple (one value stands for a list of one)."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def lr_wd(lr: float, wd: float) -> tuple[str, ...]:
    """The overrides of an AdamW recipe."""
    return (f"optim.lr={lr}", f"optim.weight_decay={wd}")


@dataclass(frozen=True)
class Run:
    """One training run: a mixer, a seed and Hydra overrides on top of ``experiment=wikitext_cpu``."""

    mixer: str
    seed: int
    overrides: tuple[str, ...] = ()


class Runner:
    """Trains and scores :class:`Run` s as subprocesses of train.py/evaluate.py, ``jobs`` at a time,
    on WikiText-2's validation text (training, 10% held out) and test text (scored once per run)."""

    def __init__(self, out: Path, mode_overrides: tuple[str, ...] = (), jobs: int = 1, threads: int = 1):
        from .report import machine_info

        self.out, self.mode_overrides, self.jobs, self.threads = out, tuple(mode_overrides), jobs, threads
        self.wiki = find_shared() / WIKITEXT
        self.store = RunFile(out / "quality_runs.jsonl")
        self.revision = machine_info()["git"]
        self._lock = threading.Lock()
        self.seq_len = int(next((o.split("=")[1] for o in reversed(self.mode_overrides) if o.startswith("data.seq_len=")), 256))

    def command(self, run: Run, run_dir: Path) -> list[str]:
        """The train.py command line of ``run``."""
        return [sys.executable, "train.py", "experiment=wikitext_cpu", f"model={run.mixer}_tiny", f"seed={run.seed}",
                f"data.train_path={self.wiki / 'wiki.valid.raw'}", f"data.test_path={self.wiki / 'wiki.test.raw'}",
                *self.mode_overrides, *run.overrides, f"hydra.run.dir={run_dir}"]

    def evaluate(self, ckpt: Path, result_file: Path) -> dict:
        """evaluate.py on all of the test text in ``seq_len`` windows (once; the JSON is kept)."""
        if not result_file.is_file():
            _call(["evaluate.py", f"ckpt_path={ckpt}", "data=files", f"data.test_path={self.wiki / 'wiki.test.raw'}",
                   f"context={self.seq_len}", "progress=false", f"output={result_file}",
                   f"hydra.run.dir={result_file.parent / 'eval'}"], self.threads,
                  result_file.parent / f"{result_file.stem}_stdout.txt")
        return json.loads(result_file.read_text())

    def distill(self, teacher: Path, state_size: int) -> Path:
        """distill.py on ``teacher`` (once; kept beside the runs): the student's checkpoint."""
        out = self.out / "distilled" / f"{teacher.parent.parent.name}_n{state_size}"
        target = out / "checkpoints" / "last.ckpt"
        if not target.is_file():
            _call(["distill.py", f"ckpt_path={teacher}", f"state_size={state_size}", "constraint=none", f"out_dir={out}",
                   "evaluate=false", "progress=false", "overwrite=true", f"hydra.run.dir={out / 'log'}"],
                  self.threads * self.jobs, out / "distill_stdout.txt")
        return target

    def key(self, run: Run) -> str:
        """The run file's key of ``run`` (:func:`run_key` of its composed config)."""
        return run_key(compose_train([o for o in self.command(run, Path("unused"))[2:] if not o.startswith("hydra.")]),
                       mixer=run.mixer)

    def results(self, runs: list[Run]) -> dict[Run, dict]:
        """Results of ``runs`` (trained now unless stored), in parallel; the first new run alone,
        so that it builds the shared token cache before the others read it."""
        keys = {r: self.key(r) for r in dict.fromkeys(runs)}
        todo = [r for r, k in keys.items() if k not in self.store.done]
        data = json.dumps(json.loads(keys[runs[0]])["data"], sort_keys=True) if runs else ""
        cached = any(json.dumps(json.loads(k).get("data"), sort_keys=True) == data for k in self.store.done
                     if k.startswith("{"))
        if todo and not cached:  # the first run of these data options builds the token cache alone
            self._one(todo.pop(0), keys)
        if todo:
            with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                list(pool.map(lambda r: self._one(r, keys), todo))
        return {r: self.store.done[keys[r]] for r in runs}

    def _one(self, run: Run, keys: dict) -> None:
        result = self._train_and_score(run)
        with self._lock:  # one writer of the run file at a time
            self.store.get(keys[run], lambda: result)

    def _train_and_score(self, run: Run) -> dict:
        slug = hashlib.sha1(json.dumps([run.mixer, run.seed, self.mode_overrides, run.overrides]).encode()).hexdigest()[:12]
        run_dir = self.out / "runs" / f"{run.mixer}_s{run.seed}_{slug}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a partial run from an interrupted study
        load = os.getloadavg()[0]
        start = time.perf_counter()
        command = self.command(run, run_dir)
        _call(command[1:], self.threads, run_dir / "train_stdout.txt")
        train_s = time.perf_counter() - start
        test = self.evaluate(run_dir / "checkpoints" / "last.ckpt", run_dir / "eval_test.json")
        metrics = read_metrics(run_dir / "csv" / "metrics.csv")
        last = {name: values[-1][1] for name, values in metrics.items()}
        curve = metrics.get("val/loss", [])
        return dict(
            test_ppl=test["token_ppl"], test_word_ppl=test["word_ppl"], val_loss=curve[-1][1] if curve else None,
            val_curve=curve, max_pole_radius=last.get("stability/max_pole_radius"),
            kernel_shift=last.get("filters/kernel_shift"), train_s=train_s, load=load, run_dir=str(run_dir),
            command=" ".join(command[1:]), git=self.revision,
        )


def _call(args: list[str], threads: int, log: Path) -> None:
    """Run ``python <args>`` in the repository with ``threads`` OpenMP threads; its output goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HYENA_RTF_DEBUG": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(args[:2])} ... failed (exit {proc.returncode}); log {log}:\n{tail}")


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged metric of a run's CSV log as (step, value) pairs, in order."""
    series: dict[str, list[tuple[int, float]]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            for name, value in row.items():
                if name not in ("step", "epoch") and value not in ("", None):
                    series.setdefault(name, []).append((int(float(row["step"])), float(value)))
    return series
