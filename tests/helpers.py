"""Shared helpers: Hydra composition on tiny settings, the entry points run in this process,
independent references (greedy decoding, perplexity), and the one-line error contract."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import runpy
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

TINY_MODEL = [
    "model=hyena_rtf_tiny",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.max_position_embeddings=64",
    "model.state_size=4",
    "model.output_rank=null",
]

# The one BPE vocabulary every WikiText test trains: a token cache shared by the session
# (``token_cache`` in conftest.py) then tokenises each file set once.
WIKI_VOCAB = 300


def files_data(wikitext_dir: Path, *, test: bool = False, validation: bool = True) -> list[str]:
    """``data=files`` on the real WikiText text: validation text to train, test text to validate."""
    args = ["data=files", f"data.train_path={wikitext_dir / 'wiki.valid.raw'}", f"data.vocab_size={WIKI_VOCAB}",
            "data.seq_len=32", "data.batch_size=4"]
    if validation:
        args.append(f"data.validation_path={wikitext_dir / 'wiki.test.raw'}")
    if test:
        args.append(f"data.test_path={wikitext_dir / 'wiki.test.raw'}")
    return args


TINY = [
    "model=hyena_rtf_tiny", "model.hidden_size=32", "model.intermediate_size=64",
    "model.max_position_embeddings=32", "model.state_size=4", "model.output_rank=null",
]  # fmt: skip


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path, return_hydra: bool = True) -> DictConfig:
    """Compose a config from conf/ the way the entry points do, with outputs under ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir.parent)
    return cfg


def wikitext_data(wikitext_dir: Path, cache_dir: Path) -> list[str]:
    """Train on WikiText validation text, evaluate on its test text, small BPE, short chunks."""
    return [
        "data=files",
        f"data.train_path={wikitext_dir / 'wiki.valid.raw'}",
        f"data.validation_path={wikitext_dir / 'wiki.test.raw'}",
        f"data.test_path={wikitext_dir / 'wiki.test.raw'}",
        f"data.vocab_size={WIKI_VOCAB}",
        "data.seq_len=64",
        "data.batch_size=8",
        f"paths.data_dir={cache_dir}",
    ]


@torch.no_grad()
def argmax_loop(model, ids: torch.Tensor, n: int, window: int | None = None) -> torch.Tensor:
    """Reference greedy decoding: a full parallel forward over the (last ``window``) tokens per step.

    Independent of every decoding cache: it only uses the model's parallel mode.
    """
    seq = ids
    for _ in range(n):
        ctx = seq if window is None else seq[:, -window:]
        nxt = model(ctx).logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        seq = torch.cat([seq, nxt], 1)
    return seq


@torch.no_grad()
def sample_loop(model, ids: torch.Tensor, n: int, temperature: float = 1.0, top_k: int = 0,
                eos: int | None = None) -> torch.Tensor:
    """Reference sampling from the global RNG: per token a full parallel forward, logits divided by
    ``temperature``, all but the ``top_k`` largest set to -inf, softmax, one ``torch.multinomial``
    draw; stops after ``eos``. Independent of every decoding cache and of ``generate``."""
    seq = ids
    for _ in range(n):
        scores = model(seq).logits[:, -1].float() / temperature
        if top_k:
            kth = scores.topk(min(top_k, scores.shape[-1])).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        nxt = torch.multinomial(scores.softmax(-1), 1)
        seq = torch.cat([seq, nxt], 1)
        if eos is not None and int(nxt) == eos:
            break
    return seq


@torch.no_grad()
def reference_nll(model, ids, context: int, stride: int | None = None) -> tuple[float, int]:
    """Total NLL (nats) of every token after the first, written out without the evaluation module.

    Position ``i`` predicts ``ids[i + 1]``. With windows starting at multiples of ``stride`` and
    ``context`` tokens long, each prediction is read from the first window whose end passes it:
    window ``k = max(0, floor((i - context) / stride) + 1)``. Log-probabilities come from a plain
    log-softmax of one parallel forward per window.
    """
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    stride = context if stride is None else stride
    n = len(ids) - 1  # predictions
    window_of = ((torch.arange(n) - context).div(stride, rounding_mode="floor") + 1).clamp_min(0)
    total, count = 0.0, 0
    for k in torch.unique(window_of).tolist():
        start = k * stride
        positions = torch.nonzero(window_of == k).flatten()
        x = ids[start : min(start + context, n)]
        logp = model(input_ids=x[None]).logits[0].double().log_softmax(-1)
        total -= float(logp[positions - start, ids[positions + 1]].sum())
        count += len(positions)
    return total, count


def text_counts(text: str) -> tuple[int, int]:
    """Whitespace-separated words and UTF-8 bytes of a raw split."""
    return len(text.split()), len(text.encode("utf-8"))


def printed_eval(stdout: str) -> dict[str, float]:
    """The numbers evaluate.py prints: token ppl, word ppl, bits per byte, tokens scored."""
    found = {
        "token_ppl": re.search(r"^token ppl\s*: ([0-9.]+)$", stdout, re.M),
        "word_ppl": re.search(r"^word ppl \([0-9,]+ words\)\s*: ([0-9.]+)$", stdout, re.M),
        "bpb": re.search(r"^bits per byte \([0-9,]+ bytes\)\s*: ([0-9.]+)$", stdout, re.M),
        "tokens": re.search(r"exactly once \(([0-9,]+) tokens\)", stdout),
    }
    missing = [k for k, m in found.items() if m is None]
    assert not missing, (missing, stdout[-2000:])
    return {k: float(m.group(1).replace(",", "")) for k, m in found.items()}


def check_printed_eval(stdout: str, nll: float, count: int, words: int, nbytes: int, rel_nll: float = 1e-7) -> None:
    """evaluate.py printed the perplexities of (nll, count) over ``words`` words and ``nbytes`` bytes,
    to its printed digits, for an NLL within ``rel_nll`` of ``nll`` (fp32 log-probabilities summed in
    another order; a word perplexity of 1e7 magnifies that)."""
    got = printed_eval(stdout)
    assert got["tokens"] == count, (got, count)
    dnll = rel_nll * abs(nll)
    for key, value, slope, digits in (("token_ppl", math.exp(nll / count), math.exp(nll / count) / count, 3),
                                      ("word_ppl", math.exp(nll / words), math.exp(nll / words) / words, 3),
                                      ("bpb", nll / math.log(2) / nbytes, 1 / math.log(2) / nbytes, 4)):
        assert abs(got[key] - value) <= 0.5 * 10**-digits + slope * dnll, (key, got[key], value)


# --------------------------------------------------------------------------------------------
# Entry points, in this process

@dataclass
class Result:
    """What a finished command left: exit status and its captured output."""

    returncode: int
    stdout: str
    stderr: str


# A fresh interpreter's warning filters (python -W default off): what a user's terminal shows.
_FRESH_FILTERS = [
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, None),
    ("ignore", PendingDeprecationWarning, None),
    ("ignore", ImportWarning, None),
    ("ignore", ResourceWarning, None),
]


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def cli(script: str, *args: str, cwd: Path, env: dict | None = None, drop: tuple = ()) -> Result:
    """``python <script> <args>`` run in this process: the script itself (its ``@hydra.main``,
    Hydra's run directory and log file, ``run_cli``'s exit codes), without a new interpreter.

    ``cwd`` is the working directory and the project root (``HYENA_RTF_ROOT``) of the run.
    Environment, working directory, argv, logging handlers and warning filters are restored
    afterwards; warnings print to the captured stderr the way a fresh interpreter prints them.
    """
    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv[:], os.getcwd()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    os.environ.update({"HYENA_RTF_ROOT": str(cwd), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})})
    for key in ("HYENA_RTF_DEBUG", *drop):
        os.environ.pop(key, None)
    old_umask = os.umask(0o022)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    GlobalHydra.instance().clear()
    try:
        os.chdir(cwd)
        sys.argv = [str(ROOT / script), *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category, module in reversed(_FRESH_FILTERS):
                warnings.filterwarnings(action, category=category, module=module or "")
            warnings.showwarning = _print_warning  # pytest records warnings; a terminal prints them
            runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            err.write(f"{e.code}\n")
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        os.umask(old_umask)
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return Result(code, out.getvalue(), err.getvalue())


def assert_one_line_error(proc, *needles: str) -> str:
    """Exit code 2, no traceback, exactly one ``error: ...`` line on stderr containing ``needles``."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def fake_checkpoint(path: Path, **overrides) -> None:
    """A checkpoint in this project's format (hyperparameters + net.* weights) for a tiny model."""
    from hyena_rtf.modeling.configuration_hyena_rtf import HyenaRTFConfig
    from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
    from hyena_rtf.modeling.presets import preset_config

    cfg = preset_config("hyena_rtf-tiny", vocab_size=300, hidden_size=32, intermediate_size=64,
                        max_position_embeddings=32, state_size=4, output_rank=None).to_dict()
    model_kwargs = {k: cfg[k] for k in preset_config("hyena_rtf-tiny").to_dict() if k in cfg and k in HyenaRTFConfig().to_dict()}
    model = HyenaRTFForCausalLM(HyenaRTFConfig(**model_kwargs))
    hp = {**model_kwargs, **overrides}
    torch.save({"hyper_parameters": {"model": hp}, "state_dict": {f"net.{k}": v for k, v in model.state_dict().items()},
                "global_step": 0}, path)


def python_env(cwd: Path, **extra: str) -> dict:
    """Environment of a real subprocess (slow tier): the repository importable, the hub off."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HYENA_RTF_ROOT": str(cwd), **extra}
    env.pop("HYENA_RTF_DEBUG", None)
    return env
