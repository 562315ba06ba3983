"""Benchmark suite: the tiny mode runs end to end, its baselines compute the same functions, and
the CPU peak-memory method is right."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from bench import baselines
from bench.__main__ import main
from bench.rtf import run
from bench.report import Table
from bench.timing import Timing, compare, peak_memory
from hyena_rtf.modeling.fftconv import fft_conv
from hyena_rtf.modeling.hyena import HyenaOperator
from hyena_rtf.modeling.rtf import RTF

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numbers(table: Table, column: str) -> list[float]:
    return [v for v in table.column(column) if v is not None]


def test_rtf_bench_smoke_mode_tables(tmp_path):
    torch.manual_seed(0)
    report = run("smoke", torch.device("cpu"), tmp_path)
    titles = [p.title for p in report.parts if isinstance(p, Table)]
    assert len(titles) == 6, titles

    kernel = report.parts[0]
    assert kernel.column("N") == [4, 16]
    for col in ("RTF ms", "RTF peak MB", "RTF reference ms", "S4D ms", "S4D / RTF"):
        vals = numbers(kernel, col)
        assert len(vals) == 2 and all(math.isfinite(v) and v > 0 for v in vals), (col, vals)

    layer = report.table("2. Layer speed, optimized vs reference (B=1, L=32, D=16, N=4)")
    assert layer.column("case") == [
        "RTF kernel fwd+bwd", "FFT long conv fwd+bwd", "RTF layer fwd+bwd", "RTF layer fwd (no grad)",
        "Hyena operator fwd+bwd",
    ]
    for col in ("reference ms", "optimized ms", "speedup", "ref peak MB", "opt peak MB"):
        assert all(math.isfinite(v) and v > 0 for v in numbers(layer, col)), col
    assert len(numbers(layer, "tokens/s")) == 3

    step = next(p for p in report.parts if isinstance(p, Table) and p.title.startswith("3."))
    assert step.column("position") == [10, 100]
    assert len(set(step.column("RTF state bytes"))) == 1  # independent of the position
    assert step.column("RTF state bytes")[0] == 1 * 16 * 4 * 4  # B*D*N fp32

    prefill = next(p for p in report.parts if isinstance(p, Table) and p.title.startswith("4."))
    assert prefill.column("/ forward")[0] == 1.0 and all(v > 0 for v in prefill.column("ms"))

    md = report.to_markdown()
    assert "| RTF layer fwd+bwd" in md and "nan" not in md.lower()
    assert (tmp_path / "rtf_kernel.png").stat().st_size > 1000


def test_cli_writes_report(tmp_path, capsys):
    assert main(["rtf", "--smoke", "--out", str(tmp_path), "--threads", "1"]) == 0
    text = (tmp_path / "rtf.md").read_text()
    assert text.startswith("# RTF filter and Hyena operator")
    assert "- git:" in text and "- cpu:" in text and "mode: smoke" in text
    assert "RTF layer fwd+bwd" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["no-such-bench", "--smoke", "--out", str(tmp_path)])


def test_reference_paths_compute_the_same_functions():
    torch.manual_seed(0)
    f = RTF(12, 6, 40, num_a=4).double()
    u = torch.randn(2, 33, 12, dtype=torch.float64, requires_grad=True)
    params = list(f.parameters())
    y, y_ref = f(u), baselines.reference_forward(f, u)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=0)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, [u] + params, g), torch.autograd.grad(y_ref, [u] + params, g)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    with torch.no_grad():
        x = torch.randn(2, 40, 12, dtype=torch.float64)
        (y1, s1), (y2, s2) = f.prefill(x), baselines.reference_prefill(f, x)
        torch.testing.assert_close(y1, y2, atol=1e-10, rtol=0)
        torch.testing.assert_close(s1, s2, atol=1e-10, rtol=0)
        op = HyenaOperator(12, 40, filter_kwargs={"state_size": 6}).double()
        torch.testing.assert_close(op(x), baselines.reference_hyena_forward(op, x), atol=1e-10, rtol=0)
        k = torch.randn(12, 40, dtype=torch.float64)
        torch.testing.assert_close(fft_conv(x, k), baselines.reference_fft_conv(x, k), atol=1e-10, rtol=0)


def test_s4d_kernel_matches_the_recurrence():
    """The Vandermonde kernel equals the impulse response of the diagonal recurrence."""
    torch.manual_seed(0)
    m = baselines.S4DKernel(3, 8)
    L = 20
    with torch.no_grad():
        k = m.kernel(L)
        dt = m.log_dt.exp().unsqueeze(-1)
        a = torch.complex(-m.log_neg_a_real.exp(), m.a_imag) * dt  # (D, M)
        bb = torch.view_as_complex(m.b) * dt
        c = torch.view_as_complex(m.c)
        x = bb.clone()  # state after the impulse at t = 0
        for t in range(L):
            assert torch.allclose(k[:, t], 2 * (c * x).sum(-1).real, atol=1e-5)
            x = torch.exp(a) * x
    assert m.vandermonde_bytes(L) == 3 * 4 * L * 8


def test_cpu_peak_memory_is_exact_on_a_known_pattern():
    """Allocates 40 MB and 20 MB, frees the 40 MB, allocates 10 MB: the peak is exactly 60 MB
    (fp32 tensors of 10M, 5M and 2.5M elements), whatever was allocated before."""
    keep = torch.empty(3_000_000)  # allocated before the call: must not count

    def pattern():
        a = torch.empty(10_000_000)
        b = torch.empty(5_000_000)
        del a
        c = torch.empty(2_500_000)
        return b, c

    assert peak_memory(pattern, "cpu") == 60_000_000
    del keep


@pytest.mark.slow  # a fresh interpreter
def test_cpu_peak_memory_agrees_with_the_resident_set():
    """Independent check: with every large allocation served by mmap, the process' resident-set
    high-water mark rises by what torch allocates (plus small change)."""
    script = textwrap.dedent(
        """
        import torch
        from bench.timing import peak_memory
        from hyena_rtf.modeling.fftconv import fft_conv

        def status(key):
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))

        u = torch.randn(2, 512, 256, requires_grad=True)
        k = torch.randn(256, 512, requires_grad=True)
        run = lambda: torch.autograd.grad(fft_conv(u, k), (u, k), torch.ones(2, 512, 256))
        run()
        profiled = peak_memory(run)
        base = status("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
        run()
        print(profiled, status("VmHWM") - base)
        """
    )
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    profiled, rss = map(int, out.stdout.split())
    assert profiled > 4_000_000
    assert abs(rss - profiled) < 0.1 * profiled + 1_000_000, (profiled, rss)


def test_timing_summary_and_interleaving():
    t = Timing.from_samples([3.0, 1.0, 2.0, 4.0, 100.0])
    assert (t.median, t.min, t.max, t.repeats) == (3.0, 1.0, 100.0, 5)
    assert t.q1 == 2.0 and t.q3 == 4.0
    calls = []
    res = compare({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "a", "b", "a", "b"]
    assert set(res) == {"a", "b"} and all(r.repeats == 3 and r.median >= 0 for r in res.values())
    assert peak_memory(lambda: torch.empty(1000)) == 4000


def test_new_benchmarks_are_registered():
    from bench.__main__ import BENCHMARKS, load_benchmark

    assert {"train_speed", "quality", "s4d", "distill", "memory", "convert"} <= set(BENCHMARKS)
    for name in BENCHMARKS:
        module = load_benchmark(name)
        assert module.TITLE and callable(module.run)


def test_train_speed_smoke_mode_tables(tmp_path):
    from bench import train_speed

    report = train_speed.run("smoke", torch.device("cpu"), tmp_path)
    steps = report.parts[0]
    assert steps.column("L") == [32, 32, 32, 64, 64, 64]
    assert steps.column("mixer") == ["hyena_rtf", "hyena", "attention"] * 2
    assert steps.column("status") == ["ok"] * 6
    for L, ms, tps, mem in zip(steps.column("L"), steps.column("step ms"), steps.column("tokens/s"), steps.column("peak MB")):
        assert math.isfinite(ms) and ms > 0 and mem > 0
        assert tps == pytest.approx(L / (ms / 1e3))
    # Identical backbones: the parameter counts differ only by the mixers' own weights.
    params = steps.column("params")
    assert max(params) < 1.2 * min(params)
    ratios = report.parts[1]
    assert ratios.column("L") == [32, 64]
    assert all(math.isfinite(v) and v > 0 for col in ("hyena_rtf / attention", "hyena_rtf / hyena") for v in ratios.column(col))
    assert (tmp_path / "train_speed.png").stat().st_size > 1000


def test_train_speed_records_a_mixer_over_the_time_cap(tmp_path, monkeypatch):
    from bench import train_speed

    monkeypatch.setitem(train_speed.SIZES, "smoke", dict(train_speed.SIZES["smoke"], lengths=(16,), cap_s=0.0))
    table = train_speed.run("smoke", torch.device("cpu"), tmp_path).parts[0]
    assert len(table.rows) == 3
    assert all(s.startswith("over time cap") for s in table.column("status"))
    assert table.column("tokens/s") == [None] * 3
    assert "over time cap" in table.to_markdown()


def _fake_wikitext(root):
    """Two small text files in the WikiText layout (random sentences over a fixed word list)."""
    import random

    rng = random.Random(0)
    words = ("the of and a to in is was for on as with by he at from his an were are which this also be "
             "has or had its first one their after new who they two her she been other when there all").split()
    folder = root / "data" / "wikitext-2-raw"
    folder.mkdir(parents=True)
    for name, n in (("wiki.valid.raw", 300), ("wiki.test.raw", 100)):
        lines = [f" = Title {i} = \n " + " ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) + " . \n"
                 for i in range(n)]
        (folder / name).write_text("".join(lines))
    return root


@pytest.mark.slow
def test_quality_runs_train_and_evaluate_and_resume(tmp_path, monkeypatch):
    """An ablation through ``python -m bench quality`` and the real CLIs (smoke sizes, key=value
    options): the grid cell of each mixer, then the frozen variant beside the preset's (the grid
    run again) and the implicit reference; numbers read back from each run's own metrics and
    evaluate.py's JSON; a second call trains nothing."""
    from bench import quality
    from bench.runs import WIKITEXT_SIZES, Runner

    monkeypatch.setenv("HYENA_RTF_SHARED", str(_fake_wikitext(tmp_path / "shared")))
    out = tmp_path / "out"
    assert main(["quality", "--smoke", "--out", str(out), "studies=ablation", "mixers=hyena_rtf,hyena", "lrs=3e-3",
                 "wds=0.1", "states=", "variants=preset default,filters frozen (filter lr 0)", "jobs=2"]) == 0
    table = json.loads((out / "quality.json").read_text())["tables"][0]
    columns = {h: [r[i] for r in table["rows"]] for i, h in enumerate(table["headers"])}
    assert columns["variant"] == ["preset default", "filters frozen (filter lr 0)", "implicit hyena at its best cell (reference)"]
    results = [json.loads(line)["result"] for line in (out / "quality_runs.jsonl").read_text().splitlines()]
    assert len(results) == 3  # the preset default is the grid cell: not trained twice
    for r in results:
        assert Path(r["run_dir"], "checkpoints", "last.ckpt").is_file()
        evaluated = json.loads(Path(r["run_dir"], "eval_test.json").read_text())
        assert r["test_ppl"] == evaluated["token_ppl"] and evaluated["context"] == 32
        assert [s for s, _ in r["val_curve"]] == [2, 4]
        assert math.exp(r["val_loss"]) in [pytest.approx(v) for v in columns["val ppl"]]
    # Frozen filters do not move; trained ones do.
    shifts = columns["kernel shift"]
    assert shifts[1] == 0.0 and shifts[0] > 0 and shifts[2] > 0
    assert columns["max pole radius"][2] is None  # the implicit filter has no poles
    protocol = quality.Protocol(lrs=(3e-3,), wds=(0.1,), states=(), mixers=("hyena_rtf", "hyena"),
                                variants=("preset default", "filters frozen (filter lr 0)"))
    again, _ = quality.run_studies(Runner(out, WIKITEXT_SIZES["smoke"]), ("ablation",), protocol)
    assert len((out / "quality_runs.jsonl").read_text().splitlines()) == 3
    assert again.parts[0].rows == table["rows"]


def test_options_of_one_benchmark():
    from bench.__main__ import parse_options

    assert parse_options(["lrs=1.5e-3,3e-3", "states=", "seeds=0", "mixers=hyena_rtf,hyena", "variants=h0 = 1"]) == dict(
        lrs=[1.5e-3, 3e-3], states=[], seeds=0, mixers=["hyena_rtf", "hyena"], variants="h0 = 1")
    assert parse_options(["variants=h0 = 1,implicit hyena, filters frozen (reference)"])["variants"] == [
        "h0 = 1", "implicit hyena, filters frozen (reference)"]
    with pytest.raises(SystemExit):
        main(["rtf", "decode", "--smoke", "repeats=1"])  # options of one benchmark only


def test_quality_variants_scale_with_the_recipe_lr():
    from bench import quality
    from bench.runs import lr_wd

    recipe = lr_wd(2e-3, 0.1)
    assert quality._variant("pole lr x10", recipe)[-1] == "optim.filter_pole_lr=0.02"
    assert quality._variant("numerator lr x10 (poles at lr)", recipe)[-2:] == ("optim.filter_lr=0.02", "optim.filter_pole_lr=0.002")
    with pytest.raises(ValueError, match="studies"):
        quality.run_studies(None, ("tables",))


def test_quality_names_the_missing_data(tmp_path, monkeypatch):
    from bench.runs import find_shared

    monkeypatch.setenv("HYENA_RTF_SHARED", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="HYENA_RTF_SHARED"):
        find_shared()


def test_s4d_layer_bench_smoke_mode_tables(tmp_path):
    from bench import s4d
    from bench.__main__ import load_benchmark

    assert load_benchmark("s4d") is s4d
    report = s4d.run("smoke", torch.device("cpu"), tmp_path)
    grid, summary = report.parts
    assert grid.column("L") == [32, 32, 64, 64] and grid.column("N") == [4, 16, 4, 16]
    for col in ("RTF ms", "S4D ms", "S4D / RTF", "RTF peak MB", "S4D peak MB"):
        assert all(math.isfinite(v) and v > 0 for v in grid.column(col)), col
    for r, s, ratio in zip(grid.column("RTF ms"), grid.column("S4D ms"), grid.column("S4D / RTF")):
        assert ratio == pytest.approx(s / r)
    # The smoke budget (10 MB) fits the materialised S4D at these sizes.
    assert all(v is not None and v > 0 for v in grid.column("S4D materialised ms"))
    assert summary.column("L") == [32, 64, "mean"]
    assert summary.rows[-1][-1] == pytest.approx(sum(grid.column("S4D / RTF")) / 4)
    assert "Paper: on average 1.35x" in report.to_markdown()


def test_s4d_bench_skips_what_cannot_run(tmp_path, monkeypatch):
    """The materialised S4D over its memory budget, and RTF where N >= L."""
    from bench import s4d

    budget = 4 * 4 * (16 // 2) * 64 * 8 / 1e9 - 1e-12  # just under what N=16 needs at D=4, L=64
    sizes = dict(s4d.SIZES["smoke"], lengths=(64,), states=(4, 16, 64), materialised_max_gb=budget)
    monkeypatch.setitem(s4d.SIZES, "smoke", sizes)
    grid, summary = s4d.run("smoke", torch.device("cpu"), tmp_path).parts
    mat = grid.column("S4D materialised ms")
    assert mat[0] is not None and mat[1] is None and mat[2] is None
    assert any("was not run at (L, N) in [(64, 16), (64, 64)]" in n for n in grid.notes)
    assert grid.column("RTF ms")[2] is None and grid.column("S4D / RTF")[2] is None
    assert grid.column("S4D ms")[2] > 0  # S4D runs at any N
    assert any("No RTF at (L, N) in [(64, 64)]" in n for n in grid.notes)
    assert summary.rows[0][-1] == pytest.approx(sum(grid.column("S4D / RTF")[:2]) / 2)

@pytest.mark.slow
def test_distill_smoke_mode_tables(tmp_path, monkeypatch):
    from bench import distill

    monkeypatch.setenv("HYENA_RTF_SHARED", str(_fake_wikitext(tmp_path / "shared")))
    report = distill.run("smoke", torch.device("cpu"), tmp_path)
    vocab = 300  # data.vocab_size of the smoke overrides
    ppl = next(p for p in report.parts if isinstance(p, Table) and p.title.startswith("1."))
    assert ppl.column("state size") == [None, *distill.MODES["smoke"]["states"], distill.L1_STATE]
    assert all(1 < float(p) < 2 * vocab for p in ppl.column("token ppl"))
    assert all(float(r) < 1 for r in ppl.column("max pole radius")[1:])
    assert all(0 <= e < 1 for e in ppl.column("mean rel kernel err")[1:])
    assert all(0 <= e < 1e-3 for e in ppl.column("recurrent vs parallel")[1:])
    dec = next(p for p in report.parts if isinstance(p, Table) and p.title.startswith("2."))
    settings = distill.MODES["smoke"]
    assert len(dec.rows) == 2 * len(settings["batches"]) * len(settings["positions"])
    assert all(v > 0 for v in dec.column("ms / token"))
    saved = json.loads((tmp_path / "distill.json").read_text())
    # The teacher's number is evaluate.py's, read back from its JSON beside the run.
    teacher_run = Path(next(iter(json.loads(l)["result"] for l in (tmp_path / "distill_runs" / "quality_runs.jsonl").open()))["run_dir"])
    assert saved["teacher_ppl"] == json.loads((teacher_run / "eval_test.json").read_text())["token_ppl"]
    assert float(ppl.column("token ppl")[0]) == pytest.approx(saved["teacher_ppl"], rel=1e-4)


def test_memory_smoke_mode_tables(tmp_path):
    from bench import memory

    report = memory.run("smoke", torch.device("cpu"), tmp_path)
    cfg = memory.SIZES["smoke"]
    mixers = list(memory.MIXERS)
    copying, timing, recall = (p for p in report.parts if isinstance(p, Table))
    n_rows = sum(len(cfg["states"]) if m in memory.STATE_MIXERS else 1 for m in mixers)
    assert len(copying.rows) == len(timing.rows) == n_rows
    assert copying.column("state size")[: len(cfg["states"])] == list(cfg["states"])
    for lo, mean, hi, exact in zip(copying.column("acc min %"), copying.column("acc %"), copying.column("acc max %"),
                                   copying.column("exact %")):
        assert 0 <= lo <= mean <= hi <= 100 and 0 <= exact <= 100
    assert all(ms > 0 and math.isfinite(ms) for ms in timing.column("step ms"))
    assert timing.column("/ smallest N")[0] == 1.0
    assert recall.column("mixer") == mixers
    assert all(0 <= a <= 100 for length in cfg["lengths"] for a in recall.column(f"L={length}"))
    assert (tmp_path / "memory.png").stat().st_size > 1000

    # Every run was recorded; a second call reuses them instead of training again.
    lines = (tmp_path / "memory_runs.jsonl").read_text().splitlines()
    assert len(lines) == n_rows * len(cfg["seeds"]) + len(mixers) * len(cfg["lengths"]) * len(cfg["recall_seeds"])
    again = memory.run("smoke", torch.device("cpu"), tmp_path)
    assert again.parts[1].rows == copying.rows
    assert len((tmp_path / "memory_runs.jsonl").read_text().splitlines()) == len(lines)


def test_memory_runs_are_the_experiments_of_section_9():
    """The composed configs of the full grid carry the hyperparameters the stored tables were
    trained with (BENCHMARKS.md section 9), so those tables stay valid."""
    from bench import memory

    cpu = torch.device("cpu")
    c = memory.config("copying", "hyena_s4d", 64, 1, "full", cpu)
    r = memory.config("recall", "attention", 128, 0, "full", cpu)
    for cfg in (c, r):
        assert (cfg.model.hidden_size, cfg.model.num_hidden_layers, cfg.model.intermediate_size, cfg.model.output_rank,
                cfg.model.max_position_embeddings, cfg.model.hyena_order) == (64, 4, 256, 32, 512, 2)
        assert OmegaConf.to_container(cfg.optim, resolve=True) == dict(
            lr=3e-3, filter_lr=3e-3, filter_pole_lr=None, weight_decay=0.0, filter_weight_decay=0.0,
            optimizer={"_target_": "torch.optim.AdamW", "betas": [0.9, 0.999]},
            decay_norm_and_bias=True, warmup_steps=0.05, min_lr_rate=0.1)
        assert (cfg.trainer.gradient_clip_val, cfg.trainer.limit_val_batches, cfg.data.batch_size, cfg.data.train_size,
                cfg.data.eval_size, cfg.data.seed, cfg.test) == (1.0, 4, 16, 8000, 512, cfg.seed, True)
    assert (c.model.mixer, c.model.state_size, c.seed, c.data.mem_len, c.data.delay, c.data.vocab_size) == ("hyena_s4d", 64, 1, 64, 0, 16)
    assert (c.trainer.max_steps, c.trainer.val_check_interval) == (300, 100)
    assert (r.data.seq_len, r.data.num_pairs, r.data.num_queries, r.data.vocab_size) == (128, 4, 16, 17)
    assert (r.trainer.max_steps, r.trainer.val_check_interval) == (600, 200)
