"""Distilling an implicit-filter Hyena into Hyena-RTF: perplexity kept, and decoding speed gained.

    python -m bench distill --quick --threads 1   # D=64, 2 layers, 400 steps (the quality quick size)
    python -m bench distill --smoke               # tiny sizes: checks that it runs

1. A teacher with ``mixer=hyena`` (implicit MLP filters) is trained exactly like the quality
   benchmark's runs (``bench.quality.train_and_score``'s recipe: WikiText-2 validation text as
   training data, a BPE trained on it, the project's LightningModule, l_max 512) and saved as a
   Lightning checkpoint with its tokenizer, like ``train.py`` does.
2. ``hyena_rtf.distillation.distill_checkpoint`` (what ``distill.py`` runs) turns it into
   ``mixer=hyena_rtf`` checkpoints of state size 4, 16 and 64 (no constraint), and 16 with the
   ``l1_montel`` constraint.
3. Teacher and students are scored on all of WikiText-2 test (non-overlapping chunks of the
   training length, ``hyena_rtf.evaluation.evaluate_ids``), each loaded back from its checkpoint
   with ``load_for_inference`` (the loader of evaluate.py / generate.py / export.py).
4. Decoding: the teacher decodes by recomputing a parallel forward over its last l_max tokens per
   new token (it has no state); the N=64 student decodes recurrently (prefilled state, one step
   per token). Timed interleaved with ``bench.decode``'s closures at positions 1024 and 4096,
   batch 1 and 8.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from hyena_rtf.checkpoints import load_for_inference
from hyena_rtf.datamodule import LMDataModule
from hyena_rtf.distillation import distill_checkpoint
from hyena_rtf.evaluation import evaluate_ids
from hyena_rtf.lit_module import HyenaLMModule

from . import decode, quality
from .report import Report, Table
from .timing import compare

TITLE = "Distilling implicit Hyena filters into RTFs: perplexity and decoding speed"

MODES = {
    "full": dict(train="quick", states=(4, 16, 64), positions=(1024, 4096), batches=(1, 8), repeats=16),
    "quick": dict(train="quick", states=(4, 16, 64), positions=(1024, 4096), batches=(1, 8), repeats=10),
    "smoke": dict(train="smoke", states=(4, 8), positions=(40, 80), batches=(1, 2), repeats=2),
}
L1_STATE = 16  # the l1_montel student's state size (the quick tables use 4/16/64 unconstrained)


def train_teacher(cfg: dict, data: LMDataModule, path: Path, seed: int = 0) -> dict:
    """Train the ``mixer=hyena`` teacher as bench.quality does and save a checkpoint at ``path``."""
    L.seed_everything(seed, workers=True, verbose=False)
    data.hparams.seed = seed
    module = HyenaLMModule(model=quality.model_kwargs(cfg, "hyena", len(data.tokenizer)))
    module.tokenizer = data.tokenizer  # saved inside the checkpoint, as train.py does
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=cfg["steps"], limit_val_batches=0, num_sanity_val_steps=0,
        gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    train_s = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(str(path))
    return {"train_s": train_s}


def _score(path: Path, data: LMDataModule, seq_len: int) -> float:
    model, _ = load_for_inference(path)
    result = evaluate_ids(model, data.token_array("test"), "test", seq_len, None, data.meta("test"),
                          batch_size=16, device="cpu", progress=False)
    return result.token_ppl


@torch.no_grad()
def recurrent_vs_parallel(path: Path, tokens, length: int) -> float:
    """Max |logit difference| / max |logit| between the student's parallel forward and its
    recurrent mode (prefill of the first half, then one step per token) on 2 x ``length`` test tokens."""
    model, _ = load_for_inference(path)
    ids = torch.as_tensor(tokens[: 2 * length].astype("int64")).view(2, length)  # (2, length)
    ref = model(input_ids=ids).logits  # (2, length, V)
    cache = model.model.new_cache()
    half = length // 2
    out = [model(input_ids=ids[:, :half], past_key_values=cache, use_cache=True).logits]
    for t in range(half, length):
        out.append(model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    return float((torch.cat(out, 1) - ref).abs().max() / ref.abs().max())


def run(mode: str, device: torch.device, out: Path, teacher: Path | None = None) -> Report:
    """Train (or reuse ``teacher``), distil, score and time; return the report."""
    settings = MODES[mode]
    cfg = quality.SIZES[settings["train"]]
    wiki = quality.find_shared() / quality.WIKITEXT
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    report = Report("distill", TITLE)
    with tempfile.TemporaryDirectory(prefix="hyena_rtf_distill_") as tmp:
        tmp = Path(tmp)
        data = LMDataModule(
            corpus="files", train_path=str(wiki / "wiki.valid.raw"), validation_path=str(wiki / "wiki.test.raw"),
            test_path=str(wiki / "wiki.test.raw"), tokenizer="bpe", vocab_size=cfg["vocab"], seq_len=cfg["seq_len"],
            batch_size=cfg["batch"], cache_dir=str(tmp / "cache"),
        )
        data.prepare_data()
        train_s = None
        if teacher is None:
            teacher = tmp / "teacher" / "checkpoints" / "last.ckpt"
            train_s = train_teacher(cfg, data, teacher)["train_s"]
        teacher_ppl = _score(teacher, data, cfg["seq_len"])
        students = {}
        for n, constraint in [(n, "none") for n in settings["states"]] + [(L1_STATE, "l1_montel")]:
            out_dir = tmp / f"student_{n}_{constraint}"
            summary = distill_checkpoint(teacher, out_dir, state_size=n, constraint=constraint, progress=False)
            ckpt = Path(summary["checkpoint"])
            tokens = data.token_array("test")
            length = min(quality.L_MAX, len(tokens) // 2)
            students[(n, constraint)] = {**summary, "ppl": _score(ckpt, data, cfg["seq_len"]), "ckpt": ckpt,
                                         "rec_vs_par": recurrent_vs_parallel(ckpt, tokens, length)}

        ppl = Table(
            "1. Test perplexity of the implicit-filter teacher and its distilled RTF students",
            ["model", "state size", "constraint", "token ppl", "ppl vs teacher %", "mean rel kernel err",
             "max rel kernel err", "kernel MSE", "max pole radius", "recurrent vs parallel", "distill s"],
        )
        # Perplexity and radius as fixed-precision strings: the differences are in the 4th-6th digit.
        ppl.add("teacher (mixer=hyena)", None, None, f"{teacher_ppl:.4f}", 0.0, None, None, None, None, None, None)
        for (n, constraint), s in students.items():
            layers = s["layers"]
            ppl.add("student (mixer=hyena_rtf)", n, constraint, f"{s['ppl']:.4f}", 100 * (s["ppl"] / teacher_ppl - 1),
                    sum(x["rel_err_mean"] for x in layers) / len(layers), max(x["rel_err_max"] for x in layers),
                    sum(x["mse"] for x in layers) / len(layers),
                    f"{max(x['max_pole_radius'] for x in layers):.6f}", s["rec_vs_par"], s["distill_s"])
        ppl.notes.append(
            f"Teacher: mixer=hyena, D={cfg['hidden']}, {cfg['layers']} layers, l_max {quality.L_MAX}, "
            f"{cfg['steps']} steps of {cfg['batch']} x {cfg['seq_len']} tokens on wiki.valid.raw"
            + (f" ({train_s:.0f} s)" if train_s else "") + "; scored on all of wiki.test.raw in "
            f"{cfg['seq_len']}-token chunks. Every model is loaded back from its checkpoint file."
        )
        ppl.notes.append(
            "Kernel errors are ||k_student - k_teacher|| / ||k_teacher|| per channel over the full "
            "l_max taps (mean and max over every channel of every layer); MSE is per tap, averaged "
            "over layers. Radius: largest pole modulus of any channel (must be < 1). 'recurrent vs parallel': "
            "max |logit difference| / max |logit| between the student's parallel forward and its prefill + "
            f"steps on 2 x {quality.L_MAX} test tokens (fp32; the recurrence is derived from fp64 taps, the "
            "parallel kernel is an fp32 spectral division)."
        )
        report.parts.append(ppl)

        biggest = students[(max(settings["states"]), "none")]
        report.parts.append(_decode_table(teacher, biggest["ckpt"], settings, device))
        (out / "distill.json").write_text(json.dumps(
            {"teacher_ppl": teacher_ppl, "students": {f"{n}/{c}": {k: v for k, v in s.items() if k != "ckpt"}
                                                      for (n, c), s in students.items()}}, indent=2, default=str))
    return report


def _decode_table(teacher: Path, student: Path, settings: dict, device: torch.device) -> Table:
    t_model, _ = load_for_inference(teacher, device)
    s_model, _ = load_for_inference(student, device)
    table = Table(
        "2. Decoding: teacher recompute vs distilled student recurrent (interleaved)",
        ["method", "batch", "position", "ms / token", "IQR ms", "tokens / s", "speed-up"],
    )
    torch.manual_seed(0)
    with torch.inference_mode():
        for batch in settings["batches"]:
            for position in settings["positions"]:
                steps = {
                    "teacher: recompute (window l_max)": decode._recompute(t_model, position, batch, device)[0],
                    f"student N={s_model.config.state_size}: recurrent": decode._recurrent(s_model, position, batch, device)[0],
                }
                timings = compare(steps, repeats=settings["repeats"], warmup=1, device=device)
                base = timings["teacher: recompute (window l_max)"].median
                for name, t in timings.items():
                    table.add(name, batch, position, t.median * 1e3, t.iqr * 1e3, batch / t.median, base / t.median)
    table.notes.append(
        f"Median of {settings['repeats']} interleaved steps after one warm-up; each step is one model call "
        "with logits_to_keep=1 (LM head included). The teacher has no state: every token re-runs the "
        f"parallel forward over the last l_max={t_model.config.max_position_embeddings} tokens, so its "
        "cost is the same at both positions; the student's state was prefilled in parallel to the position."
    )
    return table
