"""Budgeted, failure-isolated measurement cells for the unattended GPU benchmark.

The GPU benchmark runs once, without anyone watching, on a machine lent for a few minutes. Two
rules follow from that:

- One failing measurement (out of memory, an op a compiler cannot handle) must not cost the
  others: every cell runs inside :meth:`Cells.run`, which records ``"OOM"`` or the error's first
  line as the cell's status, frees the allocator cache and carries on.
- The whole run has a wall-clock budget. Work that would not fit in what is left is skipped and
  the skip is written down (with the estimate that decided it), never silently dropped.

After every cell the raw numbers are written to ``gpu.json`` so that a run killed from outside
still leaves what it measured.
"""

from __future__ import annotations

import gc
import json
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import torch

__all__ = ["Budget", "Cells", "is_oom"]


def is_oom(err: BaseException) -> bool:
    """True for allocation failures (CUDA's OutOfMemoryError, or a CPU allocator RuntimeError)."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate" in text)


class Budget:
    """Wall-clock budget of a run: ``left()`` seconds remain; ``fits(s)`` says whether s of them do."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter):
        if seconds <= 0:
            raise ValueError(f"budget must be > 0 seconds, got {seconds}")
        self.seconds, self._clock = seconds, clock
        self._start = clock()

    def elapsed(self) -> float:
        return self._clock() - self._start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def fits(self, estimate_s: float) -> bool:
        return estimate_s <= self.left()


def free_memory(device: torch.device) -> None:
    """Drop Python garbage and hand cached CUDA blocks back, so the next cell starts clean.

    Never raises: after a sticky CUDA error (an illegal access) synchronize fails again, and the run
    must still reach the point where it writes its tables.
    """
    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - the failing cell already recorded the error
            pass


class Cells:
    """Runs named cells under a :class:`Budget`, records their results and status, saves JSON.

    ``results`` maps a section name to a list of records (dicts of raw numbers); each record has a
    ``status``: ``"ok"``, ``"OOM"``, ``"skipped: ..."`` or ``"error: ..."``.
    """

    def __init__(self, budget: Budget, device: torch.device, json_path: Optional[Path], meta: dict[str, Any]):
        self.budget, self.device, self.json_path = budget, device, json_path
        self.meta = dict(meta)
        self.results: dict[str, list[dict[str, Any]]] = {}
        self.errors: list[str] = []

    def record(self, section: str, **fields: Any) -> dict[str, Any]:
        """Append a record to ``section`` and save."""
        rec = dict(fields)
        rec.setdefault("status", "ok")
        self.results.setdefault(section, []).append(rec)
        self.save()
        return rec

    def skip(self, section: str, reason: str, **fields: Any) -> dict[str, Any]:
        return self.record(section, **fields, status=f"skipped: {reason}")

    def run(self, section: str, fn: Callable[[], Optional[dict[str, Any]]], *, estimate_s: float = 0.0,
            **fields: Any) -> Optional[dict[str, Any]]:
        """Run ``fn`` (returning the record's numbers) unless ``estimate_s`` does not fit the budget.

        Returns the record, whatever its status. ``fields`` identify the cell (mixer, L, ...).
        """
        if not self.budget.fits(estimate_s):
            return self.skip(section, f"budget ({estimate_s:.0f} s estimated, {max(self.budget.left(), 0):.0f} s left)",
                             **fields)
        start = time.perf_counter()
        try:
            numbers = fn() or {}
        except Exception as err:  # noqa: BLE001 - one cell must never end the unattended run
            first_line = (str(err).splitlines() or [""])[0][:200]
            status = "OOM" if is_oom(err) else f"error: {type(err).__name__}: {first_line}"
            if not is_oom(err):
                self.errors.append(f"{section} {fields}: {status}\n{traceback.format_exc(limit=6)}")
            numbers = {}
            free_memory(self.device)  # only after a failure: a collection per cell would eat the budget
        else:
            status = "ok"
        status = numbers.pop("status", status)  # a cell may report its own status (e.g. partly run)
        return self.record(section, **fields, **numbers, status=status, cell_s=time.perf_counter() - start)

    def save(self) -> None:
        if self.json_path is None:
            return
        payload = {"meta": {**self.meta, "elapsed_s": self.budget.elapsed()}, "results": self.results,
                   "errors": self.errors}
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=1, default=str))
        tmp.replace(self.json_path)
