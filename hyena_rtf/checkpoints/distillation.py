"""Distil a Hyena model into Hyena-RTF (``mixer=hyena_rtf``) for constant-time decoding.

The teacher is any Hyena model of this project (``mixer`` ``hyena``, ``hyena_s4d`` or
``hyena_rtf``: a training checkpoint, or a Hugging Face directory such as ``convert.py`` writes):
every long convolution of every layer is replaced by an RTF bank of order ``state_size`` fitted
to the teacher filter's effective kernel ``kernel(l_max)`` (the filter contract's, with the
feed-through on tap 0: for the implicit filter its MLP x decay window plus skip term) by
:func:`hyena_rtf.modeling.rtf_fit.fit_rtf`; every other weight is copied unchanged. The student's parallel mode uses the fitted kernels, and its recurrent mode
(prefill + O(N) steps per token) reproduces them exactly, so the student decodes in constant
time per token where the teacher has to recompute a window.

The result is a Lightning checkpoint in this project's format (``hyper_parameters.model`` and
``net.*`` weights, the tokenizer inside), so evaluate.py, generate.py and export.py load it, plus
the tokenizer files and a ``distill.json`` report beside it. Fitted filters are checked for
stability on the stored (fp32) coefficients; a fit with any pole on or outside the unit circle
is refused.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from .loading import is_intact, load_checkpoint_dict
from ..errors import UserError
from ..modeling.configuration_hyena_rtf import HyenaRTFConfig
from ..modeling.filters import MIXER_FILTERS
from ..modeling.hyena import HyenaOperator
from ..modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
from ..modeling.rtf_fit import fit_rtf

log = logging.getLogger(__name__)

__all__ = ["UnstableFitError", "resolve_teacher", "distill_model", "check_stable", "distill_checkpoint"]

CONSTRAINTS = ("none", "l1_montel")


class UnstableFitError(ValueError):
    """A fitted filter has a pole on or outside the unit circle: the student would diverge."""


def resolve_teacher(path: str | Path) -> Path:
    """The checkpoint of ``path``: a ``.ckpt`` file, a Hugging Face directory (``config.json``), or
    a run directory (its newest intact ``.ckpt``)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_dir():
        ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        if (ckpt_dir / "last.ckpt").is_file() and is_intact(ckpt_dir / "last.ckpt"):
            return ckpt_dir / "last.ckpt"
        found = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
        for p in found:
            if is_intact(p):
                return p
        raise UserError(f"no intact .ckpt file in {ckpt_dir}; pass a checkpoint file or a run directory of train.py")
    raise UserError(f"checkpoint not found: {path}; pass a .ckpt file, a run directory or an exported model directory")


def _check_request(hp_model: dict, path: Path, state_size, constraint: str) -> None:
    mixer = hp_model.get("mixer", "hyena_rtf")
    if mixer not in MIXER_FILTERS:
        raise UserError(
            f"{path} is a mixer={mixer!r} model; distillation needs a Hyena model with long filters "
            f"(mixer one of {tuple(MIXER_FILTERS)})"
        )
    l_max = hp_model.get("max_position_embeddings", HyenaRTFConfig.max_position_embeddings)
    if isinstance(state_size, bool) or not isinstance(state_size, int) or not 1 <= state_size < l_max:
        raise UserError(f"state_size must be an integer in [1, l_max-1] = [1, {l_max - 1}], got {state_size!r}")
    if constraint not in CONSTRAINTS:
        raise UserError(f"constraint must be one of {CONSTRAINTS}, got {constraint!r}")


def _hyena_ops(model: HyenaRTFForCausalLM) -> list[tuple[str, HyenaOperator]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, HyenaOperator)]


def check_stable(model: HyenaRTFForCausalLM) -> list[float]:
    """Largest pole modulus of every RTF bank (in layer order); raise UnstableFitError if any >= 1.

    Poles come from ``RTF.poles()`` of the model's own (stored-dtype) coefficients.
    """
    radii = []
    for layer, (name, op) in enumerate(_hyena_ops(model)):
        for j, f in enumerate(op.filters):
            r = f.poles().abs().amax(-1)  # (num_a,)
            if not torch.all(torch.isfinite(r) & (r < 1.0)):
                bad = int((~(torch.isfinite(r) & (r < 1.0))).sum())
                raise UnstableFitError(
                    f"refusing the fit: layer {layer} filter {j} ({name}) has {bad} channel(s) with poles on or "
                    f"outside the unit circle (largest |pole| {float(r.max()):.6f}); try a smaller state_size "
                    "or constraint=l1_montel"
                )
            radii.append(float(r.max()))
    return radii


def _student_of(teacher: HyenaRTFForCausalLM, state_size: int, constraint: str) -> HyenaRTFForCausalLM:
    """A freshly initialised ``mixer=hyena_rtf`` model of the teacher's shape and dtype."""
    cfg = teacher.config.to_dict()
    # The student's RTF options describe a fitted filter, not an initialisation: plain coefficients
    # (no reflection parametrisation), one denominator per channel.
    cfg.update(mixer="hyena_rtf", state_size=state_size, rtf_constraint=constraint, rtf_num_a=None, rtf_decay=None)
    student_cfg = HyenaRTFConfig(**{k: v for k, v in cfg.items() if k in HyenaRTFConfig().to_dict()})
    return HyenaRTFForCausalLM(student_cfg).to(next(teacher.parameters()).dtype)


class _StageBars:
    """One progress bar per stage of :func:`fit_rtf` (closed form over channels, then refinement
    steps), as its ``progress`` callback."""

    def __init__(self, kernels: int, state_size: int, enabled: bool):
        self.kernels, self.state_size, self.enabled = kernels, state_size, enabled
        self.bars: dict = {}

    def __call__(self, stage: str, done: int, total: int, loss: Optional[float]) -> None:
        if stage not in self.bars:
            self.close()
            self.bars[stage] = tqdm(total=total, desc=f"{stage} ({self.kernels} kernels, N={self.state_size})",
                                    unit="ch" if loss is None else "step", disable=not self.enabled)
        bar = self.bars[stage]
        bar.update(done - bar.n)
        if loss is not None:
            bar.set_postfix(rel_sq_err=f"{loss:.3g}", refresh=False)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _copy_shared_weights(teacher: HyenaRTFForCausalLM, student: HyenaRTFForCausalLM, filter_prefixes: tuple) -> None:
    """Every weight outside the long filters goes over unchanged (same names, same shapes)."""
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for key in s_state:
        if key.startswith(filter_prefixes):
            continue
        if key not in t_state or t_state[key].shape != s_state[key].shape:
            raise ValueError(f"teacher and student differ outside the long filters at {key}")
        s_state[key] = t_state[key]
    student.load_state_dict(s_state)


def _filter_report(f, k_t: torch.Tensor, l_max: int, closed_form_rel_err: torch.Tensor) -> dict:
    """Kernel errors of a fitted bank as stored: the student's own kernel in its own precision."""
    k_s = f.kernel(l_max).double()  # (D, l_max)
    rel = (k_s - k_t).norm(dim=-1) / k_t.norm(dim=-1).clamp_min(1e-30)  # (D,)
    return {
        "rel_err": float((k_s - k_t).norm() / k_t.norm().clamp_min(1e-30)),
        "rel_err_mean": float(rel.mean()), "rel_err_max": float(rel.max()),
        "mse": float(((k_s - k_t) ** 2).mean()),
        "closed_form_rel_err_mean": float(closed_form_rel_err.mean()),
        "max_pole_radius": float(f.poles().abs().max()),
    }


@torch.no_grad()
def distill_model(
    teacher: HyenaRTFForCausalLM,
    state_size: int,
    constraint: str = "none",
    progress: bool = True,
    **fit_kwargs,
) -> tuple[HyenaRTFForCausalLM, list[dict]]:
    """A ``mixer=hyena_rtf`` copy of ``teacher`` with fitted RTF filters, and per-filter reports.

    ``teacher`` is any Hyena model: its filters are read only through ``kernel(l_max)``. Every
    channel of every long convolution is fitted in one batch. ``fit_kwargs`` go to
    :func:`~hyena_rtf.modeling.rtf_fit.fit_rtf` (max_steps, lr, tol, hankel_taps, ...).
    """
    if teacher.config.mixer not in MIXER_FILTERS:
        raise UserError(f"distillation needs a Hyena model (mixer one of {tuple(MIXER_FILTERS)}), "
                        f"got mixer={teacher.config.mixer!r}")
    student = _student_of(teacher, state_size, constraint)
    teacher = teacher.eval()
    l_max = teacher.config.max_position_embeddings

    ops_t, ops_s = _hyena_ops(teacher), _hyena_ops(student)
    kernels, where = [], []
    for layer, (_, op) in enumerate(ops_t):
        for j, f in enumerate(op.filters):
            # fp64 copy: the target is the exact kernel of the stored weights, not an fp32 rounding of it.
            kernels.append(copy.deepcopy(f).double().eval().kernel(l_max))  # (D, l_max)
            where.append((layer, j))
    target = torch.cat(kernels, 0)  # (layers * filters * D, l_max)

    bars = _StageBars(target.shape[0], state_size, progress)
    fit = fit_rtf(target, state_size, constraint, progress=bars, param_dtype=next(student.parameters()).dtype, **fit_kwargs)
    bars.close()

    # Copy every non-filter weight, then the fitted coefficients into each RTF bank.
    _copy_shared_weights(teacher, student, tuple(f"{name}.filters." for name, _ in ops_s))
    D = student.config.hidden_size
    reports = []
    for i, (layer, j) in enumerate(where):
        rows = slice(i * D, (i + 1) * D)
        f = ops_s[layer][1].filters[j]
        for pname, p in f.named_parameters():
            p.copy_(getattr(fit.rtf, pname)[rows])
        f.reset_recurrence()
        reports.append({"layer": layer, "filter": j, **_filter_report(f, target[rows], l_max, fit.closed_form_rel_err[rows])})
    radii = check_stable(student)
    for rep, r in zip(reports, radii):
        rep["max_pole_radius"] = r
    log.info(f"refinement: {fit.steps} steps, {fit.reverted} channel reverts to a stable snapshot")
    return student.eval(), reports


def _exported_config(path: Path) -> dict:
    """The ``HyenaRTFConfig`` fields stored in an exported directory's config.json."""
    try:
        raw = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}/config.json is not valid JSON ({e})") from None
    if raw.get("model_type") != HyenaRTFConfig.model_type:
        raise UserError(f"{path} does not hold a hyena_rtf model (model_type {raw.get('model_type')!r})")
    fields = HyenaRTFConfig.__annotations__  # the model's own fields, not transformers' bookkeeping
    return {k: v for k, v in raw.items() if k in fields}


def _perplexity(model, tokenizer, text: str, context: int, batch_size: int, device, progress: bool) -> float:
    from ..data.token_cache import tokenize_text
    from ..evaluation.perplexity import score_tokens
    from ..evaluation.metrics import perplexity

    ids = tokenize_text(tokenizer, text, False, desc="tokenizing")
    nll, count = score_tokens(model.to(device), ids, context, context, batch_size, device, progress)
    return perplexity(nll, count)


def distill_checkpoint(
    ckpt_path: str | Path,
    out_dir: str | Path,
    state_size: int,
    constraint: str = "none",
    eval_text: Optional[str] = None,
    eval_split: str = "test",
    batch_size: int = 8,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    **fit_kwargs,
) -> dict:
    """Distil the checkpoint at ``ckpt_path`` into ``out_dir/checkpoints/last.ckpt``; return the summary.

    Writes the student checkpoint (teacher's hyper-parameters with ``mixer=hyena_rtf``, the
    tokenizer inside), ``out_dir/tokenizer/`` and ``out_dir/checkpoints/distill.json``. With
    ``eval_text`` the teacher's and the student's perplexities on it (non-overlapping l_max
    windows) go into the summary. Input problems raise :class:`UserError` before any fitting.
    """
    from .loading import load_for_inference

    path = resolve_teacher(ckpt_path)
    if path.is_dir():  # a Hugging Face directory: its config.json holds the model's fields
        ckpt = {"state_dict": {}}
        hp = {"model": _exported_config(path)}
    else:
        ckpt = load_checkpoint_dict(path)
        hp = ckpt.get("hyper_parameters", {})
    if "model" not in hp or "state_dict" not in ckpt:
        raise UserError(f"{path} is not a hyena_rtf training checkpoint (no model hyperparameters)")
    _check_request(dict(hp["model"]), path, state_size, constraint)
    out = Path(out_dir)
    target = out / "checkpoints" / "last.ckpt"
    if target.exists() and not overwrite:
        raise UserError(f"{target} exists; pass overwrite=true or choose another out_dir")
    teacher, tokenizer = load_for_inference(path)
    if eval_text is not None and tokenizer is None:
        raise UserError(f"{path} carries no tokenizer; perplexity needs one (pass evaluate=false)")

    start = time.perf_counter()
    student, layers = distill_model(teacher, state_size, constraint, progress=progress, **fit_kwargs)
    distill_s = time.perf_counter() - start

    net_state = {f"net.{k}": v for k, v in student.state_dict().items()}
    other = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("net.")}  # e.g. skipped_steps
    model_hp = {**dict(hp["model"]), "mixer": "hyena_rtf", "state_size": state_size,
                "rtf_constraint": constraint, "rtf_num_a": None, "rtf_decay": None}
    new_hp = {**hp, "model": model_hp}
    summary = {
        "teacher": str(path), "checkpoint": str(target), "state_size": state_size, "constraint": constraint,
        "distill_s": distill_s, "layers": layers,
        "max_pole_radius": max(x["max_pole_radius"] for x in layers),
        "rel_err_mean": sum(x["rel_err_mean"] for x in layers) / len(layers),
    }
    if eval_text is not None:
        context = teacher.config.max_position_embeddings
        summary["split"] = eval_split
        summary["teacher_ppl"] = _perplexity(teacher, tokenizer, eval_text, context, batch_size, device, progress)
        summary["student_ppl"] = _perplexity(student, tokenizer, eval_text, context, batch_size, device, progress)
        summary["ppl_change_pct"] = 100 * (summary["student_ppl"] / summary["teacher_ppl"] - 1)

    target.parent.mkdir(parents=True, exist_ok=True)
    keep = {k: v for k, v in ckpt.items() if k in ("epoch", "global_step", "pytorch-lightning_version",
                                                   "tokenizer_json", "tokenizer_special")}
    if tokenizer is not None and "tokenizer_json" not in keep:  # the teacher was a directory: carry its tokenizer
        keep["tokenizer_json"] = tokenizer.backend_tokenizer.to_str()
        keep["tokenizer_special"] = {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    payload = {**keep, "hyper_parameters": new_hp, "state_dict": {**other, **net_state},
               "distillation": {k: v for k, v in summary.items() if k != "layers"}}
    tmp = target.with_suffix(".ckpt.tmp")
    torch.save(payload, tmp)
    tmp.replace(target)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out / "tokenizer"))
    (target.parent / "distill.json").write_text(json.dumps(summary, indent=2))
    return summary


def summary_table(summary: dict) -> str:
    """Plain-text report of :func:`distill_checkpoint`'s summary (per layer, then the model)."""
    lines = [f"{'layer':>5} {'filter':>6} {'rel kernel err':>15} {'max rel err':>12} {'max |pole|':>11}"]
    for x in summary["layers"]:
        lines.append(f"{x['layer']:>5} {x['filter']:>6} {x['rel_err']:>15.3e} {x['rel_err_max']:>12.3e} "
                     f"{x['max_pole_radius']:>11.6f}")
    lines.append(f"state size {summary['state_size']}, constraint {summary['constraint']}, "
                 f"distillation took {summary['distill_s']:.1f} s")
    if "teacher_ppl" in summary:
        lines.append(f"{summary['split']} ppl: teacher {summary['teacher_ppl']:.3f}, student {summary['student_ppl']:.3f} "
                     f"({summary['ppl_change_pct']:+.2f} %)")
    lines.append(f"checkpoint: {summary['checkpoint']}")
    return "\n".join(lines)
