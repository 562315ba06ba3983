"""Output of the benchmarks: tables, plots, a machine header, and the report file layout.

Benchmarks keep raw numbers in their tables (floats and ints, with the unit in the column name);
formatting happens only here, so tests can check the numbers and readers get aligned text.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Union

import torch

__all__ = ["Table", "Report", "Line", "Panel", "save_plot", "machine_info", "header", "fmt_cell"]

Cell = Union[str, int, float, None]


def fmt_cell(value: Cell) -> str:
    """Strings as they are, ints with separators, floats with 3 significant digits, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isfinite(value) and abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


@dataclass
class Table:
    """A titled table: ``rows`` hold raw cells in the order of ``headers``; ``notes`` follow it."""

    title: str
    headers: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: Cell) -> None:
        if len(cells) != len(self.headers):
            raise ValueError(f"row has {len(cells)} cells, table {self.title!r} has {len(self.headers)} columns")
        self.rows.append(list(cells))

    def column(self, name: str) -> list[Cell]:
        return [row[self.headers.index(name)] for row in self.rows]

    def to_markdown(self) -> str:
        text = [[fmt_cell(c) for c in row] for row in self.rows]
        widths = [max([len(h)] + [len(r[i]) for r in text]) for i, h in enumerate(self.headers)]
        # Numbers right-aligned, text left-aligned (decided from the first filled cell of a column).
        numeric = []
        for i in range(len(self.headers)):
            filled = [row[i] for row in self.rows if row[i] is not None]
            numeric.append(bool(filled) and isinstance(filled[0], (int, float)) and not isinstance(filled[0], bool))
        line = lambda cells: "| " + " | ".join(  # noqa: E731
            c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)
        ) + " |"
        rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
        out = [f"### {self.title}", "", line(self.headers), rule] + [line(r) for r in text]
        if self.notes:
            out += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"


@dataclass
class Report:
    """What one benchmark produced: prose and tables in order, plus the plot files it wrote."""

    name: str
    title: str
    parts: list[Union[str, Table]] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)

    def table(self, title: str) -> Table:
        for part in self.parts:
            if isinstance(part, Table) and part.title == title:
                return part
        raise KeyError(f"no table titled {title!r} in report {self.name!r}")

    def to_json(self) -> str:
        """Every table's raw cells (what a script reads back; the markdown is for people)."""
        tables = [{"title": p.title, "headers": p.headers, "rows": p.rows, "notes": p.notes}
                  for p in self.parts if isinstance(p, Table)]
        return json.dumps({"name": self.name, "title": self.title, "tables": tables}, indent=1, default=str)

    def to_markdown(self, head: str = "") -> str:
        out = [f"# {self.title}", ""]
        if head:
            out += [head, ""]
        for part in self.parts:
            out += [part.to_markdown() if isinstance(part, Table) else part, ""]
        for plot in self.plots:
            out += [f"![{plot.stem}]({plot.name})", ""]
        return "\n".join(out).rstrip() + "\n"


@dataclass
class Line:
    """One curve of a plot; ``lo``/``hi`` (optional) draw a band around it (e.g. min-max over seeds)."""

    label: str
    x: list
    y: list
    lo: Optional[list] = None
    hi: Optional[list] = None
    style: str = "o-"


@dataclass
class Panel:
    """One axes of a plot: curves, horizontal reference lines ``(y, label)``, axis labels and scales."""

    title: str
    xlabel: str
    ylabel: str
    lines: list[Line] = field(default_factory=list)
    hlines: list[tuple[float, str]] = field(default_factory=list)
    xlog: bool = False
    ylog: bool = False


def save_plot(path: Path, panels: list[Panel], title: str = "") -> Path:
    """Draw ``panels`` side by side into the PNG ``path`` (points without a value are left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for line in panel.lines:
            keep = [i for i, v in enumerate(line.y) if v is not None]
            if not keep:
                continue
            xs = [line.x[i] for i in keep]
            drawn, = ax.plot(xs, [line.y[i] for i in keep], line.style, label=line.label)
            if line.lo is not None:
                ax.fill_between(xs, [line.lo[i] for i in keep], [line.hi[i] for i in keep], alpha=0.2,
                                color=drawn.get_color())
        for y, label in panel.hlines:
            ax.axhline(y, linestyle=":", color="gray", label=label)
        if panel.xlog:
            ax.set_xscale("log", base=2)
        if panel.ylog:
            ax.set_yscale("log")
        ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_lines():  # every curve may be empty (all runs failed)
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_revision() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def machine_info(device: Optional[torch.device] = None) -> dict[str, str]:
    """Facts that change benchmark numbers: hardware, threads, versions, allocator settings."""
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{_cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}",
        "gpu": torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else "none used",
        "versions": f"python {platform.python_version()}, torch {torch.__version__}",
        "git": _git_revision(),
        # Other processes on a small shared machine show up as noise (wide IQRs): keep the load.
        "load average (1/5/15 min)": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    # The C allocator decides whether big temporaries cost page faults on CPU, and the OpenMP wait
    # policy whether a busy neighbour stalls every parallel region: record any tuning.
    tuned = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"}
    info["allocator"] = ", ".join(f"{k}={v}" for k, v in sorted(tuned.items())) or "default (glibc)"
    omp = {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_", "KMP_"))}
    info["openmp"] = ", ".join(f"{k}={v}" for k, v in sorted(omp.items())) or "defaults"
    return info


def header(device: Optional[torch.device] = None, command: Optional[str] = None) -> str:
    """Markdown bullet list describing the machine and the software."""
    info = machine_info(device)
    if command is None:
        command = "python -m bench " + " ".join(sys.argv[1:])
    lines = [f"- {k}: {v}" for k, v in info.items()] + [f"- command: `{command.strip()}`"]
    return "\n".join(lines)
