"""Finished benchmark runs kept in a JSON-lines file, so an interrupted grid resumes where it stopped.

A grid of training runs on a shared CPU takes an hour or more and may be stopped at any point.
Each finished run is appended as one line ``{"key": ..., "result": ...}``; on restart the runs
already in the file are returned instead of trained again. The key must name every setting that
changes the result (sizes, steps, seed, model options), so a changed setting trains anew; delete
the file to start over. Used by ``bench.memory`` and ``bench.quality``, whose runs also record
their validation curve (``MetricCurve``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import lightning as L


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


class MetricCurve(L.Callback):
    """Collects ``(global step, metric)`` after every validation: the curve a stored run keeps."""

    def __init__(self, metric: str):
        self.metric = metric
        self.points: list[tuple[int, float]] = []

    def on_validation_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get(self.metric)
        if value is not None:
            self.points.append((trainer.global_step, float(value)))


def bench_trainer(device, steps: int, val_every: int, val_batches: int, callbacks: list) -> L.Trainer:
    """The Lightning trainer of one benchmark run: fixed steps, clipping 1.0, and no logger,
    checkpoints, progress bar or summary (a grid trains dozens of these)."""
    return L.Trainer(
        accelerator=device.type, devices=1, max_steps=steps, val_check_interval=val_every,
        check_val_every_n_epoch=None, limit_val_batches=val_batches, num_sanity_val_steps=0,
        gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks,
    )
