"""Crash safety: SIGKILL at random steps + resume equals an uninterrupted run; NaN handling; SIGTERM."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import ROOT, TINY_MODEL, python_env
from hyena_rtf.checkpoints.loading import load_checkpoint_dict

MAX_STEPS = 60


def train_cmd(log_dir: Path, cache: Path, wikitext_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(ROOT / "train.py"),
        "data=files", f"data.train_path={wikitext_dir / 'wiki.valid.raw'}",
        f"data.validation_path={wikitext_dir / 'wiki.test.raw'}", "data.vocab_size=300", "data.seq_len=32",
        "data.batch_size=4", f"paths.data_dir={cache}", f"paths.log_dir={log_dir}",
        *TINY_MODEL, "model.resid_dropout=0.1", "model.mixer_dropout=0.1",  # dropout: RNG must be restored too
        "trainer.accelerator=cpu", f"trainer.max_steps={MAX_STEPS}", f"trainer.val_check_interval={MAX_STEPS}",
        "trainer.limit_val_batches=2", "trainer.log_every_n_steps=1", "+trainer.enable_progress_bar=false",
        "callbacks.model_checkpoint.every_n_train_steps=5", "~callbacks.sample_generation", "~callbacks.throughput",
        "~callbacks.progress_bar",
        "+logger.csv.flush_logs_every_n_steps=1", "test=false", "seed=7", *extra,
    ]


def run_dirs(log_dir: Path) -> list[Path]:
    return sorted((log_dir / "train" / "runs").glob("*"))


def losses(run: Path) -> dict[int, float]:
    path = run / "csv" / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path) as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint_dict(run / "checkpoints" / "last.ckpt")["state_dict"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, wikitext_dir, token_cache) -> tuple[dict[int, float], dict[str, torch.Tensor]]:
    """Losses and final weights of the run without interruption."""
    ref_dir = tmp_path_factory.mktemp("ref")
    subprocess.run(train_cmd(ref_dir, token_cache, wikitext_dir), env=python_env(ref_dir), check=True,
                   capture_output=True, timeout=300)
    (ref_run,) = run_dirs(ref_dir)
    ref_losses = losses(ref_run)
    assert len(ref_losses) >= MAX_STEPS - 1
    return ref_losses, final_weights(ref_run)


def assert_same_run(runs: list[Path], reference, missing_ok: int = 0) -> None:
    """The runs, merged in order (a resumed run replays the steps after its checkpoint: later runs
    win), logged the reference's losses and ended on its weights."""
    ref_losses, ref_weights = reference
    merged: dict[int, float] = {}
    for run in runs:
        merged.update(losses(run))
    missing = set(ref_losses) - set(merged)
    assert len(missing) <= missing_ok, missing
    assert set(merged) <= set(ref_losses)
    for step, loss in merged.items():
        ref = ref_losses[step]
        assert abs(loss - ref) <= 1e-6 * max(1.0, abs(ref)), (step, loss, ref)
    weights = final_weights(runs[-1])
    for name, ref in ref_weights.items():
        torch.testing.assert_close(weights[name], ref, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_sigkill_and_resume_reproduce_an_uninterrupted_run(tmp_path, wikitext_dir, token_cache, reference):
    env = python_env(tmp_path)
    log_dir = tmp_path / "crashy"
    rng = random.Random(0)
    # Kill early enough that a fast machine cannot finish the run between two polls.
    kills = sorted(rng.sample(range(6, MAX_STEPS // 2), 2))
    for attempt, kill_after in enumerate(kills):
        extra = ["ckpt_path=last"] if attempt else []
        proc = subprocess.Popen(train_cmd(log_dir, token_cache, wikitext_dir, *extra), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        killed = False
        while time.time() < deadline and proc.poll() is None:
            runs = run_dirs(log_dir)
            if runs and max(losses(runs[-1]), default=-1) >= kill_after:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
        assert killed, f"run finished before it could be killed at step {kill_after}"
    subprocess.run(train_cmd(log_dir, token_cache, wikitext_dir, "ckpt_path=last"), env=env, check=True,
                   capture_output=True, timeout=300)
    runs = run_dirs(log_dir)
    assert len(runs) == 3
    # A kill can land after a checkpoint is written but before the CSV row of the step just before
    # it is flushed; that row is then never written again (the resume starts after it). At most one
    # row per kill can go missing; every row that exists must match.
    assert_same_run(runs, reference, missing_ok=len(kills))


@pytest.mark.slow
def test_sigterm_leaves_a_checkpoint_that_resumes_to_the_uninterrupted_run(tmp_path, wikitext_dir, token_cache, reference):
    """SIGTERM (a scheduler's preemption) mid-run: the run stops at once with a checkpoint of where
    it was (no periodic checkpoint exists here), and ``ckpt_path=last`` finishes the reference run."""
    env = python_env(tmp_path)
    log_dir = tmp_path / "logs"
    no_periodic = "callbacks.model_checkpoint.every_n_train_steps=100000"
    proc = subprocess.Popen(train_cmd(log_dir, token_cache, wikitext_dir, no_periodic), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        runs = run_dirs(log_dir)
        if runs and max(losses(runs[-1]), default=-1) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before SIGTERM"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    (run,) = run_dirs(log_dir)
    ckpts = {p.name: load_checkpoint_dict(p)["global_step"] for p in (run / "checkpoints").glob("*.ckpt")}
    assert ckpts and "last.ckpt" in ckpts, stderr[-2000:]
    stopped = ckpts["last.ckpt"]
    assert 3 <= stopped < MAX_STEPS and max(losses(run)) <= stopped  # it stopped there, not at the end
    subprocess.run(train_cmd(log_dir, token_cache, wikitext_dir, no_periodic, "ckpt_path=last"), env=env, check=True,
                   capture_output=True, timeout=300)
    runs = run_dirs(log_dir)
    assert len(runs) == 2 and min(losses(runs[1])) == stopped  # resumed at the step it stopped
    assert_same_run(runs, reference)
