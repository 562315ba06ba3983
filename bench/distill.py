"""Distilling an implicit-filter Hyena into Hyena-RTF: perplexity kept, and decoding speed gained.

    python -m bench distill --quick --threads 1   # D=64, 2 layers, 300 steps (the quality quick size)
    python -m bench distill --smoke               # tiny sizes: checks that it runs

The teacher is a run of the quality benchmark's kind (``bench.runs.Runner``); ``distill_checkpoint``
(what ``distill.py`` runs) turns it into RTF students, each scored by ``evaluate.py`` like the
teacher; then the teacher's recompute is timed against the largest student's recurrent steps.
Protocol and reading: BENCHMARKS.md section 8.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from hyena_rtf.checkpoints.loading import load_for_inference
from hyena_rtf.checkpoints.distillation import distill_checkpoint

from .report import Report, Table
from .runs import WIKITEXT_SIZES, Run, Runner, lr_wd
from .workloads import decoding_table, recompute_step, recurrent_step

TITLE = "Distilling implicit Hyena filters into RTFs: perplexity and decoding speed"

MODES = {
    "full": dict(train="quick", states=(4, 16, 64), positions=(1024, 4096), batches=(1, 8), repeats=16),
    "quick": dict(train="quick", states=(4, 16, 64), positions=(1024, 4096), batches=(1, 8), repeats=10),
    "smoke": dict(train="smoke", states=(4, 8), positions=(40, 80), batches=(1, 2), repeats=2),
}
L1_STATE = 16  # the l1_montel student's state size (the quick tables use 4/16/64 unconstrained)
TEACHER = Run("hyena", 0, lr_wd(3e-3, 0.1))


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
    """Train (or reuse ``teacher``, a run directory of bench.quality), distil, score and time."""
    settings = MODES[mode]
    runner = Runner(out / "distill_runs", WIKITEXT_SIZES[settings["train"]])
    report = Report("distill", TITLE)
    if teacher is None:
        teacher = Path(runner.results([TEACHER])[TEACHER]["run_dir"])
    teacher_ckpt = teacher / "checkpoints" / "last.ckpt"
    teacher_ppl = runner.evaluate(teacher_ckpt, teacher / "eval_test.json")["token_ppl"]
    t_model, tokenizer = load_for_inference(teacher_ckpt)
    seq_len = runner.seq_len
    tokens = np.asarray(tokenizer((runner.wiki / "wiki.test.raw").read_text())["input_ids"][: 4 * t_model.config.max_position_embeddings])
    students = {}
    for n, constraint in [(n, "none") for n in settings["states"]] + [(L1_STATE, "l1_montel")]:
        out_dir = out / "distill_students" / f"student_{n}_{constraint}"
        summary = distill_checkpoint(teacher_ckpt, out_dir, state_size=n, constraint=constraint, progress=False,
                                     overwrite=True)
        ckpt = Path(summary["checkpoint"])
        scored = runner.evaluate(ckpt, out_dir / "eval_test.json")
        length = min(t_model.config.max_position_embeddings, len(tokens) // 2)
        students[(n, constraint)] = {**summary, "ppl": scored["token_ppl"], "ckpt": ckpt,
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
        f"Teacher: `python train.py experiment=wikitext_cpu model=hyena_tiny {' '.join(TEACHER.overrides)} "
        f"{' '.join(WIKITEXT_SIZES[settings['train']])}` on wiki.valid.raw; teacher and students scored by evaluate.py on all "
        f"of wiki.test.raw in {seq_len}-token windows, each loaded back from its checkpoint file."
    )
    ppl.notes.append(f"Columns: BENCHMARKS.md section 8 ('recurrent vs parallel' on 2 x {length} test tokens).")
    report.parts.append(ppl)

    biggest = students[(max(settings["states"]), "none")]
    report.parts.append(_decode_table(teacher_ckpt, biggest["ckpt"], settings, device))
    (out / "distill.json").write_text(json.dumps(
        {"teacher_ppl": teacher_ppl, "students": {f"{n}/{c}": {k: v for k, v in s.items() if k != "ckpt"}
                                                  for (n, c), s in students.items()}}, indent=2, default=str))
    return report


def _decode_table(teacher: Path, student: Path, settings: dict, device: torch.device) -> Table:
    t_model, _ = load_for_inference(teacher, device)
    s_model, _ = load_for_inference(student, device)
    torch.manual_seed(0)
    methods = {"teacher: recompute (window l_max)": (t_model, recompute_step),
               f"student N={s_model.config.state_size}: recurrent": (s_model, recurrent_step)}
    table = decoding_table("2. Decoding: teacher recompute vs distilled student recurrent (interleaved)", methods,
                           settings["batches"], settings["positions"], device, settings["repeats"])
    table.notes.append("Protocol and reading: BENCHMARKS.md section 8.")
    return table
