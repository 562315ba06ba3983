"""The 125M recipes on one GPU: training step, RTF state-size sweep and decoding, in one budgeted run.

    python -m bench gpu              # one H200: about 7 minutes, tables in $OUT (else bench/results)
    python -m bench gpu --smoke      # tiny sizes on any device: checks that everything runs

Sections (each cell isolated: an OOM or error is recorded and the run goes on, see bench.gpu_cells):

1. Training step of ``hyena_rtf-125m``, ``hyena-125m`` and ``attention-125m`` at L = 1024, 4096 and
   16384 with a fixed number of tokens per step, bf16 autocast, fused AdamW: step time, tokens/s,
   MFU from the analytic FLOP count (FFTs included), peak memory; eager for every L, then
   ``torch.compile`` for as many L as the budget allows (compile time reported separately).
2. RTF kernel generation and RTF layer forward+backward against state size N at L = 4096.
3. Decoding ms/token at positions 128..16384, batch 1 and 16: recurrent Hyena-RTF (model forward,
   static buffers, CUDA graph) vs attention with a KV cache.

Writes ``gpu.json`` (raw numbers, rewritten after every cell) beside the markdown report, and ends
the report with a summary of the targets. The run keeps a wall-clock budget (``BENCH_GPU_BUDGET_S``,
default 400 s in full mode) and skips, with a note, what would not fit. ``BENCH_GPU_SECTIONS`` (a comma
list of train, rtf, decode, compile) runs a subset, e.g. to repeat one that failed.

Imports nothing from the training stack's configuration or data side (Hydra, OmegaConf, datasets,
wandb), which the GPU image lacks; tests/test_gpu_bench.py runs it with those imports blocked.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from hyena_rtf.modeling.rtf import RTF

from .gpu_cells import Budget, Cells
from .gpu_decode import decode_pass
from .gpu_train import MIXERS, compile_pass, eager_pass
from .report import Report, Table, header
from .rtf import _grad_step
from .timing import compare, peak_memory

TITLE = "The 125M recipes on one GPU: training step, RTF state size, decoding"

SIZES = {
    "full": dict(
        budget_s=400.0,
        train=dict(size="125m", lengths=(1024, 4096, 16384), tokens=32768, repeats=10, warmup=2, build_s=30.0,
                   compile_s=100.0, compile_lengths=(4096, 16384, 1024)),
        rtf=dict(D=768, L=4096, B=4, states=(16, 64, 256, 1024, 2048), repeats=20, estimate_s=30.0),
        decode=dict(size="125m", positions=(128, 1024, 4096, 16384), batches=(1, 16), repeats=10, inner=8,
                    build_s=30.0, prepare_s=20.0, timing_s=30.0),
    ),
    "smoke": dict(
        budget_s=300.0,
        train=dict(size="tiny", lengths=(32, 64), tokens=128, repeats=2, warmup=1, build_s=1.0,
                   compile_s=float("inf"), compile_lengths=(64,), overrides=dict(vocab_size=512)),
        rtf=dict(D=16, L=64, B=2, states=(4, 16), repeats=2, estimate_s=1.0),
        decode=dict(size="tiny", positions=(8, 40), batches=(1, 2), repeats=2, inner=2,
                    build_s=1.0, prepare_s=1.0, timing_s=1.0),
    ),
}
SIZES["quick"] = SIZES["smoke"]  # the harness's --quick: no separate size here

# Dense bf16 tensor-core peak (no sparsity) and HBM bandwidth from the vendor's data sheets, by a
# substring of the device name; MFU and floors are left empty on devices not listed here.
PEAKS = {"H200": (989.4e12, 4.8e12), "H100": (989.4e12, 3.35e12), "A100": (312e12, 2.0e12)}


def device_peaks(device: torch.device) -> tuple[Optional[float], Optional[float], str]:
    """(bf16 FLOP/s, bytes/s, where they came from); ``BENCH_PEAK_TFLOPS`` / ``BENCH_PEAK_TBS`` override."""
    flops = bw = None
    source = "unknown device: no MFU or floor"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (f, b) in PEAKS.items():
            if key in name:
                flops, bw, source = f, b, f"data sheet of {key}"
    if os.environ.get("BENCH_PEAK_TFLOPS"):
        flops, source = float(os.environ["BENCH_PEAK_TFLOPS"]) * 1e12, "BENCH_PEAK_TFLOPS"
    if os.environ.get("BENCH_PEAK_TBS"):
        bw = float(os.environ["BENCH_PEAK_TBS"]) * 1e12
    return flops, bw, source


def software_info(device: torch.device) -> dict[str, Any]:
    """Versions and device facts for the header and the JSON."""
    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), sms=props.multi_processor_count,
                    cudnn=torch.backends.cudnn.version())
    else:
        info["device_name"] = platform.processor() or platform.machine()
    return info


# ---------------------------------------------------------------------- section 2: RTF vs N
def rtf_pass(cells: Cells, cfg: dict, device: torch.device) -> None:
    """Section "rtf": kernel generation and layer fwd+bwd per state size, all N interleaved."""
    D, L, B = cfg["D"], cfg["L"], cfg["B"]
    runs = {}

    def prepare():
        grad_k = torch.randn(D, L, device=device)
        u = torch.randn(B, L, D, device=device, requires_grad=True)
        grad_y = torch.randn(B, L, D, device=device)
        for N in cfg["states"]:
            f = RTF(D, N, L, constraint="l1_montel", decay=None, device=device)  # the state-free path (see bench rtf)
            params = list(f.parameters())
            runs[("kernel", N)] = _grad_step(lambda f=f: f.kernel(L), params, grad_k)
            runs[("layer", N)] = _grad_step(lambda f=f: f(u), [u, *params], grad_y)
        return {}

    if cells.run("rtf_prepare", prepare, estimate_s=cfg["estimate_s"])["status"] != "ok":
        return
    timings: dict = {}

    def timed():
        timings.update(compare(runs, repeats=cfg["repeats"], warmup=2, device=device))
        return {}

    rec = cells.run("rtf_timing", timed, estimate_s=cfg["estimate_s"])
    for (what, N), fn in runs.items():
        if (what, N) not in timings:
            cells.record("rtf", what=what, N=N, status=rec["status"])
            continue
        t = timings[(what, N)]
        cells.run("rtf", lambda fn=fn, t=t: dict(ms=t.median * 1e3, iqr_ms=t.iqr * 1e3,
                                                 peak_mb=peak_memory(fn, device) / 1e6),
                  what=what, N=N, D=D, L=L, B=B if what == "layer" else None)
    runs.clear()


# ---------------------------------------------------------------------- tables and summary
def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok"]


def _find(rows, **key) -> Optional[dict]:
    return next((r for r in _ok(rows) if all(r.get(k) == v for k, v in key.items())), None)


def _status_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") != "ok"]


def train_tables(cells: Cells) -> list[Table]:
    rows = cells.results.get("train", [])
    table = Table("1. Training step (fwd + bwd + AdamW, bf16 autocast), fixed tokens per step",
                  ["mixer", "L", "batch", "compile", "step ms", "IQR ms", "tokens/s", "MFU %", "floor ms (FLOPs)",
                   "floor ms (bytes)", "step peak GB", "compiled / eager", "status"])
    for r in rows:
        mfu = r.get("mfu")
        table.add(r["mixer"], r["L"], r.get("batch"), bool(r.get("compiled")), r.get("step_ms"), r.get("iqr_ms"),
                  r.get("tokens_per_s"), mfu * 100 if mfu is not None else None, r.get("floor_ms_flops"),
                  r.get("floor_ms_bytes"), r.get("step_peak_gb"), r.get("speedup_vs_eager"), r["status"])
    table.notes += [
        "Eager rows of one L come from one interleaved loop over the three mixers; compiled rows from a second "
        "loop with the eager and compiled variants of all mixers of that L, whose eager/compiled ratio is the "
        "'compiled / eager' column (> 1: compile is faster).",
        "MFU = analytic training FLOPs (hyena_rtf.training.flops, FFTs included, 3x forward) / step time / dense bf16 peak.",
        "Floors: FLOPs at the bf16 peak; bytes = 32 B per parameter (weights read, fused AdamW) plus an "
        "estimate of the fp32 FFT traffic of the long convolutions (bench.gpu_train) at the HBM peak.",
        "step peak GB = parameters + AdamW state (counted) + the peak a step allocates above them (measured).",
    ]
    alone = [f"{r['mixer']} at L={r['L']}" for r in rows if r.get("timed_alone")]
    if alone:
        table.notes.append(f"Timed alone (the interleaved loop of their L failed, see gpu.json): {', '.join(alone)}.")
    comp = Table("1b. torch.compile time (first compiled call minus one eager step)",
                 ["mixer", "L", "compile s", "status"])
    for r in cells.results.get("compile", []):
        comp.add(r["mixer"], r["L"], r.get("compile_s"), r["status"])
    return [table, comp]


def rtf_table(cells: Cells) -> Table:
    rows = cells.results.get("rtf", [])
    table = Table("2. RTF vs state size N (kernel: D x L taps fwd+bwd; layer: B x L x D fwd+bwd)",
                  ["what", "N", "ms", "IQR ms", "peak MB", "/ N=min", "status"])
    base = {}
    for r in _ok(rows):
        base.setdefault(r["what"], r["ms"])
    for r in rows:
        ratio = r["ms"] / base[r["what"]] if r.get("ms") is not None and r["what"] in base else None
        table.add(r["what"], r["N"], r.get("ms"), r.get("iqr_ms"), r.get("peak_mb"), ratio, r["status"])
    table.notes.append("All state sizes and both kinds timed in one interleaved loop; '/ N=min' is the ratio to the smallest N.")
    return table


def decode_table(cells: Cells) -> Table:
    table = Table("3. Decoding: ms per token (greedy, LM head included) and decoding state",
                  ["variant", "batch", "position", "ms / token", "IQR ms", "tokens/s", "floor ms", "state MiB",
                   "status"])
    for r in cells.results.get("decode", []):
        table.add(r["variant"], r["batch"], r["position"], r.get("ms_per_token"), r.get("iqr_ms"),
                  r.get("tokens_per_s"), r.get("floor_ms"), r.get("state_mib"), r["status"])
    table.notes += [
        "Variants of one (batch, position) timed interleaved, several greedy steps per sample.",
        "floor ms = (weights + recurrent state read and written, or KV cache read) / HBM peak bandwidth.",
        "The attention baseline runs eagerly with transformers' DynamicCache (it appends by concatenation); "
        "a CUDA-graphed static-cache attention decoder is not part of this comparison.",
    ]
    return table


def summary(cells: Cells, cfg: dict) -> Table:
    """The targets of the issue, each with the measured value and whether it was met (full mode only:
    the tiny sizes of the smoke mode say nothing about a target)."""
    table = Table("Summary: targets", ["target", "measured", "verdict"])
    full = cells.meta.get("mode") == "full"

    def _verdict(value: Optional[float], ok: bool) -> str:
        if value is None:
            return "not measured"
        return ("met" if ok else "MISSED") if full else "(smoke: no verdict)"

    train = cells.results.get("train", [])
    for L, factor in ((4096, 1.0), (16384, 2.0)):
        for compiled in (False, True):
            r, a = _find(train, mixer="hyena_rtf", L=L, compiled=compiled), _find(train, mixer="attention", L=L, compiled=compiled)
            v = r["tokens_per_s"] / a["tokens_per_s"] if r and a else None
            table.add(f"train tokens/s hyena_rtf / attention at L={L}{' (compiled)' if compiled else ''} >= {factor:g}",
                      v, _verdict(v, v is not None and v >= factor))
    for mixer in MIXERS:
        r = _find(train, mixer=mixer, L=4096, compiled=False)
        mfu = r["mfu"] * 100 if r and r.get("mfu") is not None else None
        table.add(f"MFU % of {mixer} at L=4096 (eager; report only)", mfu, "report" if mfu is not None else "not measured")
    rtf = cells.results.get("rtf", [])
    states = cfg["rtf"]["states"]
    lo, hi = _find(rtf, what="layer", N=states[0]), _find(rtf, what="layer", N=states[-1])
    v = hi["ms"] / lo["ms"] if lo and hi else None
    table.add(f"RTF layer time N={states[-1]} / N={states[0]} <= 1.25", v, _verdict(v, v is not None and v <= 1.25))
    dec = cells.results.get("decode", [])
    positions = cfg["decode"]["positions"]
    target_pos = 4096 if 4096 in positions else positions[-1]
    best = "recurrent, CUDA graph" if _find(dec, variant="recurrent, CUDA graph") else "recurrent, static buffers"
    for batch in cfg["decode"]["batches"]:
        a = _find(dec, variant="attention + KV cache", batch=batch, position=target_pos)
        for variant in ("recurrent, model forward", best):
            r = _find(dec, variant=variant, batch=batch, position=target_pos)
            v = a["ms_per_token"] / r["ms_per_token"] if r and a else None
            table.add(f"decode ms per token, attention / {variant}, at {target_pos}, batch {batch} > 1", v,
                      _verdict(v, v is not None and v > 1))
        for variant in ("recurrent, model forward", best):
            first, last = (_find(dec, variant=variant, batch=batch, position=p) for p in (positions[0], positions[-1]))
            v = last["ms_per_token"] / first["ms_per_token"] if first and last else None
            table.add(f"decode {variant}, batch {batch}: ms at {positions[-1]} / at {positions[0]} <= 1.2", v,
                      _verdict(v, v is not None and v <= 1.2))
    if not full:
        table.notes.append("Smoke mode: tiny sizes that only check that every cell runs; no verdicts.")
    failed = sum(len(_status_rows(rows)) for rows in cells.results.values())
    table.notes.append(f"{failed} cells not ok (OOM, error or skipped for the budget): see the status columns and gpu.json.")
    return table


SECTIONS = ("train", "rtf", "decode", "compile")


def run(mode: str, device: torch.device, out: Path, budget_s: Optional[float] = None,
        sizes: Optional[dict] = None, sections: Optional[list[str]] = None) -> Report:
    """Run the ``sections`` (default: ``BENCH_GPU_SECTIONS``, a comma list, else all of ``SECTIONS``)
    within the budget and return the report (``gpu.json`` is written to ``out``)."""
    if mode not in SIZES:
        raise ValueError(f"mode must be one of {sorted(SIZES)}, got {mode!r}")
    if sections is None:
        sections = [s for s in os.environ.get("BENCH_GPU_SECTIONS", "").split(",") if s] or list(SECTIONS)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    if mode == "full" and device.type != "cuda" and sizes is None:
        # One step of a 125M model on 32k tokens takes minutes on a CPU, and a step cannot be
        # interrupted by the budget: refuse the sizes, not the run (``python -m bench`` runs everything).
        report = Report("gpu", TITLE)
        report.parts.append(f"Not run: the full sizes need a CUDA device (got {device}); use --smoke (or --quick) "
                            "to check the benchmark on this machine.")
        return report
    cfg = sizes or SIZES[mode]
    budget_s = budget_s or float(os.environ.get("BENCH_GPU_BUDGET_S") or cfg["budget_s"])
    peak_flops, peak_bw, peak_source = device_peaks(device)
    info = software_info(device)
    out.mkdir(parents=True, exist_ok=True)
    cells = Cells(Budget(budget_s), device, out / "gpu.json",
                  {"mode": mode, "budget_s": budget_s, "peak_flops": peak_flops, "peak_bw": peak_bw, **info})
    amp = torch.bfloat16
    started = time.perf_counter()
    torch.manual_seed(0)
    passes = {
        "train": lambda: eager_pass(cells, cfg["train"], device, amp, peak_flops, peak_bw),
        "rtf": lambda: rtf_pass(cells, cfg["rtf"], device),
        "decode": lambda: decode_pass(cells, cfg["decode"], device, peak_bw),
        "compile": lambda: compile_pass(cells, cfg["train"], device, amp, peak_flops, peak_bw),
    }
    for name in [s for s in SECTIONS if s in sections]:  # always cheap and essential first
        cells.run("sections", lambda fn=passes[name]: fn() or {}, name=name)
        # A run killed from outside still leaves the tables of the sections it finished.
        partial = _assemble(cells, cfg, info, device, peak_flops, peak_bw, peak_source, budget_s, started)
        (out / "gpu.md").write_text(partial.to_markdown(f"- partial: written after section {name!r}"))
    return _assemble(cells, cfg, info, device, peak_flops, peak_bw, peak_source, budget_s, started)


def _assemble(cells: Cells, cfg: dict, info: dict, device: torch.device, peak_flops, peak_bw, peak_source: str,
              budget_s: float, started: float) -> Report:
    report = Report("gpu", TITLE)
    report.parts.append("\n".join([
        f"- torch {info['torch']}, CUDA {info['cuda']}, device {info.get('device_name')}"
        + (f" (sm {info['capability']}, {info['memory_gib']} GiB, cuDNN {info['cudnn']})" if device.type == "cuda" else ""),
        f"- peaks used: {peak_flops / 1e12 if peak_flops else '-'} TFLOP/s bf16, "
        f"{peak_bw / 1e12 if peak_bw else '-'} TB/s ({peak_source})",
        f"- budget {budget_s:.0f} s, used {time.perf_counter() - started:.0f} s; raw numbers in gpu.json",
    ]))
    report.parts += [*train_tables(cells), rtf_table(cells), decode_table(cells)]
    if cells.errors:
        report.parts.append("Errors (first lines of each traceback are in gpu.json):\n\n"
                            + "\n".join(f"- {e.splitlines()[0]}" for e in cells.errors))
    report.parts.append(summary(cells, cfg))
    return report


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m bench.gpu [--smoke] [--out DIR]``: the same as ``python -m bench gpu``."""
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes (checks that it runs)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench/results"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--budget-s", type=float, default=None, help="wall-clock budget (default: the mode's)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=None, help="subset to run (default: all)")
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    device = torch.device(args.device)
    start = time.perf_counter()
    report = run(mode, device, args.out, budget_s=args.budget_s, sections=args.sections)
    command = "python -m bench.gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report.to_markdown(header(device, command) + f"\n- mode: {mode}, wall time {time.perf_counter() - start:.0f} s")
    (args.out / "gpu.md").write_text(text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
