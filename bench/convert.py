"""Converted safari-family models, distilled into RTFs: how close, and how fast they decode.

    python -m bench convert --quick --threads 1
    python -m bench convert --smoke             # tiny settings: checks that it runs

1. Fit: each committed fixture (tests/fixtures) converted with ``convert_checkpoint`` (what
   convert.py runs), distilled with ``distill_checkpoint`` (what distill.py runs) at several state
   sizes, and compared with its teacher on the fixture's reference inputs.
2. Decoding: the teacher's recompute against the students' recurrent steps, for the HyenaDNA
   fixture and a model of hyenadna-tiny-1k's shape (:func:`write_hyenadna_source`).

Protocol and reading: BENCHMARKS.md section 10.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hyena_rtf.checkpoints.loading import load_for_inference
from hyena_rtf.checkpoints.conversion import convert_checkpoint
from hyena_rtf.checkpoints.distillation import distill_checkpoint
from hyena_rtf.modeling.configuration_hyena_rtf import HyenaRTFConfig
from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
from hyena_rtf.checkpoints.safari import source_name

from .report import Report, Table
from .workloads import decoding_table, recompute_step, recurrent_step

TITLE = "Converted safari-family checkpoints distilled into RTFs: fit and constant-time decoding"

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
# name -> (src, config, reference file)
SOURCES = {
    "hyenadna": ("hyenadna", None, "hyenadna_reference.pt"),
    "safari_run": ("safari_run", None, "safari_run_reference.pt"),
    "eval_yaml": ("hyena_small_eval/hyena_small.pt", "hyena_small_eval/hyena_small.yaml", "eval_yaml_reference.pt"),
}
FIT = dict(max_steps=2000, hankel_taps=None)  # distill.py's defaults
MODES = {
    "full": dict(states={"hyenadna": (16, 64, 256), "safari_run": (4, 8, 16), "eval_yaml": (8, 16, 32)}, fit=FIT,
                 positions=(128, 1024, 4096, 16384), decode_states=(16, 64), repeats=20, tiny_1k=True),
    "quick": dict(states={"hyenadna": (16, 64), "safari_run": (4, 8, 16), "eval_yaml": (8, 16, 32)},
                  fit=dict(max_steps=300, hankel_taps=512), positions=(128, 1024, 4096, 16384), decode_states=(16, 64),
                  repeats=20, tiny_1k=True),
    "smoke": dict(states={"safari_run": (4,)}, fit=dict(max_steps=5, hankel_taps=32), positions=(16, 80),
                  decode_states=(4,), repeats=2, tiny_1k=False),
}
# hyenadna-tiny-1k-seqlen's published backbone arguments (its config.json).
TINY_1K = {"d_model": 128, "n_layer": 2, "d_inner": 512, "vocab_size": 12, "resid_dropout": 0.0, "embed_dropout": 0.1,
           "fused_mlp": False, "fused_dropout_add_ln": True, "residual_in_fp32": True, "pad_vocab_size_multiple": 8,
           "layer": {"_name_": "hyena", "emb_dim": 5, "filter_order": 64, "local_order": 3, "l_max": 1026,
                     "modulate": True, "w": 10, "lr": 6e-4, "wd": 0.0, "lr_pos_emb": 0.0}}


def kl_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> float:
    """Mean KL(teacher || student) of the next-token distributions (nats)."""
    p, q = teacher_logits.log_softmax(-1), student_logits.log_softmax(-1)
    return float(F.kl_div(q, p, reduction="none", log_target=True).sum(-1).mean())


def write_hyenadna_source(directory: Path, seed: int = 0) -> Path:
    """A HyenaDNA directory of TINY_1K's shape with this project's random initialisation.

    The weights are those of the equivalent ``mixer=hyena`` model under HyenaDNA's names and
    shapes (``hyena_rtf.checkpoints.safari.source_name``); only decoding speed is measured on it.
    """
    layer = TINY_1K["layer"]
    cfg = HyenaRTFConfig(mixer="hyena", vocab_size=TINY_1K["vocab_size"], hidden_size=TINY_1K["d_model"],
                         num_hidden_layers=TINY_1K["n_layer"], intermediate_size=TINY_1K["d_inner"],
                         max_position_embeddings=layer["l_max"], implicit_emb_dim=layer["emb_dim"],
                         implicit_filter_order=layer["filter_order"], implicit_w=float(layer["w"]), implicit_shift=0.05,
                         implicit_decay_order="slow_first", residual_in_fp32=True, embed_dropout=0.1)
    torch.manual_seed(seed)
    model = HyenaRTFForCausalLM(cfg)
    state = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            state["model.lm_head.weight"] = value
            continue
        if key.endswith("filters.0.deltas"):
            value = -value.view(1, 1, -1)  # HyenaDNA keeps the signed rates
        elif key.endswith(("filters.0.pos_emb", "filters.0.t")):
            value = value.unsqueeze(0)
        state["model." + source_name(key)] = value
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(TINY_1K, indent=2))
    torch.save({"state_dict": state, "global_step": 0}, directory / "weights.ckpt")
    return directory


def _fit_table(settings: dict, tmp: Path) -> tuple[Table, dict]:
    table = Table(
        "1. Fit: RTF students of converted random-weight fixtures",
        ["fixture", "l_max", "state size", "mean rel kernel err", "max pole radius", "KL teacher||student (nats)",
         "top-1 agreement", "KL without long conv (nats)", "distill s"],
    )
    converted = {}
    for name, states in settings["states"].items():
        src, config, ref_file = SOURCES[name]
        out = tmp / f"converted_{name}"
        convert_checkpoint(FIXTURES / src, out, config=None if config is None else FIXTURES / config)
        teacher, _ = load_for_inference(out)
        ids = torch.load(FIXTURES / ref_file, weights_only=True)["input_ids"]
        with torch.no_grad():
            t_logits = teacher(input_ids=ids).logits
            skip = copy.deepcopy(teacher)
            for block in skip.model.layers:
                block.mixer.filters[0].mlp[-1].weight.zero_()  # every tap after 0 removed
            baseline = kl_divergence(t_logits, skip(input_ids=ids).logits)
        converted[name] = {"dir": out, "students": {}}
        for n in states:
            summary = distill_checkpoint(out, tmp / f"student_{name}_{n}", n, progress=False, **settings["fit"])
            student, _ = load_for_inference(summary["checkpoint"])
            with torch.no_grad():
                s_logits = student(input_ids=ids).logits
            agree = float((s_logits.argmax(-1) == t_logits.argmax(-1)).float().mean())
            table.add(name, teacher.config.max_position_embeddings, n, summary["rel_err_mean"],
                      f"{summary['max_pole_radius']:.6f}", kl_divergence(t_logits, s_logits), agree, baseline,
                      summary["distill_s"])
            converted[name]["students"][n] = Path(summary["checkpoint"])
    fit = settings["fit"]
    table.notes.append(f"distill.py with max_steps={fit['max_steps']}, hankel_taps={fit['hankel_taps']}, constraint "
                       "none. Columns: BENCHMARKS.md section 10.")
    return table, converted


def _decode_tables(models: list[tuple[str, Path, dict[int, Path]]], settings: dict, device: torch.device) -> list[Table]:
    tables = []
    torch.manual_seed(0)
    for label, teacher_dir, students in models:
        # Loaded outside inference mode: RTF keys its cached recurrence on parameter versions.
        methods = {"teacher: recompute (window l_max)": (load_for_inference(teacher_dir, device)[0], recompute_step)}
        for n, path in students.items():
            methods[f"student N={n}: recurrent"] = (load_for_inference(path, device)[0], recurrent_step)
        # Every (method, position) pair in one interleaved loop, so that both ratios (student vs
        # teacher, and each method against itself at the first position) see the same load.
        table = decoding_table(f"2. Decoding, batch 1, {label}: teacher recompute vs distilled students recurrent "
                               "(interleaved)", methods, (1,), settings["positions"], device, settings["repeats"],
                               warmup=2, together=True)
        table.notes.append("Protocol and reading: BENCHMARKS.md section 10.")
        tables.append(table)
    return tables


def run(mode: str, device: torch.device, out: Path) -> Report:
    """Convert, distil, score and time; return the report."""
    settings = MODES[mode]
    report = Report("convert", TITLE)
    with tempfile.TemporaryDirectory(prefix="hyena_rtf_convert_") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        fit, converted = _fit_table(settings, tmp)
        report.parts.append(fit)
        models = []
        if "hyenadna" in converted:
            students = {n: p for n, p in converted["hyenadna"]["students"].items() if n in settings["decode_states"]}
            models.append(("HyenaDNA fixture (d_model 16)", converted["hyenadna"]["dir"], students))
        if settings["tiny_1k"]:
            src = write_hyenadna_source(tmp / "tiny_1k_source")
            out_dir = tmp / "tiny_1k"
            convert_checkpoint(src, out_dir)
            students = {}
            for n in settings["decode_states"]:
                summary = distill_checkpoint(out_dir, tmp / f"tiny_1k_student_{n}", n, progress=False, max_steps=0,
                                             hankel_taps=256)
                students[n] = Path(summary["checkpoint"])
            models.append(("hyenadna-tiny-1k shape (d_model 128)", out_dir, students))
        if not models:  # smoke: the safari run fixture
            models.append(("safari run fixture (d_model 16)", converted["safari_run"]["dir"],
                           converted["safari_run"]["students"]))
        report.parts += _decode_tables(models, settings, device)
        report.parts.append(f"Conversion, distillation and scoring took {time.perf_counter() - start:.0f} s in all.")
    return report
