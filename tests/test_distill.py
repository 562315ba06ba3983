"""Distilling implicit-filter Hyena into RTF filters: fitting, the converted model, the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import scipy.signal as ss
import torch

from hyena_rtf.checkpoints.distillation import UnstableFitError, check_stable, distill_checkpoint, distill_model
from hyena_rtf.modeling.configuration_hyena_rtf import HyenaRTFConfig
from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
from hyena_rtf.modeling.rtf import RTF
from hyena_rtf.modeling.rtf_fit import aliased_kernel_direct, fit_numerator, fit_rtf, max_pole_radius

from helpers import TINY, argmax_loop, files_data
from test_cli_errors import assert_one_line_error, fake_checkpoint, run

L_MAX = 64


def low_order_bank(channels: int, order: int, L: int, seed: int = 0, r_max: float = 0.97):
    """Random stable order-``order`` transfer functions (num, den), poles up to ``r_max``."""
    rng = np.random.default_rng(seed)
    num = rng.normal(size=(channels, order + 1))
    den = np.zeros((channels, order + 1))
    poles = []
    for i in range(channels):
        p = rng.uniform(0.4, r_max, order // 2) * np.exp(1j * rng.uniform(0.1, 3.0, order // 2))
        p = np.concatenate([p, p.conj()])
        poles.append(p)
        den[i] = np.real(np.poly(p))
    return num, den, np.stack(poles)


def tiny_teacher(**overrides) -> HyenaRTFForCausalLM:
    cfg = dict(vocab_size=97, hidden_size=16, num_hidden_layers=2, intermediate_size=32,
               max_position_embeddings=L_MAX, mixer="hyena", output_rank=None, implicit_filter_order=16)
    return HyenaRTFForCausalLM(HyenaRTFConfig(**{**cfg, **overrides})).eval()


def save_teacher(model: HyenaRTFForCausalLM, path) -> None:
    """A checkpoint in train.py's format: hyper_parameters.model and net.* weights."""
    model_hp = {k: v for k, v in model.config.to_dict().items() if k in HyenaRTFConfig().to_dict()}
    torch.save({"hyper_parameters": {"model": model_hp},
                "state_dict": {f"net.{k}": v for k, v in model.state_dict().items()}, "global_step": 0}, path)


# ---------------------------------------------------------------------------- fitting
@torch.no_grad()
def test_fit_recovers_lower_order_rtfs_and_their_poles():
    """Kernels of order-4 systems, fitted at order 8: kernel to rounding, the true poles recovered."""
    L = 128
    num, den, poles = low_order_bank(6, 4, L)
    target = RTF.from_transfer_function(num, den, l_max=L).kernel()  # (6, L)
    # Independent check of the target: taps 1..L-1 are lfilter's impulse response.
    imp = np.zeros(L)
    imp[0] = 1.0
    assert np.allclose(target[:, 1:].numpy(), np.stack([ss.lfilter(num[i], den[i], imp)[1:] for i in range(6)]),
                       atol=1e-12)
    fit = fit_rtf(target, 8, max_steps=0, param_dtype=torch.float64)
    assert fit.rel_err.max() < 1e-10, fit.rel_err
    found = fit.rtf.poles()  # (6, 8): the 4 true poles and 4 at (numerically) zero
    for i in range(6):
        big = found[i][found[i].abs() > 1e-6].numpy()
        assert len(big) == 4
        for p in poles[i]:
            assert np.abs(big - p).min() < 1e-7, (i, p, big)
    assert (fit.pole_radius < 1).all()


@torch.no_grad()
def test_numerator_least_squares_matches_a_direct_aliasing_sum():
    """fit_numerator on a kernel built by explicit folding of a long impulse response (no FFT)."""
    num, den, _ = low_order_bank(3, 4, 32, seed=1, r_max=0.9)
    den_t = torch.from_numpy(den)
    b_true = torch.randn(3, 4, dtype=torch.float64)
    h0_true = torch.randn(3, dtype=torch.float64)
    k = aliased_kernel_direct(b_true, den_t, h0_true, 32)  # (3, 32)
    b, h0 = fit_numerator(k, den_t)
    assert torch.allclose(b, b_true, atol=1e-9) and torch.allclose(h0, h0_true, atol=1e-9)


@torch.no_grad()
def test_refinement_never_increases_the_error_and_keeps_poles_inside():
    torch.manual_seed(0)
    t = torch.arange(L_MAX, dtype=torch.float64)
    target = torch.randn(16, L_MAX, dtype=torch.float64) * torch.exp(-t / 10)  # not an RTF of any low order
    fit = fit_rtf(target, 4, max_steps=200, check_every=10, lr=1e-3)
    assert fit.closed_form_rel_err.mean() > 1e-3  # there is something left to refine
    assert fit.rel_err.mean() < 0.99 * fit.closed_form_rel_err.mean()
    assert (fit.rel_err <= fit.closed_form_rel_err * (1 + 1e-9)).all()
    den = torch.nn.functional.pad(fit.rtf.denominator(), (1, 0), value=1.0)
    assert (max_pole_radius(den) < 1).all() and (fit.rtf.poles().abs() < 1).all()


# ---------------------------------------------------------------------------- the converted model
@torch.no_grad()
def test_distilling_a_teacher_whose_filters_are_rtfs_recovers_them():
    """Implicit filters overwritten with order-4 RTF kernels: an N=8 student reproduces them.

    Order 3: two long convolutions per layer, so the kernel -> filter bookkeeping is exercised.
    """
    torch.manual_seed(0)
    teacher = tiny_teacher(hyena_order=3)
    rtf_kernels = []
    for layer, block in enumerate(teacher.model.layers):
        for j, f in enumerate(block.mixer.filters):
            num, den, _ = low_order_bank(16, 4, L_MAX, seed=10 * layer + j)
            k = RTF.from_transfer_function(num, den, l_max=L_MAX).kernel()  # (16, L_MAX) fp64
            f.kernel = lambda L=None, k=k: k[:, : (L_MAX if L is None else L)]
            rtf_kernels.append(k)
    student, reports = distill_model(teacher, 8, max_steps=0, progress=False)
    assert student.config.mixer == "hyena_rtf" and student.config.state_size == 8
    i = 0
    for block in student.model.layers:
        for f in block.mixer.filters:
            err = (f.kernel(L_MAX).double() - rtf_kernels[i]).norm() / rtf_kernels[i].norm()
            assert err < 1e-5, err  # fp32 coefficients and an fp32 FFT: a few ulps of fp32
            i += 1
    assert all(r["rel_err"] < 1e-5 and r["max_pole_radius"] < 1 for r in reports)
    # Everything but the filters is the teacher's: same logits up to the filter rounding.
    ids = torch.randint(0, 97, (2, L_MAX))
    assert torch.allclose(student(input_ids=ids).logits, teacher(input_ids=ids).logits, atol=1e-4)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    shared = [k for k in s_state if ".filters." not in k]
    assert shared and all(torch.equal(s_state[k], t_state[k]) for k in shared)


@torch.no_grad()
@pytest.mark.parametrize("mixer", ["hyena_s4d", "hyena_rtf"])
def test_any_filter_with_a_kernel_is_a_teacher(mixer):
    """Distillation reads teachers only through ``kernel()``. An S4D bank of state 8 (S4D-Lin: one
    real mode and three complex pairs, 7 poles) and an RTF bank of order 16 whose denominators have
    order 4 (reflection coefficients 5..16 zero) are both recovered by students of their true
    order, and every other weight is the teacher's. In fp64: S4D-Lin's seven poles cluster near
    z = 1, where fp32 direct-form coefficients alone move the order-7 kernel by about 1.5 %."""
    torch.manual_seed(0)
    extra = (dict(state_size=8, s4d_dt_min=0.05, s4d_dt_max=0.2) if mixer == "hyena_s4d"
             else dict(state_size=16, rtf_constraint="reflection"))
    teacher = tiny_teacher(mixer=mixer, **extra).double()
    if mixer == "hyena_rtf":
        for block in teacher.model.layers:
            f = block.mixer.filters[0]
            f.a_raw[:, 4:] = 0.0  # reflection coefficients 5..16 zero: denominators of order 4
            f.b[:, 4:] = 0.0
            f.b.mul_(3.0)  # taps far from a pure feed-through
    order = 7 if mixer == "hyena_s4d" else 4
    student, reports = distill_model(teacher, order, max_steps=0, progress=False)
    assert student.config.mixer == "hyena_rtf" and student.config.state_size == order
    for block_t, block_s in zip(teacher.model.layers, student.model.layers):
        k_t = block_t.mixer.filters[0].kernel(L_MAX).double()
        k_s = block_s.mixer.filters[0].kernel(L_MAX).double()
        assert (k_t[:, 1:].norm() / k_t.norm()) > 0.1  # the taps after 0 matter
        assert (k_s - k_t).norm() / k_t.norm() < 1e-4
    assert all(r["max_pole_radius"] < 1 for r in reports)
    ids = torch.randint(0, 97, (2, L_MAX))
    assert torch.allclose(student(input_ids=ids).logits, teacher(input_ids=ids).logits, atol=1e-6)
    shared = [k for k in student.state_dict() if ".filters." not in k]
    assert shared and all(torch.equal(student.state_dict()[k], teacher.state_dict()[k]) for k in shared)


@torch.no_grad()
def test_student_prefill_and_steps_equal_its_parallel_forward():
    torch.manual_seed(0)
    student, _ = distill_model(tiny_teacher(), 8, max_steps=50, progress=False)
    ids = torch.randint(0, 97, (2, L_MAX))
    ref = student(input_ids=ids).logits  # (2, L_MAX, V), parallel FFT mode
    for split in (1, 23):
        cache = student.model.new_cache()
        out = [student(input_ids=ids[:, :split], past_key_values=cache, use_cache=True).logits]
        for t in range(split, L_MAX):
            out.append(student(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
        rec = torch.cat(out, 1)
        err = ((rec - ref).abs().max() / ref.abs().max()).item()
        assert err < 1e-4, (split, err)


def test_unstable_fits_are_refused(monkeypatch):
    """A fit with a pole outside the unit circle never becomes a checkpoint."""
    import hyena_rtf.checkpoints.distillation as distillation

    real_fit = distillation.fit_rtf

    def unstable_fit(*args, **kwargs):
        fit = real_fit(*args, **kwargs)
        with torch.no_grad():
            fit.rtf.a_raw[3].zero_()
            fit.rtf.a_raw[3, 0] = -1.05  # A(z) = 1 - 1.05 z^-1: a pole at 1.05
        return fit

    monkeypatch.setattr(distillation, "fit_rtf", unstable_fit)
    with pytest.raises(UnstableFitError, match="poles on or outside the unit circle"):
        distill_model(tiny_teacher(), 4, max_steps=0, progress=False)
    # The check reads the model's own coefficients: a stable bank passes, a marginal one does not.
    model = HyenaRTFForCausalLM(HyenaRTFConfig(vocab_size=97, hidden_size=16, num_hidden_layers=1,
                                               max_position_embeddings=L_MAX, state_size=2, rtf_constraint="none"))
    with torch.no_grad():
        model.model.layers[0].mixer.filters[0].a_raw.zero_()
    assert check_stable(model) == [0.0]
    with torch.no_grad():
        model.model.layers[0].mixer.filters[0].a_raw[0] = torch.tensor([0.0, -1.0])  # poles at +-1
    with pytest.raises(UnstableFitError, match="layer 0 filter 0"):
        check_stable(model)


# ---------------------------------------------------------------------------- checkpoints and CLI
def test_distill_checkpoint_writes_a_loadable_hyena_rtf_checkpoint(tmp_path):
    from hyena_rtf.checkpoints.loading import load_for_inference

    torch.manual_seed(0)
    teacher = tiny_teacher()
    save_teacher(teacher, tmp_path / "teacher.ckpt")
    summary = distill_checkpoint(tmp_path / "teacher.ckpt", tmp_path / "out", state_size=8, max_steps=20,
                                 progress=False)
    ckpt = tmp_path / "out" / "checkpoints" / "last.ckpt"
    assert summary["checkpoint"] == str(ckpt)
    report = json.loads((ckpt.parent / "distill.json").read_text())
    assert len(report["layers"]) == 2 and all(x["max_pole_radius"] < 1 for x in report["layers"])
    assert report["distill_s"] > 0
    model, _ = load_for_inference(ckpt)
    assert model.config.mixer == "hyena_rtf" and model.config.state_size == 8
    ids = torch.randint(0, 97, (2, L_MAX))
    with torch.no_grad():
        ref = teacher(input_ids=ids).logits
        err = ((model(input_ids=ids).logits - ref).abs().max() / ref.abs().max()).item()
        # Without the teacher's skip term on tap 0 (or with a misplaced filter) this is O(1).
        assert err < 1e-3, err
        layer0 = teacher.model.layers[0].mixer.filters[0]
        assert layer0.bias.abs().max() > 0.1  # the skip term is there to be missed
    with pytest.raises(Exception, match="exists"):
        distill_checkpoint(tmp_path / "teacher.ckpt", tmp_path / "out", state_size=8, progress=False)


def test_cli_bad_inputs(tmp_path):
    attn_ckpt = tmp_path / "attention.ckpt"
    fake_checkpoint(attn_ckpt, mixer="attention")  # a model without long filters
    assert_one_line_error(run("distill.py", f"ckpt_path={attn_ckpt}", "evaluate=false", cwd=tmp_path),
                          "mixer='attention'", "Hyena model")
    teacher = tmp_path / "teacher.ckpt"
    save_teacher(tiny_teacher(), teacher)
    assert_one_line_error(run("distill.py", f"ckpt_path={teacher}", f"state_size={L_MAX}", "evaluate=false",
                              cwd=tmp_path), "state_size", str(L_MAX - 1))
    assert_one_line_error(run("distill.py", "ckpt_path=/nonexistent/run", "evaluate=false", cwd=tmp_path),
                          "checkpoint not found", "/nonexistent/run")


@pytest.fixture(scope="module")
def hyena_run(tmp_path_factory, wikitext_dir, token_cache):
    """A trained implicit-filter teacher: ``train.py model=hyena_tiny`` (tiny sizes, 10 steps)."""
    cwd = tmp_path_factory.mktemp("hyena_teacher")
    tiny = ["model=hyena_tiny", *[a for a in TINY if a.startswith("model.") and "state_size" not in a]]
    proc = run("train.py", *files_data(wikitext_dir), *tiny, f"paths.data_dir={token_cache}", "trainer.max_steps=10",
               "trainer.val_check_interval=10", "trainer.limit_val_batches=2", "optim.warmup_steps=2",
               "callbacks.sample_generation.max_new_tokens=4", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (cwd / "logs" / "train" / "runs").glob("*")
    return run_dir


def test_cli_distils_with_evaluation_and_the_other_clis_take_the_result(hyena_run, wikitext_dir, tmp_path):
    """distill.py on a train.py run of mixer=hyena, scoring both models: its teacher and student
    perplexities are what evaluate.py reports for the two checkpoints; export.py takes the student;
    generate.py decodes it greedily exactly like an argmax loop over full parallel forwards, and so
    does the recurrent cache."""
    from hyena_rtf.checkpoints.loading import load_for_inference

    text = tmp_path / "wiki.test.small.raw"  # the first real WikiText test articles: quick to score twice
    text.write_text("".join((wikitext_dir / "wiki.test.raw").read_text().splitlines(keepends=True)[:40]))
    data = ["data=files", f"data.test_path={text}"]
    proc = run("distill.py", f"ckpt_path={hyena_run}", "state_size=8", f"out_dir={tmp_path / 'out'}", *data,
               "max_steps=20", "progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "max |pole|" in proc.stdout and "distillation took" in proc.stdout
    printed = re.search(r"^test ppl: teacher ([0-9.]+), student ([0-9.]+)", proc.stdout, re.M)
    assert printed, proc.stdout[-2000:]
    student_ckpt = tmp_path / "out" / "checkpoints" / "last.ckpt"
    report = json.loads((student_ckpt.parent / "distill.json").read_text())
    for who, ckpt in (("teacher", hyena_run / "checkpoints" / "last.ckpt"), ("student", student_ckpt)):
        out = tmp_path / f"eval_{who}.json"
        ev = run("evaluate.py", f"ckpt_path={ckpt}", *data, f"output={out}", "progress=false", cwd=tmp_path)
        assert ev.returncode == 0, ev.stderr[-2000:]
        token_ppl = json.loads(out.read_text())["token_ppl"]
        assert report[f"{who}_ppl"] == pytest.approx(token_ppl, rel=1e-9), who
        assert printed.group(1 if who == "teacher" else 2) == f"{token_ppl:.3f}", who
    # A trained teacher is far from uniform, and the student keeps its perplexity to a few percent.
    assert report["teacher_ppl"] < 0.8 * 300 and abs(report["ppl_change_pct"]) < 5

    proc = run("export.py", f"ckpt_path={student_ckpt}", f"out_dir={tmp_path / 'hf'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "hf" / "config.json").is_file()

    model, tok = load_for_inference(student_ckpt)
    assert model.config.mixer == "hyena_rtf" and model.config.state_size == 8
    ids = torch.tensor([tok("The").input_ids])
    ref = argmax_loop(model, ids, 12)  # reference: full parallel forward per token
    gen = run("generate.py", f"ckpt_path={student_ckpt}", "prompt=The", "do_sample=false", "max_new_tokens=12",
              "save=false", cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert gen.stdout.strip() == tok.decode(ref[0], skip_special_tokens=True).strip()
    with torch.no_grad():  # the recurrent cache's logits along that text are the parallel forward's
        cache = model.model.new_cache()
        steps = [model(input_ids=ref[:, :1], past_key_values=cache, use_cache=True).logits]
        steps += [model(input_ids=ref[:, t : t + 1], past_key_values=cache, use_cache=True).logits
                  for t in range(1, ref.shape[1])]
        parallel = model(input_ids=ref).logits
    err = ((torch.cat(steps, 1) - parallel).abs().max() / parallel.abs().max()).item()
    assert err < 1e-4, err


@torch.no_grad()
def test_l1_montel_fit_satisfies_the_constraint_and_shrinks_poles_radially():
    from hyena_rtf.modeling.rtf_fit import shrink_to_l1

    num, den, poles = low_order_bank(4, 6, 64, seed=3, r_max=0.98)
    den_t = torch.from_numpy(den)
    assert (den_t[:, 1:].abs().sum(-1) > 1).all()  # sharp enough that the constraint binds
    shrunk = shrink_to_l1(den_t)
    assert (shrunk[:, 1:].abs().sum(-1) <= 1 - 1e-3 + 1e-12).all()
    for i in range(4):
        new = np.roots(shrunk[i].numpy())
        rho = np.abs(new).max() / np.abs(poles[i]).max()
        assert 0 < rho < 1
        for p in poles[i]:  # every pole moved towards 0 by the same factor
            assert np.abs(new - rho * p).min() < 1e-8
    target = RTF.from_transfer_function(num, den, l_max=64).kernel()
    fit = fit_rtf(target, 6, constraint="l1_montel", max_steps=100, check_every=10, lr=1e-3)
    assert (fit.rtf.denominator().abs().sum(-1) < 1).all() and (fit.pole_radius < 1).all()
    assert (fit.rel_err <= fit.closed_form_rel_err * (1 + 1e-9)).all()
