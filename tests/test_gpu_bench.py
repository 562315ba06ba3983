"""The unattended GPU benchmark: runs end to end on CPU (smoke) without the training stack's
config/data imports, isolates failing cells, keeps its budget; the static-buffer recurrent decoder
matches a parallel forward; ``compile=true`` trains to the same losses as eager."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from bench.gpu_cells import Budget, Cells
from hyena_rtf.modeling.graph_decode import RecurrentDecoder, reference_decode
from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
from hyena_rtf.modeling.presets import preset_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKED = ("hydra", "omegaconf", "datasets", "wandb")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.slow  # a fresh interpreter
def test_smoke_run_without_hydra_omegaconf_datasets_wandb(tmp_path):
    # None in sys.modules is what "not installed" looks like to both import and find_spec.
    script = textwrap.dedent(f"""
        import sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None
        from bench.__main__ import main
        code = main(["gpu", "--smoke", "--threads", "1", "--device", "cpu"])
        leaked = [m for m in sys.modules if m.split(".")[0] in {BLOCKED!r} and sys.modules[m] is not None]
        assert not leaked, leaked
        sys.exit(code)
    """)
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "BENCH_PEAK_TFLOPS": "1", "BENCH_PEAK_TBS": "0.05"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # $OUT receives the report and the raw numbers; the summary is printed last.
    md = (tmp_path / "gpu.md").read_text()
    assert proc.stdout.rsplit("### ", 1)[-1].startswith("Summary: targets")
    assert md.rstrip().endswith("see the status columns and gpu.json.")
    assert "torch " + torch.__version__ in md
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["meta"]["torch"] == torch.__version__ and data["meta"]["device"] == "cpu"
    assert data["errors"] == []
    res = data["results"]

    train = res["train"]
    eager = [r for r in train if not r["compiled"]]
    assert {(r["mixer"], r["L"]) for r in eager} == {(m, L) for m in ("hyena_rtf", "hyena", "attention") for L in (32, 64)}
    for r in eager:
        assert r["status"] == "ok", r
        assert r["batch"] * r["L"] == 128  # tokens per step fixed across L
        assert r["tokens_per_s"] == pytest.approx(128 / (r["step_ms"] / 1e3))
        assert 0 < r["mfu"] < 1 and r["step_peak_gb"] > r["state_gb"] > 0
    # Compilation cannot fit an infinite estimate: skipped and said so, never silently dropped.
    compiled = [r for r in train if r["compiled"]]
    assert len(compiled) == 3 and all(r["status"].startswith("skipped: budget") for r in compiled)

    rtf = res["rtf"]
    assert sorted((r["what"], r["N"]) for r in rtf) == [("kernel", 4), ("kernel", 16), ("layer", 4), ("layer", 16)]
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in rtf)

    dec = res["decode"]
    assert len(dec) == 3 * 2 * 2  # no CUDA graph variant on CPU; 2 batches x 2 positions
    for r in dec:
        assert r["status"] == "ok" and math.isfinite(r["ms_per_token"]) and r["floor_ms"] > 0, r
    states = {(r["variant"], r["batch"], r["position"]): r["state_mib"] for r in dec}
    # tiny preset: per layer 3*64*2 short-conv values + 64*8 RTF state, 2 layers, fp32; KV: 2*2*P*64 fp32
    assert states[("recurrent, static buffers", 2, 40)] == 2 * 2 * (3 * 64 * 2 + 64 * 8) * 4 / 2**20
    assert states[("attention + KV cache", 1, 40)] == 2 * 2 * 40 * 64 * 4 / 2**20


def test_full_sizes_refused_on_cpu(tmp_path):
    from bench.gpu import run

    report = run("full", torch.device("cpu"), tmp_path)
    assert "need a CUDA device" in report.to_markdown() and not (tmp_path / "gpu.json").exists()


def test_cells_isolate_failures_and_respect_the_budget(tmp_path):
    now = [0.0]
    cells = Cells(Budget(100.0, clock=lambda: now[0]), torch.device("cpu"), tmp_path / "r.json", {"mode": "test"})

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    def broken():
        raise ValueError("bad shape\nsecond line")

    def slow():
        now[0] += 70.0
        return {"x": 1}

    assert cells.run("s", oom, i=0)["status"] == "OOM"
    assert cells.run("s", broken, i=1)["status"] == "error: ValueError: bad shape"
    assert cells.run("s", slow, estimate_s=50, i=2) | {"cell_s": 0} == {"i": 2, "x": 1, "status": "ok", "cell_s": 0}
    skipped = cells.run("s", slow, estimate_s=50, i=3)  # 30 s left
    assert skipped["status"] == "skipped: budget (50 s estimated, 30 s left)" and now[0] == 70.0
    saved = json.loads((tmp_path / "r.json").read_text())
    assert [r["status"][:5] for r in saved["results"]["s"]] == ["OOM", "error", "ok", "skipp"]
    assert len(saved["errors"]) == 1 and "ValueError" in saved["errors"][0]
    with pytest.raises(ValueError):
        Budget(0)


def test_train_pass_times_mixers_alone_when_the_interleaved_loop_fails(tmp_path, monkeypatch):
    import bench.gpu_train as gpu_train
    from bench.gpu import SIZES, train_tables

    real = gpu_train.compare

    def interleaved_oom(fns, **kw):
        if len(fns) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated for the interleaved loop)")
        return real(fns, **kw)

    monkeypatch.setattr(gpu_train, "compare", interleaved_oom)
    cfg = {**SIZES["smoke"]["train"], "lengths": (32,)}
    cells = Cells(Budget(300.0), torch.device("cpu"), None, {"mode": "smoke"})
    gpu_train.eager_pass(cells, cfg, torch.device("cpu"), torch.bfloat16, None, None)
    assert [r["status"] for r in cells.results["train_timing"]] == ["OOM", "ok", "ok", "ok"]
    rows = cells.results["train"]
    assert [r["mixer"] for r in rows] == ["hyena_rtf", "hyena", "attention"]
    assert all(r["status"] == "ok" and r["timed_alone"] and r["step_ms"] > 0 for r in rows)
    assert "Timed alone" in train_tables(cells)[0].to_markdown()


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return HyenaRTFForCausalLM(preset_config("hyena_rtf-tiny", vocab_size=300, max_position_embeddings=64, **kw)).eval()


def test_recurrent_decoder_matches_parallel_forward():
    model = _tiny()
    B, P, T = 3, 11, 7
    prompt = torch.randint(0, 300, (B, P))
    tokens = torch.randint(0, 300, (B, T))
    ref = reference_decode(model, prompt, tokens)  # (B, T, V) from one FFT forward of P+T tokens

    # Prefill one row through the model's cache; the decoder broadcasts it to every row.
    cache = model.new_cache()
    with torch.inference_mode():
        model(input_ids=prompt[:1], past_key_values=cache, use_cache=True)
    dec = RecurrentDecoder(model, B)
    dec.load(cache.states, P)
    got = torch.stack([dec.step(tokens[:, j]).clone() for j in range(T)], 1)
    torch.testing.assert_close(got[0], ref[0], atol=2e-5, rtol=1e-4)
    # Rows 1.. had row 0's prompt: compare with a parallel forward of that prompt + their tokens.
    ref_rows = reference_decode(model, prompt[:1].expand(B, P), tokens)
    torch.testing.assert_close(got, ref_rows, atol=2e-5, rtol=1e-4)
    assert dec.position == P + T

    # From an empty context: token 0 at position 0, compared with the parallel forward from scratch.
    dec.reset()
    seq = torch.cat([prompt, tokens], 1)
    got0 = torch.stack([dec.step(seq[:, j]).clone() for j in range(P + T)], 1)
    with torch.inference_mode():
        full = model(input_ids=seq).logits
    torch.testing.assert_close(got0, full, atol=2e-5, rtol=1e-4)
    exported = dec.export()
    assert exported[0].long[0].shape == (B, 64, 8) and exported[0].long[0] is not dec.states[0].long[0]


def test_recurrent_decoder_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="CUDA"):
        RecurrentDecoder(_tiny(), 1, use_graph=True)
    with pytest.raises(ValueError, match="eval mode"):
        RecurrentDecoder(_tiny().train(), 1)
    attn = HyenaRTFForCausalLM(preset_config("attention-tiny", vocab_size=300)).eval()
    with pytest.raises(ValueError, match="hyena_rtf"):
        RecurrentDecoder(attn, 1)


@pytest.mark.gpu
@cuda
def test_cuda_graph_decoder_matches_eager_and_parallel(monkeypatch):
    # TF32 convolutions in the parallel reference would blur the comparison at 1e-3.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = _tiny().cuda()
    B, P, T = 4, 9, 12
    prompt = torch.randint(0, 300, (B, P), device="cuda")
    tokens = torch.randint(0, 300, (B, T), device="cuda")
    cache = model.new_cache()
    with torch.inference_mode():
        model(input_ids=prompt, past_key_values=cache, use_cache=True)
    outs = {}
    for graph in (False, True):
        dec = RecurrentDecoder(model, B, use_graph=graph)
        dec.load(cache.states, P)
        outs[graph] = torch.stack([dec.step(tokens[:, j]).clone() for j in range(T)], 1)
    torch.testing.assert_close(outs[True], outs[False], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[True], reference_decode(model, prompt, tokens), atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
@cuda
def test_gpu_bench_smoke_on_cuda(tmp_path):
    from bench.gpu import run

    report = run("smoke", torch.device("cuda"), tmp_path, budget_s=300)
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["errors"] == []
    variants = {r["variant"] for r in data["results"]["decode"] if r["status"] == "ok"}
    assert "recurrent, CUDA graph" in variants
    assert "### Summary: targets" in report.to_markdown()


@pytest.mark.slow
def test_bench_compile_pass_on_cpu_keeps_budget(tmp_path):
    """One compiled cell runs and is timed beside eager; the rest is skipped once the observed
    compile time shows it would not fit."""
    from bench.gpu_train import compile_pass

    cfg = dict(size="tiny", tokens=64, repeats=2, warmup=1, build_s=1.0, compile_s=1.0, compile_lengths=(32,),
               overrides=dict(vocab_size=256))
    # A stopped clock: 3 s are always left, enough for the first estimate (1 s + 1 s to build), never
    # for 1.25x a real compile time; so exactly one mixer compiles, on any machine.
    cells = Cells(Budget(3.0, clock=lambda: 0.0), torch.device("cpu"), tmp_path / "gpu.json", {})
    compile_pass(cells, cfg, torch.device("cpu"), torch.bfloat16, None, None)
    comp = {r["mixer"]: r for r in cells.results["compile"]}
    assert comp["hyena_rtf"]["status"] == "ok" and comp["hyena_rtf"]["compile_s"] > 0
    for mixer in ("hyena", "attention"):
        assert comp[mixer]["status"].startswith("skipped: budget"), comp[mixer]
    rows = {r["mixer"]: r for r in cells.results["train"]}
    assert set(rows) == {"hyena_rtf", "hyena", "attention"}
    assert rows["hyena_rtf"]["status"] == "ok" and rows["hyena_rtf"]["speedup_vs_eager"] > 0
    assert rows["hyena_rtf"]["step_ms"] > 0 and rows["hyena_rtf"]["eager_ms_same_loop"] > 0
    assert rows["hyena"]["status"].startswith("skipped: budget")


@pytest.mark.slow
def test_compile_true_trains_to_the_eager_losses(tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader

    from hyena_rtf.training.lit_module import HyenaLMModule

    torch.manual_seed(0)
    ids = torch.randint(0, 128, (2, 33))
    batches = [{"input_ids": ids[:, :-1], "targets": ids[:, 1:]}] * 4  # one batch again: the loss must fall
    model_cfg = dict(mixer="hyena_rtf", vocab_size=128, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                     max_position_embeddings=32, state_size=4, output_rank=16)

    class Losses(L.Callback):
        def __init__(self):
            self.values = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.values.append(float(outputs["loss"]))

    losses = {}
    for compile in (False, True):
        torch.manual_seed(1)
        module = HyenaLMModule(model=model_cfg, lr=3e-3, filter_lr=3e-3, warmup_steps=0, compile=compile)
        cb = Losses()
        trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
                            default_root_dir=str(tmp_path))
        trainer.fit(module, DataLoader(batches, batch_size=None))
        assert (module._compiled is not None) == compile
        losses[compile] = cb.values
    assert len(losses[True]) == 4
    assert losses[True][-1] < losses[True][0] - 0.05, losses  # it trains
    assert max(abs(a - b) for a, b in zip(losses[True], losses[False])) < 1e-4, losses
