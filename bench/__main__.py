"""Run benchmarks: ``python -m bench [NAME ...] [--quick | --smoke] [--device D] [--out DIR] [key=value ...]``.

Each benchmark prints a markdown report and writes ``<out>/<name>.md`` (plus its plots) and
``<out>/<name>.json`` (the tables' raw numbers). A benchmark is a module with ``TITLE`` and
``run(mode, device, out, **options) -> Report``; add it to ``BENCHMARKS`` below. ``key=value``
arguments are the options of the one benchmark named (``python -m bench quality studies=grid
lrs=1.5e-3,3e-3 jobs=2``): a value with a comma (not followed by a space) is a list, an empty one
an empty list, and numbers and booleans are read as Python literals.

``python -m bench gpu [NAME ...]`` is the unattended GPU run: the benchmarks of ``GPU_SUITE`` (or
those named) at their "gpu" sizes (the 125m presets), on CUDA, within a wall-clock budget (``--budget-s``, else
``BENCH_GPU_BUDGET_S``, else 400 s): a benchmark not started when the budget is spent is skipped
with a note, and one that fails (an out-of-memory error, an op a compiler cannot handle) is
recorded in its report while the others run. ``--smoke`` runs the same suite at tiny sizes anywhere.

On a small machine shared with other work, OpenMP threads that spin-wait stall every parallel
region while a neighbour holds a core (measured: a 1 ms kernel took 110 ms). Use ``--threads 1``
or ``OMP_WAIT_POLICY=PASSIVE`` there; the report header records the thread count and the
OpenMP/allocator environment.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import torch

from .report import Report, header

# Benchmark name -> module of this package, imported only when that benchmark runs: the GPU
# suite must start on a machine without hydra/omegaconf/datasets, which the training-run
# benchmarks (quality, memory, distill) import.
BENCHMARKS = ("rtf", "s4d", "decode", "train_speed", "quality", "distill", "memory", "convert")
GPU_SUITE = ("train_speed", "rtf", "s4d", "decode")  # cheap and essential first


def load_benchmark(name: str):
    """The module of benchmark ``name`` (it has ``run(mode, device, out_dir) -> Report``)."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; choose from {list(BENCHMARKS)}")
    return importlib.import_module(f"{__package__}.{name}")


def parse_options(items: list[str]) -> dict:
    """``key=value`` arguments as keyword arguments of a benchmark's ``run``."""

    def literal(text: str):
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text

    options = {}
    for item in items:
        key, _, value = item.partition("=")
        values = [literal(v) for v in re.split(r",(?! )", value) if v]
        options[key] = values if len(values) != 1 else values[0]
    return options


def run_isolated(name: str, mode: str, device: torch.device, out: Path, options: Optional[dict] = None) -> tuple[Report, bool]:
    """Run one benchmark; a failure becomes a report that says what failed (and False)."""
    try:
        return load_benchmark(name).run(mode, device, out, **(options or {})), True
    except Exception as err:  # noqa: BLE001 - one benchmark must never end an unattended run
        report = Report(name, f"{name}: failed")
        report.parts.append(f"error: {type(err).__name__}: {err}\n\n```text\n{traceback.format_exc(limit=8)}```")
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next benchmark starts without this one's cached blocks
        return report, False


def main(argv: Optional[list[str]] = None) -> int:
    """Parse the command line, run the benchmarks in turn, write and print their reports."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {list(BENCHMARKS)}), or gpu; "
                        "then key=value options of the one benchmark named")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (a minute or two per benchmark on 2 CPU cores; quality and memory several minutes each)")
    size.add_argument("--smoke", action="store_true", help="tiny sizes that only check the benchmarks run (used by the tests)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench/results"), help="directory for <name>.md and plots (default: $OUT if set, else bench/results)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--budget-s", type=float, default=float(os.environ.get("BENCH_GPU_BUDGET_S") or 400), help="wall-clock budget of the gpu suite")
    args = parser.parse_intermixed_args(argv)

    gpu = "gpu" in args.names
    options = parse_options([n for n in args.names if "=" in n])
    names = [n for n in args.names if n != "gpu" and "=" not in n] or (list(GPU_SUITE) if gpu else list(BENCHMARKS))
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)} or gpu")
    if options and len(names) != 1:
        parser.error("key=value options need exactly one benchmark named")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    mode = "smoke" if args.smoke else "quick" if args.quick else "gpu" if gpu else "full"
    if mode == "gpu" and device.type != "cuda":
        # One step of a 125M model on 32k tokens takes minutes on a CPU and cannot be interrupted.
        print(f"Not run: the gpu sizes need a CUDA device (got {device}); use --smoke to check the suite here.")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    started, failed = time.perf_counter(), 0
    for name in names:
        start = time.perf_counter()
        if gpu and start - started > args.budget_s:
            report, ok = Report(name, f"{name}: skipped"), True
            report.parts.append(f"skipped: the budget of {args.budget_s:.0f} s was spent ({start - started:.0f} s).")
        else:
            report, ok = run_isolated(name, mode, device, args.out, options)
        failed += not ok
        head = header(device, command) + f"\n- mode: {mode}, wall time {time.perf_counter() - start:.0f} s"
        text = report.to_markdown(head)
        (args.out / f"{name}.md").write_text(text)
        (args.out / f"{name}.json").write_text(report.to_json())
        print(text, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
