"""Timing and peak-memory measurement shared by every benchmark.

Times are wall-clock medians over repeats after warm-up, with the inter-quartile range as the
spread (on CUDA every measured call is bracketed by ``torch.cuda.synchronize``). Variants that a
table compares are timed *interleaved* (A, B, C, A, B, C, ...), so that slow drifts of a shared
machine hit all of them alike and their ratio stays meaningful.

Peak memory is the largest amount of memory a call allocates on top of what was allocated before
it: on CUDA from the allocator's statistics; on CPU, where torch keeps none, the maximum running
sum of the profiler's allocation events (``profile_memory=True``), which counts tensor memory only
(``tests/test_bench.py`` checks it on a known pattern and against the resident set).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Hashable

import torch
from torch._C._autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

__all__ = ["Timing", "compare", "grad_step", "first_call", "is_oom", "peak_memory", "synchronize"]


@dataclass(frozen=True)
class Timing:
    """Summary of repeated wall-clock measurements, in seconds."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    repeats: int

    @classmethod
    def from_samples(cls, samples: list[float]) -> "Timing":
        if not samples:
            raise ValueError("samples must not be empty")
        if len(samples) >= 2:
            q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        else:
            q1 = q3 = samples[0]
        return cls(statistics.median(samples), q1, q3, min(samples), max(samples), len(samples))

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued kernels on ``device`` (no-op on CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def compare(
    fns: dict[Hashable, Callable[[], object]],
    *,
    repeats: int = 10,
    warmup: int = 2,
    inner: int = 1,
    device: torch.device | str | None = None,
) -> dict[Hashable, Timing]:
    """Time every callable in ``fns``, interleaved, and return one :class:`Timing` per name.

    ``inner`` calls are made per sample (use it for calls far below a millisecond); the reported
    times are per call.
    """
    if repeats < 1 or warmup < 0 or inner < 1:
        raise ValueError("repeats and inner must be >= 1 and warmup >= 0")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    samples: dict[Hashable, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            synchronize(device)
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: Timing.from_samples(s) for name, s in samples.items()}


def grad_step(fn: Callable[[], torch.Tensor], inputs: list, grad: torch.Tensor) -> Callable[[], object]:
    """A callable running ``fn()`` and its backward w.r.t. ``inputs`` with upstream gradient ``grad``."""
    return lambda: torch.autograd.grad(fn(), inputs, grad)


def first_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn`` (its first: compilation and allocation included)."""
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def is_oom(err: BaseException) -> bool:
    """True for allocation failures: CUDA's OutOfMemoryError, or a CPU allocator's RuntimeError."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate" in text)


def _cpu_peak_from_profiler(prof: profile) -> int:
    # The raw event list is the only place where every allocation keeps its own size and time
    # (the aggregated tables attribute memory to operators); it is not a public API, hence the check.
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def peak_memory(fn: Callable[[], object], device: torch.device | str | None = None) -> int:
    """Peak bytes allocated by one call of ``fn`` beyond what was allocated before it."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        fn()
        synchronize(dev)
        return torch.cuda.max_memory_allocated(dev) - before
    if dev.type != "cpu":
        raise ValueError(f"peak_memory supports cpu and cuda devices, got {dev}")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return _cpu_peak_from_profiler(prof)
