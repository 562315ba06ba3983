"""Layer speed, RTF vs S4D, over sequence length and state size (the RTF paper's Fig. 3 protocol).

One long-filter layer (kernel generation + the shared FFT convolution of a batch-1 input) forward
and backward, for the RTF filter, the S4D filter of :mod:`hyena_rtf.modeling.s4d`, and, where it
fits a memory budget, the materialised S4D kernel of :class:`bench.baselines.S4DKernel`, at every
(L, N) of the grid, all of one L interleaved. Protocol and reading: BENCHMARKS.md section 7.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from hyena_rtf.modeling.fftconv import fft_conv
from hyena_rtf.modeling.rtf import RTF
from hyena_rtf.modeling.s4d import S4D

from .baselines import S4DKernel
from .report import Report, Table
from .timing import compare, grad_step, peak_memory

TITLE = "Layer speed: RTF vs S4D over sequence length and state size (paper Fig. 3)"

SIZES = {
    "full": dict(D=64, B=1, lengths=(1024, 2048, 4096, 16384), states=(4, 16, 64, 256, 1024, 2048),
                 repeats=7, warmup=1, materialised_max_gb=1.0),
    "quick": dict(D=64, B=1, lengths=(1024, 4096), states=(4, 64, 1024), repeats=3, warmup=1, materialised_max_gb=0.5),
    # The RTF layer vs N at the 125m width (B=4, L=4096), beside S4D, on CUDA.
    "gpu": dict(D=768, B=4, lengths=(4096,), states=(16, 64, 256, 1024, 2048), repeats=20, warmup=2,
                materialised_max_gb=1.0),
    "smoke": dict(D=4, B=1, lengths=(32, 64), states=(4, 16), repeats=2, warmup=1, materialised_max_gb=0.01),
}

MS, MB = 1e3, 1e-6
PAPER_MEAN_SPEEDUP = 1.35  # "35% faster": S4 layer time / RTF layer time, averaged


def _materialised_layer(kernel: S4DKernel, skip: torch.Tensor):
    """The minimal S4D layer: materialised Vandermonde kernel, feed-through on tap 0, FFT convolution."""

    def layer(u: torch.Tensor) -> torch.Tensor:
        k = kernel.kernel(u.shape[1])  # (D, L), builds (D, N/2, L)
        k = torch.cat([k[:, :1] + skip.unsqueeze(-1), k[:, 1:]], -1)
        return fft_conv(u, k)

    return layer


def layer_grid(cfg: dict, device: torch.device, report: Report) -> Table:
    D, B = cfg["D"], cfg["B"]
    table = Table(
        f"1. One filter layer, forward + backward (D={D}, batch {B}; ms per call, median of {cfg['repeats']})",
        ["L", "N", "RTF ms", "RTF IQR ms", "S4D ms", "S4D IQR ms", "S4D / RTF", "RTF peak MB", "S4D peak MB",
         "S4D materialised ms", "materialised peak MB"],
    )
    for L in cfg["lengths"]:
        runs = {}
        u = torch.randn(B, L, D, device=device, requires_grad=True)
        grad = torch.randn(B, L, D, device=device)
        materialised_fits = {}
        for N in cfg["states"]:
            torch.manual_seed(N)
            if N < L:  # RTF samples its transfer function at L points: it needs N < L
                # The paper's parametrisation (coefficients as they are): the state-free path. The
                # default reflection constraint adds an O(N^2) map on the parameters (bench rtf, table 1).
                rtf = RTF(D, N, L, constraint="l1_montel", decay=None, device=device)
                runs[("rtf", N)] = grad_step(lambda rtf=rtf: rtf(u), [u, *rtf.parameters()], grad)
            s4d = S4D(D, N, L, device=device)
            runs[("s4d", N)] = grad_step(lambda s4d=s4d: s4d(u), [u, *s4d.parameters()], grad)
            base = S4DKernel(D, N).to(device)
            # Forward + backward hold about four (D, N/2, L) complex tensors.
            materialised_fits[N] = 4 * base.vandermonde_bytes(L) <= cfg["materialised_max_gb"] * 1e9
            if materialised_fits[N]:
                skip = torch.randn(D, device=device, requires_grad=True)
                layer = _materialised_layer(base, skip)
                runs[("mat", N)] = grad_step(lambda layer=layer: layer(u), [u, *base.parameters(), skip], grad)
        t = compare(runs, repeats=cfg["repeats"], warmup=cfg["warmup"], device=device)
        for N in cfg["states"]:
            r, s = t.get(("rtf", N)), t[("s4d", N)]
            mat = t.get(("mat", N))
            table.add(
                L, N, r.median * MS if r else None, r.iqr * MS if r else None, s.median * MS, s.iqr * MS,
                s.median / r.median if r else None,
                peak_memory(runs[("rtf", N)], device) * MB if r else None, peak_memory(runs[("s4d", N)], device) * MB,
                mat.median * MS if mat else None,
                peak_memory(runs[("mat", N)], device) * MB if mat else None,
            )
        del runs
    ratios = [r for r in table.column("S4D / RTF") if r is not None]
    no_rtf = [(L, N) for L, N, r in zip(table.column("L"), table.column("N"), table.column("S4D / RTF")) if r is None]
    table.notes.append(
        f"S4D / RTF: mean over the {len(ratios)} cells {statistics.fmean(ratios):.2f}x (geometric mean "
        f"{statistics.geometric_mean(ratios):.2f}x); RTF faster in {sum(r > 1 for r in ratios)} of {len(ratios)} cells. "
        f"Paper: on average {PAPER_MEAN_SPEEDUP:.2f}x (BENCHMARKS.md section 7)."
    )
    skipped = [(L, N) for L, N, m in zip(table.column("L"), table.column("N"), table.column("S4D materialised ms")) if m is None]
    if skipped:
        table.notes.append(f"The materialised formulation was not run at (L, N) in {skipped} (over "
                           f"{cfg['materialised_max_gb']} GB of (D, N/2, L) complex powers).")
    if no_rtf:
        table.notes.append(f"No RTF at (L, N) in {no_rtf}: RTF needs N < L; those cells are left out of the means.")
    report.parts.append(table)
    report.parts.append(_summary(table))
    return table


def _summary(table: Table) -> Table:
    lengths = sorted(set(table.column("L")))
    states = sorted(set(table.column("N")))
    cell = {(r[0], r[1]): r[6] for r in table.rows}
    summary = Table("2. S4D / RTF time ratio per cell (rows L, columns N)", ["L"] + [f"N={n}" for n in states] + ["mean"])

    def mean(vals):
        vals = [v for v in vals if v is not None]
        return statistics.fmean(vals) if vals else None

    for L in lengths:
        vals = [cell[(L, n)] for n in states]
        summary.add(L, *vals, mean(vals))
    summary.add("mean", *[mean(cell[(L, n)] for L in lengths) for n in states], mean(cell.values()))
    summary.notes.append("Means over the cells where both layers ran ('-': RTF needs N < L).")
    return summary


def run(mode: str, device: torch.device, out: Path) -> Report:
    """Run the grid at the sizes of ``mode`` ("full", "quick" or "smoke")."""
    if mode not in SIZES:
        raise ValueError(f"mode must be one of {sorted(SIZES)}, got {mode!r}")
    torch.manual_seed(0)
    report = Report("s4d", TITLE)
    layer_grid(SIZES[mode], device, report)
    return report
