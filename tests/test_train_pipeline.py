"""End-to-end pipeline on real text: train, resume, evaluate, export, generate (tiny model, CPU)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from helpers import TINY_MODEL, compose_cfg, wikitext_data
from hyena_rtf.checkpoints import load_checkpoint_dict, load_for_inference
from hyena_rtf.evaluation import evaluate
from hyena_rtf.training import train


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _train_cfg(tmp_path: Path, wikitext_dir, cache_dir, run: str, extra: list[str]):
    overrides = [
        *wikitext_data(wikitext_dir, cache_dir),
        *TINY_MODEL,
        "trainer.accelerator=cpu",
        "trainer.max_steps=30",
        "trainer.val_check_interval=15",
        "trainer.limit_val_batches=4",
        "trainer.log_every_n_steps=1",
        "callbacks.model_checkpoint.every_n_train_steps=10",
        "callbacks.sample_generation.max_new_tokens=8",
        "~callbacks.throughput",
        "~callbacks.progress_bar",
        "+trainer.enable_progress_bar=false",
        "optim.warmup_steps=3",
        "optim.lr=3e-3",
        "optim.filter_lr=3e-3",
        "test=false",
        *extra,
    ]
    return compose_cfg("train", overrides, tmp_path / "train" / "runs" / run, return_hydra=False)


def _csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_train_resume_evaluate_export_generate(tmp_path, wikitext_dir, cache_dir, capsys):
    cfg = _train_cfg(tmp_path, wikitext_dir, cache_dir, "a", [])
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    out = capsys.readouterr().out
    assert "unigram ppl" in out and "sample" in out
    # The loss falls: mean of the last 5 logged losses well below the first 5.
    losses = [float(r["train/loss"]) for r in _csv_rows(run) if r.get("train/loss")]
    assert len(losses) >= 25
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert math.isfinite(metrics["val/ppl"]) and metrics["val/ppl"] < 512
    ckpts = run / "checkpoints"
    assert (ckpts / "last.ckpt").is_file()
    # The tokenizer travels in the checkpoint and in the run directory.
    assert (run / "tokenizer" / "tokenizer.json").is_file()

    # Resume from the step-20 checkpoint: the trainer restarts at step 20 with the saved optimizer state.
    step20 = next(p for p in ckpts.glob("step_*.ckpt") if load_checkpoint_dict(p)["global_step"] == 20)
    saved = load_checkpoint_dict(step20)
    cfg_b = _train_cfg(tmp_path, wikitext_dir, cache_dir, "b", [f"ckpt_path={step20}", "trainer.max_steps=21"])
    from hyena_rtf import training

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

    training.L.Trainer.fit = spy_fit
    try:
        train(cfg_b)
    finally:
        training.L.Trainer.fit = orig_fit
    assert seen["step"] == 20
    saved_avg = [s["exp_avg"] for s in saved["optimizer_states"][0]["state"].values()]
    assert len(saved_avg) == len(seen["exp_avg"])
    for a, b in zip(saved_avg, seen["exp_avg"]):
        torch.testing.assert_close(a, b)

    # evaluate.py on the last checkpoint reproduces the final validation loss (same windows).
    last = load_checkpoint_dict(ckpts / "last.ckpt")
    assert last["global_step"] == 30
    eval_cfg = compose_cfg(
        "eval",
        [*wikitext_data(wikitext_dir, cache_dir), f"ckpt_path={ckpts / 'last.ckpt'}", "split=validation",
         "include_tail=false", "batch_size=8", "progress=false"],
        tmp_path / "eval",
        return_hydra=False,
    )
    # Training validated on limit_val_batches=4 batches of 8 windows; evaluate the same 32 windows.
    from hyena_rtf import evaluation

    result = evaluate(eval_cfg)
    assert result.context == 64 and result.stride == 64
    full_val = metrics["val/loss"]
    # The run validated on a subset; score exactly that subset for an exact comparison.
    model, tok = load_for_inference(ckpts / "last.ckpt")
    from hyena_rtf.datamodule import LMDataModule

    dm = LMDataModule(corpus="files", train_path=str(wikitext_dir / "wiki.valid.raw"),
                      validation_path=str(wikitext_dir / "wiki.test.raw"), test_path=str(wikitext_dir / "wiki.test.raw"),
                      vocab_size=512, seq_len=64, batch_size=8, cache_dir=str(cache_dir))
    dm.setup()
    ids = dm.token_array("validation")[: 32 * 64 + 1]
    nll, count = evaluation.score_tokens(model, ids, 64, 64, batch_size=8, progress=False)
    assert count == 32 * 64
    assert abs(nll / count - full_val) < 1e-4
    assert (run / "eval_validation_last.json").is_file()  # beside the training run it scored
    assert math.isfinite(result.word_ppl) and math.isfinite(result.bits_per_byte)

    # Export to a Hugging Face directory and generate from both the checkpoint and the export.
    from hyena_rtf.export import export_hf
    from hyena_rtf.generation import encode_prompt, generate_text

    export_dir = export_hf(model, tok, tmp_path / "hf")
    m2, tok2 = load_for_inference(export_dir)
    ids = encode_prompt(tok2, "The", None, m2.config.vocab_size)
    a = generate_text(model, tok, ids, max_new_tokens=12, do_sample=False, stream=False)
    b = generate_text(m2, tok2, ids, max_new_tokens=12, do_sample=False, stream=False)
    assert a.shape == (1, ids.shape[1] + 12)
    assert torch.equal(a, b)
