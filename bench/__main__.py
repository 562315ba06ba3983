"""Run benchmarks: ``python -m bench [NAME ...] [--quick | --smoke] [--out DIR]``.

Each benchmark prints a markdown report and writes ``<out>/<name>.md`` (plus its plots). A
benchmark is a module with ``TITLE`` and ``run(mode, device, out) -> Report``; add it to
``BENCHMARKS`` below.

On a small machine shared with other work, OpenMP threads that spin-wait stall every parallel
region while a neighbour holds a core (measured: a 1 ms kernel took 110 ms). Use ``--threads 1``
or ``OMP_WAIT_POLICY=PASSIVE`` there; the report header records the thread count and the
OpenMP/allocator environment.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from .report import header

# Benchmark name -> module of this package, imported only when that benchmark runs: the GPU
# benchmark must start on a machine without hydra/omegaconf/datasets, which the data-driven
# benchmarks (quality, distill) import.
BENCHMARKS = ("rtf", "s4d", "decode", "train_speed", "quality", "gpu", "distill", "memory", "convert")


def load_benchmark(name: str):
    """The module of benchmark ``name`` (it has ``run(mode, device, out_dir) -> Report``)."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; choose from {list(BENCHMARKS)}")
    return importlib.import_module(f"{__package__}.{name}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {list(BENCHMARKS)})")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (a minute or two per benchmark on 2 CPU cores; quality about 7 minutes, memory about 10)")
    size.add_argument("--smoke", action="store_true", help="tiny sizes that only check the benchmarks run (used by the tests)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench/results"), help="directory for <name>.md and plots (default: $OUT if set, else bench/results)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args(argv)

    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)

    for name in args.names or list(BENCHMARKS):
        start = time.perf_counter()
        report = load_benchmark(name).run(mode, device, args.out)
        elapsed = time.perf_counter() - start
        head = header(device, command) + f"\n- mode: {mode}, wall time {elapsed:.0f} s"
        text = report.to_markdown(head)
        (args.out / f"{name}.md").write_text(text)
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
