"""The unattended GPU suite (``python -m bench gpu``): runs end to end on CPU (smoke) without the
training stack's config/data imports, isolates failing benchmarks, keeps its budget; the
static-buffer recurrent decoder matches a parallel forward; ``compile=true`` trains to the same
losses as eager."""

import json
import math
import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch

from bench import __main__ as cli
from bench import train_speed
from bench.report import Report, Table
from hyena_rtf.modeling.graph_decode import RecurrentDecoder, reference_decode
from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
from hyena_rtf.modeling.presets import preset_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKED = ("hydra", "omegaconf", "datasets", "wandb")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rows(path) -> list[dict]:
    """The first table of a benchmark's JSON as dicts."""
    table = json.loads(path.read_text())["tables"][0]
    return [dict(zip(table["headers"], r)) for r in table["rows"]]


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
    for name in cli.GPU_SUITE:  # every benchmark of the suite left its report and raw numbers in $OUT
        assert "mode: smoke" in (tmp_path / f"{name}.md").read_text() and (tmp_path / f"{name}.json").is_file()

    train = rows(tmp_path / "train_speed.json")
    assert {(r["mixer"], r["L"]) for r in train} == {(m, L) for m in ("hyena_rtf", "hyena", "attention") for L in (32, 64)}
    for r in train:
        assert r["status"] == "ok", r
        assert r["tokens/s"] == pytest.approx(r["L"] / (r["step ms"] / 1e3))
        # The peaks given by hand make MFU and the floors appear (they are left out where unknown).
        assert 0 < r["MFU %"] < 100 and r["floor ms (FLOPs)"] > 0 and r["floor ms (bytes)"] > 0

    dec = rows(tmp_path / "decode.json")
    assert len(dec) == 3 * 2 * 2  # no static-buffer or CUDA graph variants on CPU; 2 batches x 2 positions
    assert all(math.isfinite(r["ms / token"]) and r["ms / token"] > 0 for r in dec)
    states = {(r["method"], r["batch"], r["position"]): r["state MiB"] for r in dec}
    # tiny preset: per layer 3*64*2 short-conv values + 64*8 RTF state, 2 layers, fp32; KV: 2*2*P*64 fp32
    assert states[("recurrent (Hyena-RTF)", 2, 200)] == 2 * 2 * (3 * 64 * 2 + 64 * 8) * 4 / 2**20
    assert states[("attention + KV cache", 1, 200)] == 2 * 2 * 200 * 64 * 4 / 2**20


def test_gpu_sizes_refused_on_cpu(tmp_path, capsys):
    assert cli.main(["gpu", "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    assert "need a CUDA device" in capsys.readouterr().out and not (tmp_path / "out").exists()


def test_suite_isolates_failures_and_respects_the_budget(tmp_path, monkeypatch):
    ran = []

    def fake(name, error=None):
        def run(mode, device, out):
            ran.append(name)
            if error is not None:
                raise error
            report = Report(name, name)
            report.parts.append(Table("t", ["x"], [[1]]))
            return report
        return types.SimpleNamespace(TITLE=name, run=run)

    modules = {"train_speed": fake("train_speed", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")),
               "rtf": fake("rtf"), "s4d": fake("s4d"), "decode": fake("decode")}
    monkeypatch.setattr(cli, "load_benchmark", modules.__getitem__)
    assert cli.main(["gpu", "--smoke", "--out", str(tmp_path)]) == 1  # one failed, the others ran
    assert ran == list(cli.GPU_SUITE)
    assert "OutOfMemoryError: CUDA out of memory" in (tmp_path / "train_speed.md").read_text()
    assert json.loads((tmp_path / "rtf.json").read_text())["tables"][0]["rows"] == [[1]]
    ran.clear()
    assert cli.main(["gpu", "--smoke", "--out", str(tmp_path), "--budget-s", "-1"]) == 0
    assert ran == [] and "skipped: the budget of -1 s was spent" in (tmp_path / "decode.md").read_text()


def test_train_speed_records_a_mixer_out_of_memory(tmp_path, monkeypatch):
    real = train_speed.first_call
    calls = []

    def oom_for_attention(step, device):
        calls.append(step)
        if len(calls) % 3 == 0:  # the third mixer of each L: attention
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(step, device)

    monkeypatch.setattr(train_speed, "first_call", oom_for_attention)
    monkeypatch.setitem(train_speed.SIZES, "smoke", dict(train_speed.SIZES["smoke"], lengths=(32,)))
    table = train_speed.run("smoke", torch.device("cpu"), tmp_path).parts[0]
    assert table.column("mixer") == ["hyena_rtf", "hyena", "attention"]
    assert table.column("status") == ["ok", "ok", "out of memory"]
    assert table.column("step ms")[2] is None and all(v > 0 for v in table.column("step ms")[:2])


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
def test_gpu_suite_smoke_on_cuda(tmp_path):
    assert cli.main(["gpu", "--smoke", "--device", "cuda", "--out", str(tmp_path)]) == 0
    methods = {r["method"] for r in rows(tmp_path / "decode.json")}
    assert {"recurrent, static buffers", "recurrent, CUDA graph"} <= methods


@pytest.mark.slow
def test_train_speed_times_compiled_models_beside_eager(tmp_path, monkeypatch):
    """torch.compile on CPU (gcc): the compiled variant of each mixer is timed in the same loop."""
    sizes = dict(train_speed.SIZES["smoke"], lengths=(32,), compile_lengths=(32,), overrides=dict(vocab_size=256))
    monkeypatch.setitem(train_speed.SIZES, "smoke", sizes)
    table = train_speed.run("smoke", torch.device("cpu"), tmp_path).parts[0]
    mixers = ["hyena_rtf", "hyena", "attention"]
    assert table.column("mixer") == mixers + [f"{m} (compiled)" for m in mixers]
    assert all(s.startswith("ok") for s in table.column("status")) and all(v > 0 for v in table.column("step ms"))


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
