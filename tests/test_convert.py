"""convert.py against the reference code bases: logits, tokenizer, greedy decoding, bad sources.

The fixtures under tests/fixtures were made once by running safari's ``SimpleLMHeadModel``, the
RTF repository's copy of it and HyenaDNA's ``standalone_hyenadna.py`` on random weights with noise
on every parameter (tests/fixtures/README.md); they hold the source-format files and the
reference code's logits. Nothing here runs or contains that code.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT, argmax_loop
from hyena_rtf.checkpoints.loading import load_for_inference
from hyena_rtf.checkpoints.conversion import convert_checkpoint
from hyena_rtf.errors import UserError, run_cli

FIXTURES = ROOT / "tests" / "fixtures"
# name -> (src, config) relative to FIXTURES; the reference logits are <name>_reference.pt
SOURCES = {
    "hyenadna": ("hyenadna", None),  # HyenaDNA directory: config.json + Lightning weights.ckpt
    "safari_run": ("safari_run", None),  # safari run: .hydra/config.yaml + checkpoints/last.ckpt
    "eval_yaml": ("hyena_small_eval/hyena_small.pt", "hyena_small_eval/hyena_small.yaml"),  # eval YAML + state dict
    "rtf": ("rtf_state_dict/model.pt", None),  # RTF repository: plain state dict, config.yaml beside it
}


def reference(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}_reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    """name -> (output directory, model, tokenizer), each converted once for the module."""
    out = {}
    for name, (src, config) in SOURCES.items():
        target = tmp_path_factory.mktemp("converted") / name
        convert_checkpoint(FIXTURES / src, target, config=None if config is None else FIXTURES / config)
        model, tok = load_for_inference(target)
        out[name] = (target, model, tok)
    return out


@torch.no_grad()
def max_error(model, ids: torch.Tensor, logits: torch.Tensor) -> float:
    return float((model(input_ids=ids).logits - logits).abs().max())


@pytest.mark.parametrize("name", list(SOURCES))
def test_converted_logits_match_the_reference_code(name, converted):
    _, model, _ = converted[name]
    ref = reference(name)
    assert model.config.max_position_embeddings >= ref["input_ids"].shape[1]
    assert ref["logits"].abs().max() > 5  # logits of a useful scale: an error of 1e-4 is a real match
    assert max_error(model, ref["input_ids"], ref["logits"]) <= 1e-4
    if "input_ids_b" in ref:
        assert max_error(model, ref["input_ids_b"], ref["logits_b"]) <= 1e-4


@torch.no_grad()
def test_the_references_can_fail(converted):
    """Each conversion rule matters at the fixtures' noise level: undo one and the logits are far off."""
    _, hd, _ = converted["hyenadna"]
    ref = reference("hyenadna")
    wrong = copy.deepcopy(hd)
    for layer in wrong.model.layers:  # the window shift of standalone_hyenadna (0.05) left at 0
        layer.mixer.filters[0].shift = 0.0
    assert max_error(wrong, ref["input_ids"], ref["logits"]) > 1e-2
    wrong = copy.deepcopy(hd)
    for layer in wrong.model.layers:  # this filter's own channel order of the decay rates
        layer.mixer.filters[0].deltas.copy_(layer.mixer.filters[0].deltas.flip(0))
    assert max_error(wrong, ref["input_ids"], ref["logits"]) > 1e-2
    wrong = copy.deepcopy(hd)
    for layer in wrong.model.layers:  # a pure skip: the long convolution's taps after 0 removed
        layer.mixer.filters[0].mlp[-1].weight.zero_()
    assert max_error(wrong, ref["input_ids"], ref["logits"]) > 1.0
    _, rtf, _ = converted["rtf"]
    ref = reference("rtf")
    wrong = copy.deepcopy(rtf)
    for layer in wrong.model.layers:  # the reference operator's second feed-through left out
        layer.mixer.filters[0].h0.mul_(0.5)
        layer.mixer.filters[0]._rec_cache = {}
    assert max_error(wrong, ref["input_ids"], ref["logits"]) > 1e-2


def test_converted_configs_and_tokenizers(converted):
    _, hd, tok = converted["hyenadna"]
    ref = reference("hyenadna")
    assert tok(ref["text"]).input_ids == ref["input_ids"][0].tolist()  # ids of HyenaDNA's CharacterTokenizer
    assert "N" in ref["text"] and "n" in ref["text"]  # a known and an unknown ([UNK]) non-ACGT character
    assert tok.decode(tok("ACGTN").input_ids) == "ACGTN" and tok.eos_token == "[SEP]"
    assert hd.config.mixer == "hyena" and hd.config.implicit_decay_order == "slow_first"
    assert hd.config.implicit_shift == 0.05 and hd.config.implicit_w == 10.0 and hd.config.implicit_emb_dim == 5
    small = converted["eval_yaml"][1].config
    assert small.implicit_modulate is False and small.implicit_w == 14.0 and small.implicit_shift == 0.0
    run = converted["safari_run"][1].config
    assert run.intermediate_size == 64  # ${eval:4 * ${.d_model}} resolved as arithmetic
    assert run.max_position_embeddings == 64  # ${dataset.max_length}
    rtf = converted["rtf"][1].config
    assert rtf.mixer == "hyena_rtf" and rtf.state_size == 8 and rtf.output_rank == 384
    assert rtf.rtf_constraint == "l1_montel" and rtf.output_norm_eps == 1e-6
    for name, (out, model, _) in converted.items():
        report = json.loads((out / "conversion.json").read_text())
        assert report["mixer"] == model.config.mixer and report["parameters"] > 0
        assert model.config.tie_word_embeddings


@pytest.mark.parametrize("name", list(SOURCES))
def test_greedy_decoding_equals_an_argmax_loop(name, converted):
    """generate() (recompute cache for implicit filters, recurrent state for RTF) against full forwards."""
    model = copy.deepcopy(converted[name][1])
    # No end-of-sequence token: min_new_tokens would otherwise forbid it where the loop may pick it.
    model.generation_config.eos_token_id = model.config.eos_token_id = None
    ids = reference(name)["input_ids"][:, :24]
    n = 16
    out = model.generate(ids, max_new_tokens=n, do_sample=False)
    assert torch.equal(out, argmax_loop(model, ids, n))
    new = out[:, ids.shape[1]:]
    assert len(set(new.flatten().tolist())) >= 3  # a reference that a wrong decoder could miss


def kl_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> float:
    """Mean KL(teacher || student) of the next-token distributions."""
    p, q = teacher_logits.log_softmax(-1), student_logits.log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@torch.no_grad()
def test_a_distilled_converted_model_stays_close_to_its_teacher(converted, tmp_path):
    """distill.py's task on a converted directory: an N=8 RTF student of the safari run keeps the
    teacher's predictions (KL far below that of dropping the long convolutions), and its recurrent
    decoding equals an argmax loop over its own parallel forward."""
    from hyena_rtf.checkpoints.distillation import distill_checkpoint

    out_dir, teacher, _ = converted["safari_run"]
    summary = distill_checkpoint(out_dir, tmp_path / "student", 8, max_steps=100, progress=False)
    student, _ = load_for_inference(summary["checkpoint"])
    assert student.config.mixer == "hyena_rtf" and summary["max_pole_radius"] < 1
    ids = reference("safari_run")["input_ids"]
    t_logits = teacher(input_ids=ids).logits
    skip_only = copy.deepcopy(teacher)
    for layer in skip_only.model.layers:
        layer.mixer.filters[0].mlp[-1].weight.zero_()
    baseline = kl_divergence(t_logits, skip_only(input_ids=ids).logits)
    kl = kl_divergence(t_logits, student(input_ids=ids).logits)
    assert baseline > 0.5 and kl < 1e-3 * baseline, (kl, baseline)
    assert (student(input_ids=ids).logits.argmax(-1) == t_logits.argmax(-1)).float().mean() > 0.97
    student.generation_config.eos_token_id = student.config.eos_token_id = None
    out = student.generate(ids[:, :20], max_new_tokens=24, do_sample=False)  # recurrent state
    assert torch.equal(out, argmax_loop(student, ids[:, :20], 24))


def test_a_converted_model_trains(converted):
    """A converted model is an ordinary model: its loss goes down under the project's optimizer groups."""
    _, model, _ = converted["safari_run"]
    model = copy.deepcopy(model).train()
    ids = reference("safari_run")["input_ids"]
    opt = torch.optim.AdamW(model.param_groups(weight_decay=0.0), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("field,value", [("implicit_decay_order", "backwards"), ("implicit_num_inner_mlps", -1),
                                         ("implicit_w", float("nan")), ("implicit_modulate", "yes"),
                                         ("output_norm_eps", 0.0)])
def test_new_backbone_fields_are_checked(field, value):
    from hyena_rtf.modeling.configuration_hyena_rtf import HyenaRTFConfig

    with pytest.raises(ValueError, match=f"HyenaRTFConfig.{field}"):
        HyenaRTFConfig(mixer="hyena", hidden_size=16, output_rank=4, **{field: value})


@torch.no_grad()
def test_new_backbone_fields_default_to_the_old_filter():
    """Defaults: fast-first decay rates (the formula the implicit filter always had), window on."""
    import math

    from hyena_rtf.modeling.implicit_filter import ImplicitFilter

    f = ImplicitFilter(8, 32)
    assert torch.equal(f.deltas, torch.linspace(math.log(1e-2) / 0.3, math.log(1e-2) / 1.5, 8).abs())
    g = ImplicitFilter(8, 32, decay_order="slow_first")
    assert torch.allclose(g.deltas, f.deltas.flip(0))
    h = ImplicitFilter(8, 32, modulate=False)
    h.load_state_dict(f.state_dict())
    k_f, k_h = f.kernel(), h.kernel()
    assert torch.allclose(k_f[:, 0], k_h[:, 0])  # tap 0: window exp(0) = 1
    assert not torch.allclose(k_f[:, 1:], k_h[:, 1:])


@torch.no_grad()
def test_hyenadna_checkpointed_names_and_an_untied_head(tmp_path):
    """HyenaDNA runs with activation checkpointing name weights ``.mixer.layer.*`` / ``.mlp.layer.*``:
    the same weights under those names give the reference logits. A head that differs from the
    embedding is kept as an untied head."""
    from hyena_rtf.checkpoints.foreign import load_foreign_checkpoint

    src = copy_fixture(tmp_path, "hyenadna")
    edit_config(src / "config.json", lambda c: c.update(checkpoint_mixer=True, checkpoint_mlp=True))
    state = load_foreign_checkpoint(src / "weights.ckpt")["state_dict"]
    renamed = {k.replace(".mixer.", ".mixer.layer.").replace(".mlp.", ".mlp.layer."): v for k, v in state.items()}
    torch.save({"state_dict": renamed}, src / "weights.ckpt")
    convert_checkpoint(src, tmp_path / "out")
    model, _ = load_for_inference(tmp_path / "out")
    ref = reference("hyenadna")
    assert max_error(model, ref["input_ids"], ref["logits"]) <= 1e-4

    head = torch.randn_like(state["model.lm_head.weight"])
    torch.save({"state_dict": {**renamed, "model.lm_head.weight": head}}, src / "weights.ckpt")
    convert_checkpoint(src, tmp_path / "untied")
    model, _ = load_for_inference(tmp_path / "untied")
    assert not model.config.tie_word_embeddings and torch.equal(model.lm_head.weight, head)
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


# ---------------------------------------------------------------------------------------------- bad sources
def convert_cli(tmp_path: Path, capsys, **kwargs) -> str:
    """Run the convert task through run_cli in-process: return its one stderr line (exit code 2)."""
    from omegaconf import OmegaConf

    sys.path.insert(0, str(ROOT))
    from hyena_rtf.tasks.convert_task import convert

    cfg = OmegaConf.create({"config": None, "tokenizer": "auto", "characters": ["A", "C", "G", "T", "N"],
                            "shift": None, "overwrite": False, "out_dir": str(tmp_path / "out"), **kwargs})
    with pytest.raises(SystemExit) as exit_info:
        run_cli(convert, cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()  # nothing written
    return lines[0]


def copy_fixture(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    return target


def edit_config(path: Path, edit) -> None:
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))


def edit_weights(path: Path, edit) -> None:
    """Change a Lightning checkpoint's state dict (read back through the converter's safe reader)."""
    from hyena_rtf.checkpoints.foreign import load_foreign_checkpoint

    ckpt = load_foreign_checkpoint(path)
    edit(ckpt["state_dict"])
    torch.save({"state_dict": ckpt["state_dict"], "global_step": 0}, path)


LAYER0 = "model.backbone.layers.0.mixer."

BAD = {
    "truncated checkpoint": (lambda d: (d / "weights.ckpt").write_bytes((d / "weights.ckpt").read_bytes()[:5000]),
                             ["damaged"]),
    "not a checkpoint": (lambda d: (d / "weights.ckpt").write_text("hello"), ["not a torch checkpoint"]),
    "config not JSON": (lambda d: (d / "config.json").write_text("{d_model: 16"), ["not valid JSON"]),
    "unknown config key": (lambda d: edit_config(d / "config.json", lambda c: c.update(rotary=True)),
                           ["rotary", "not an option"]),
    "unknown layer key": (lambda d: edit_config(d / "config.json", lambda c: c["layer"].update(gated=True)),
                          ["layer.gated"]),
    "attention layers": (lambda d: edit_config(d / "config.json", lambda c: c.update(attn_layer_idx=[1])),
                         ["attn_layer_idx", "attention"]),
    "order 3": (lambda d: edit_config(d / "config.json", lambda c: c["layer"].update(order=3)), ["layer.order"]),
    "several heads": (lambda d: edit_config(d / "config.json", lambda c: c["layer"].update(num_heads=2)),
                      ["layer.num_heads"]),
    "normalized filter": (lambda d: edit_config(d / "config.json", lambda c: c["layer"].update(normalized=True)),
                          ["layer.normalized"]),
    "missing d_model": (lambda d: edit_config(d / "config.json", lambda c: c.pop("d_model")), ["d_model", "missing"]),
    "wrong width": (lambda d: edit_config(d / "config.json", lambda c: c.update(d_inner=48)),
                    ["mlp.fc1.weight", "shape"]),
    "missing key": (lambda d: edit_weights(d / "weights.ckpt", lambda s: s.pop(LAYER0 + "short_filter.bias")),
                    ["backbone.layers.0.mixer.short_filter.bias", "missing"]),
    "extra key": (lambda d: edit_weights(d / "weights.ckpt", lambda s: s.update({LAYER0 + "gate.weight": torch.ones(2)})),
                  ["backbone.layers.0.mixer.gate.weight", "unexpected"]),
    "wrong shape": (lambda d: edit_weights(d / "weights.ckpt",
                                           lambda s: s.update({LAYER0 + "in_proj.bias": torch.zeros(47)})),
                    ["backbone.layers.0.mixer.in_proj.bias", "shape"]),
    "decay buffer": (lambda d: edit_weights(d / "weights.ckpt",
                                            lambda s: s[LAYER0 + "filter_fn.modulation.deltas"].mul_(2)),
                     ["modulation.deltas"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_hyenadna_sources_end_with_one_line(case, tmp_path, capsys):
    src = copy_fixture(tmp_path, "hyenadna")
    damage, needles = BAD[case]
    damage(src)
    line = convert_cli(tmp_path, capsys, src=str(src))
    for needle in needles:
        assert needle in line, line


RTF_BAD = {
    "no montel scale": (lambda s: s.pop("backbone.layers.1.mixer.filter_fn.scalar"),
                        ["backbone.layers.1.mixer.filter_fn.scalar", "missing"]),
    "ab rows": (lambda s: s.update({"backbone.layers.0.mixer.filter_fn.ab": torch.zeros(15, 8)}),
                ["backbone.layers.0.mixer.filter_fn.ab", "(15, 8)", "(16, 8)"]),
    "no low-rank norm": (lambda s: s.pop("backbone.layers.0.mixer.norm.weight"),
                         ["backbone.layers.0.mixer.norm.weight", "missing"]),
}


@pytest.mark.parametrize("case", list(RTF_BAD))
def test_malformed_rtf_state_dicts_end_with_one_line(case, tmp_path, capsys):
    src = copy_fixture(tmp_path, "rtf_state_dict")
    state = torch.load(src / "model.pt", weights_only=True)
    damage, needles = RTF_BAD[case]
    damage(state)
    torch.save(state, src / "model.pt")
    line = convert_cli(tmp_path, capsys, src=str(src / "model.pt"))
    for needle in needles:
        assert needle in line, line


def test_other_bad_requests(tmp_path, capsys):
    assert "src not found" in convert_cli(tmp_path, capsys, src=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    assert "neither config.json" in convert_cli(tmp_path, capsys, src=str(tmp_path / "empty"))
    lone = tmp_path / "lone" / "model.pt"
    lone.parent.mkdir()
    shutil.copy(FIXTURES / "rtf_state_dict" / "model.pt", lone)
    assert "no config for" in convert_cli(tmp_path, capsys, src=str(lone))
    assert "vocab_size is 61" in convert_cli(tmp_path, capsys, src=str(FIXTURES / "safari_run"), tokenizer="gpt2")
    assert "has 11 tokens but the model's vocab_size is 12" in convert_cli(
        tmp_path, capsys, src=str(FIXTURES / "hyenadna"), characters=["A", "C", "G", "T"])
    src = copy_fixture(tmp_path, "rtf_state_dict")
    cfg = (src / "config.yaml").read_text()
    (src / "config.yaml").write_text(cfg.replace("trunc_len: ${..l_max}", "trunc_len: 63"))
    assert "trunc_len" in convert_cli(tmp_path, capsys, src=str(src / "model.pt"))
    (src / "config.yaml").write_text(cfg.replace("d_inner: 32", "d_inner: ${eval:open}"))  # parsed, never run
    assert "only arithmetic" in convert_cli(tmp_path, capsys, src=str(src / "model.pt"))
    # an existing output is never replaced without overwrite=true, and the check comes first
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        convert_checkpoint(tmp_path / "nowhere", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"


@pytest.mark.slow
def test_cli_converts_and_the_other_clis_take_the_result(tmp_path):
    """convert.py, then evaluate.py, generate.py, export.py and distill.py on its output, as subprocesses."""
    from test_cli_errors import assert_one_line_error, run

    out = tmp_path / "hd"
    proc = run("convert.py", f"src={FIXTURES / 'hyenadna'}", f"out_dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mixer hyena" in proc.stdout and "characters ACGTN" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hd"]  # no run directory, no log file
    dna = tmp_path / "dna.txt"
    dna.write_text(reference("hyenadna")["text"][:600] + "\n")
    proc = run("evaluate.py", f"ckpt_path={out}", "data=files", f"data.test_path={dna}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run("generate.py", f"ckpt_path={out}", "prompt=ACGTAC", "max_new_tokens=8", "do_sample=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run("export.py", f"ckpt_path={out}", f"out_dir={tmp_path / 'again'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run("distill.py", f"ckpt_path={out}", "state_size=8", f"out_dir={tmp_path / 'student'}", "evaluate=false",
               "max_steps=10", "hankel_taps=128", "progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    student, tok = load_for_inference(tmp_path / "student" / "checkpoints" / "last.ckpt")
    assert student.config.mixer == "hyena_rtf" and tok("ACGT").input_ids == [7, 8, 9, 10]
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURES / "hyenadna", bad)
    (bad / "weights.ckpt").write_bytes((bad / "weights.ckpt").read_bytes()[:3000])
    assert_one_line_error(run("convert.py", f"src={bad}", f"out_dir={tmp_path / 'never'}", cwd=tmp_path), "damaged")
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_convert_benchmark_smoke_mode_tables(tmp_path):
    from bench import convert as bench_convert
    from bench.report import Table

    report = bench_convert.run("smoke", torch.device("cpu"), tmp_path)
    fit, dec = (p for p in report.parts if isinstance(p, Table))
    assert fit.column("fixture") == ["safari_run"] and fit.column("state size") == [4]
    assert fit.column("KL teacher||student (nats)")[0] < 1e-2 * fit.column("KL without long conv (nats)")[0]
    assert all(float(r) < 1 for r in fit.column("max pole radius"))
    assert len(dec.rows) == 2 * len(bench_convert.MODES["smoke"]["positions"])
    assert all(v > 0 for v in dec.column("ms / token"))


def readme_convert_commands() -> list[str]:
    """The commands of the README's fixture-sized conversion example (its first bash block)."""
    import re

    text = (ROOT / "README.md").read_text()
    section = text.split("## Convert safari and HyenaDNA checkpoints", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]
    return [line.split(" #", 1)[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_conversion_example_runs_as_written(tmp_path):
    """Every command of the README's end-to-end example, run as written from a copy of the fixture."""
    import shlex

    from test_cli_errors import run

    commands = readme_convert_commands()
    assert [c.split()[1] for c in commands] == ["convert.py", "distill.py", "generate.py", "export.py"]
    shutil.copytree(FIXTURES, tmp_path / "tests" / "fixtures")
    for cmd in commands:
        argv = shlex.split(cmd)
        assert argv[0] == "python"
        proc = run(argv[1], *argv[2:], cwd=tmp_path)
        assert proc.returncode == 0, (cmd, proc.stderr[-2000:])
    student, tok = load_for_inference(tmp_path / "hyenadna_rtf" / "checkpoints" / "last.ckpt")
    assert student.config.mixer == "hyena_rtf" and tok is not None
    assert (tmp_path / "hyenadna_rtf_hf" / "config.json").is_file()
