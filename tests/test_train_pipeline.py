"""The pipeline on real text with the session's tiny trained run (conftest.trained_run): the loss
falls, a resumed run continues exactly, evaluation equals an independent computation on the same
tokens, and export and generation decode what an argmax loop over parallel forwards decodes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from helpers import argmax_loop, check_printed_eval, cli, reference_nll, text_counts
from hyena_rtf.checkpoints.loading import load_checkpoint_dict, load_for_inference


def _csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _losses(run_dir: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["train/loss"]) for r in _csv_rows(run_dir) if r.get("train/loss")}


def _tokens(run: Path, text: str) -> np.ndarray:
    """The run's tokenizer applied to the whole text at once (not the project's piecewise path)."""
    tok = Tokenizer.from_file(str(run / "tokenizer" / "tokenizer.json"))
    return np.asarray(tok.encode(text, add_special_tokens=False).ids)


def test_loss_falls_and_the_run_holds_model_and_tokenizer(trained_run):
    run = trained_run.run
    assert "unigram ppl" in trained_run.stdout and "sample" in trained_run.stdout
    # The loss falls: mean of the last 5 logged losses well below the first 5.
    losses = list(_losses(run).values())
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    val = [float(r["val/loss"]) for r in _csv_rows(run) if r.get("val/loss")]
    assert len(val) == 3 and val[-1] < val[0] and math.exp(val[-1]) < 300  # below a uniform guess
    assert load_checkpoint_dict(run / "checkpoints" / "last.ckpt")["global_step"] == 30
    # The tokenizer travels in the checkpoint and in the run directory.
    _, tok = load_for_inference(trained_run.last)
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    assert tok.backend_tokenizer.to_str() == Tokenizer.from_file(str(run / "tokenizer" / "tokenizer.json")).to_str()


def test_resume_from_a_step_checkpoint_continues_the_run_exactly(trained_run, tmp_path, monkeypatch):
    """Resumed at step 20 with the saved optimizer state, the run logs the original's losses for
    steps 20-29 and ends on its weights."""
    from hyena_rtf.tasks import train_task as training

    ckpts = trained_run.run / "checkpoints"
    step20 = ckpts / "step_0000020.ckpt"
    saved = load_checkpoint_dict(step20)
    assert saved["global_step"] == 20
    seen = {}
    orig_fit = training.L.Trainer.fit

    def spy_fit(self, module, datamodule=None, ckpt_path=None, **kw):
        class Probe(training.L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if "step" not in seen:
                    seen["step"] = trainer.global_step
                    seen["exp_avg"] = [s["exp_avg"].clone() for s in trainer.optimizers[0].state_dict()["state"].values()]

        self.callbacks.append(Probe())
        return orig_fit(self, module, datamodule=datamodule, ckpt_path=ckpt_path, **kw)

    monkeypatch.setattr(training.L.Trainer, "fit", spy_fit)
    proc = cli("train.py", *trained_run.args, f"ckpt_path={step20}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert seen["step"] == 20
    saved_avg = [s["exp_avg"] for s in saved["optimizer_states"][0]["state"].values()]
    assert len(saved_avg) == len(seen["exp_avg"]) > 0
    for a, b in zip(saved_avg, seen["exp_avg"]):
        torch.testing.assert_close(a, b)
    (resumed,) = (tmp_path / "logs" / "train" / "runs").glob("*")
    original, again = _losses(trained_run.run), _losses(resumed)
    assert sorted(again) == list(range(20, 30))
    for step, loss in again.items():
        assert loss == pytest.approx(original[step], rel=1e-6, abs=1e-6), step
    a = load_checkpoint_dict(ckpts / "last.ckpt")["state_dict"]
    b = load_checkpoint_dict(resumed / "checkpoints" / "last.ckpt")["state_dict"]
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=1e-6, atol=1e-6)


def test_validation_loss_equals_an_independent_computation(trained_run, wikitext_dir):
    """val/loss at step 30 is the mean NLL of the first 20 batches of 4 chunks of 32 tokens."""
    model, _ = load_for_inference(trained_run.last)
    lines = (wikitext_dir / "wiki.test.raw").read_text(encoding="utf-8").splitlines(keepends=True)
    ids = _tokens(trained_run.run, "".join(lines[:60]))  # the split's start: more than the 2,561 tokens needed
    nll, count = reference_nll(model, ids[: 80 * 32 + 1], context=32)
    assert count == 80 * 32
    val30 = next(float(r["val/loss"]) for r in _csv_rows(trained_run.run) if r.get("val/loss") and r["step"] == "30")
    assert val30 == pytest.approx(nll / count, rel=1e-5)


@pytest.mark.parametrize("args,stride", [([], None), (["stride=12"], 12), (["include_tail=false"], None)])
def test_evaluate_prints_the_perplexities_of_an_independent_computation(trained_run, wikitext_dir, tmp_path,
                                                                        args, stride):
    """evaluate.py on the first real WikiText test articles (chunks, a sliding window, without the
    incomplete last chunk): what it prints and writes equals NLL summed by hand over the same tokens."""
    text = "".join((wikitext_dir / "wiki.test.raw").read_text(encoding="utf-8").splitlines(keepends=True)[:40])
    path = tmp_path / "small.raw"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "result.json"
    proc = cli("evaluate.py", f"ckpt_path={trained_run.last}", "data=files", f"data.test_path={path}",
               f"output={out}", "progress=false", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, _ = load_for_inference(trained_run.last)
    ids = _tokens(trained_run.run, text)
    if "include_tail=false" in args:
        ids = ids[: (len(ids) - 1) // 32 * 32 + 1]
    nll, count = reference_nll(model, ids, context=32, stride=stride)
    words, nbytes = text_counts(text)
    check_printed_eval(proc.stdout, nll, count, words, nbytes)
    result = json.loads(out.read_text())
    assert result["nll_sum"] == pytest.approx(nll, rel=1e-6) and result["tokens_scored"] == count
    assert (result["context"], result["stride"]) == (32, stride or 32)


def test_export_and_generate_decode_like_an_argmax_loop(trained_run, tmp_path):
    """export.py, then generate.py greedily from the checkpoint and from the export: both print the
    text of an argmax loop over full parallel forwards of the checkpoint's model."""
    model, tok = load_for_inference(trained_run.last)
    proc = cli("export.py", f"ckpt_path={trained_run.last}", f"out_dir={tmp_path / 'hf'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = torch.tensor([tok("The").input_ids])
    expected = tok.decode(argmax_loop(model, ids, 20)[0], skip_special_tokens=True)
    for ckpt in (trained_run.last, tmp_path / "hf"):
        gen = cli("generate.py", f"ckpt_path={ckpt}", "prompt=The", "do_sample=false", "max_new_tokens=20",
                  cwd=tmp_path)
        assert gen.returncode == 0, gen.stderr[-3000:]
        assert gen.stdout.strip() == expected.strip(), ckpt
    saved = [p.read_text().strip() for p in (tmp_path / "logs" / "generate" / "runs").glob("*/generation.txt")]
    assert saved == [expected.strip()] * 2


def test_generate_samples_like_a_sampling_loop_over_parallel_forwards(trained_run, tmp_path):
    """generate.py seed=3 (plain softmax sampling) prints what a loop of full parallel forwards and
    torch.multinomial draws from the same seed: the recurrent state sees varied tokens here."""
    gen = cli("generate.py", f"ckpt_path={trained_run.last}", "prompt=The", "seed=3", "temperature=1.0", "top_k=0",
              "max_new_tokens=24", "save=false", cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr[-3000:]
    torch.manual_seed(3)  # as generate.py: seed, then build the model from the checkpoint, then sample
    model, tok = load_for_inference(trained_run.last)
    seq = torch.tensor([tok("The").input_ids])
    prompt_len = seq.shape[1]
    with torch.no_grad():
        for _ in range(24):
            probs = model(seq).logits[:, -1].float().softmax(-1)
            seq = torch.cat([seq, torch.multinomial(probs, 1)], 1)
    assert len(set(seq[0, prompt_len:].tolist())) > 8  # varied: a stale or broken state would change them
    assert gen.stdout.strip() == tok.decode(seq[0], skip_special_tokens=True).strip()
