"""The README is a contract: every command of its Train, Evaluate, Generate and Hugging Face
sections runs here, as written, through the real entry points, on the real WikiText text.

Commands are read from the README itself, so a command added there without a way to run it here
fails ``test_every_readme_command_is_covered``. Each command keeps its own arguments; the test
only appends overrides that shrink it (a tiny model, a few steps) and point the data at the
WikiText copy in ``../shared`` (the hub is unreachable here), and replaces the placeholders
``<run>`` and ``train.txt``/``valid.txt`` with files it made.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT, argmax_loop

README = ROOT / "README.md"
SECTIONS = ("Train", "Evaluate", "Generate", "Hugging Face and lm-eval", "Use the filter and the operator directly")

TINY = [
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_hidden_layers=2",
    "model.max_position_embeddings=512",
    "model.state_size=4",
    "++model.num_attention_heads=4",
    "model.output_rank=null",
    "data.seq_len=64",
    "data.batch_size=4",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=2",
    "++trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
]


def section_blocks() -> list[tuple[str, str, str]]:
    """(section, language, code) of every fenced block under the README sections we run."""
    text = README.read_text()
    blocks = []
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        title = part.splitlines()[0].strip()
        if title in SECTIONS:
            blocks += [(title, lang, code) for lang, code in re.findall(r"```(\w+)\n(.*?)```", part, flags=re.S)]
    return blocks


def readme_commands() -> list[str]:
    """Shell commands (comments stripped) from the bash blocks of those sections, plus inline lm_eval calls."""
    cmds = []
    for _, lang, code in section_blocks():
        if lang != "bash":
            continue
        for line in code.replace("\\\n", " ").splitlines():  # join continued lines
            line = line.split(" #", 1)[0].strip()
            if line:
                cmds.append(" ".join(line.split()))
    text = README.read_text()
    cmds += re.findall(r"`(lm_eval [^`]+)`", text)
    return cmds


def readme_python() -> list[str]:
    return [code for _, lang, code in section_blocks() if lang == "python"]


def _kind(cmd: str) -> str:
    if cmd.startswith("lm_eval"):
        return "lm_eval"
    return shlex.split(cmd)[1].removesuffix(".py")  # python <script>.py ...


def test_every_readme_command_is_covered():
    cmds = readme_commands()
    assert len(cmds) >= 12, cmds  # the sections were found and parsed
    kinds = {_kind(c) for c in cmds}
    assert kinds <= {"train", "evaluate", "generate", "export", "lm_eval"}, kinds
    assert len(readme_python()) >= 1


def _wikitext_overrides(wikitext_dir: Path, args: list[str]) -> list[str]:
    """Point the command's data at the local WikiText text, as a user without the hub would."""
    if any(a.startswith("data.train_path=") for a in args):
        return []  # the command names its files (the README's wikitext-2-raw/ copy)
    data = next((a.split("=", 1)[1] for a in args if a.startswith("data=")), None)
    if data in ("wikitext103", "wikitext2"):
        files = {"train": "wiki.valid.raw", "validation": "wiki.test.raw", "test": "wiki.test.raw"}
        spec = ",".join(f"{k}:{wikitext_dir / v}" for k, v in files.items())
        return ["data.dataset_path=text", f"+data.data_files={{{spec}}}"]
    if data == "files":
        return []  # the README's own train.txt / valid.txt, which the test wrote from WikiText
    return ["data=files", f"data.train_path={wikitext_dir / 'wiki.valid.raw'}",
            f"data.validation_path={wikitext_dir / 'wiki.test.raw'}", f"data.test_path={wikitext_dir / 'wiki.test.raw'}",
            "data.vocab_size=512"]


class Runner:
    """Runs README commands in a scratch project directory (HYENA_RTF_ROOT) and records outputs."""

    def __init__(self, cwd: Path, wikitext_dir: Path):
        self.cwd, self.wikitext_dir = cwd, wikitext_dir
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "HYENA_RTF_ROOT": str(cwd), "HF_MODULES_CACHE": str(cwd / ".hf_modules")}

    def newest_run(self) -> Path:
        runs = sorted((self.cwd / "logs" / "train" / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
        return runs[-1]

    def resolve(self, cmd: str) -> list[str]:
        # <run> is the quickstart run (a 512-token BPE vocabulary keeps scoring the whole split cheap).
        if "<run>" in cmd:
            cmd = cmd.replace("logs/train/runs/<run>", str(self.base_run.relative_to(self.cwd)))
        if "ckpt_path=..." in cmd:
            cmd = cmd.replace("ckpt_path=...", f"ckpt_path={self.base_run / 'checkpoints' / 'best.ckpt'}")
        return shlex.split(cmd)

    def run(self, cmd: str, extra: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
        args = self.resolve(cmd)
        if args[0] == "python":
            args = [sys.executable, str(ROOT / args[1]), *args[2:]]
        proc = subprocess.run([*args, *extra], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert proc.returncode == 0, (cmd, extra, proc.stdout[-2000:], proc.stderr[-4000:])
        return proc


SYNTHETIC = ("copying", "associative_recall")


def _train_extra(cmd: str, wikitext_dir: Path) -> list[str]:
    args = shlex.split(cmd)[2:]
    if any(a in (f"data={t}" for t in SYNTHETIC) for a in args):
        # Generated tasks: no text to point at, and sizes in sequences rather than seq_len.
        tiny = [t for t in TINY if not t.startswith("data.seq_len")]
        return [*tiny, "data.train_size=64", "data.eval_size=16"]
    extra = [*TINY, *_wikitext_overrides(wikitext_dir, args)]
    if any(a.startswith("experiment=wt103") for a in args):
        # The paper recipes: 8 GPUs, DDP, bf16, 125M. Same recipe on one CPU process at tiny size.
        extra += ["trainer.devices=1", "trainer.strategy=auto", "trainer.accumulate_grad_batches=1"]
    return extra


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path, wikitext_dir):
    cmds = readme_commands()
    runner = Runner(tmp_path, wikitext_dir)
    # The README's data=files example names train.txt and valid.txt: give it real WikiText text.
    shutil.copy(wikitext_dir / "wiki.valid.raw", tmp_path / "train.txt")
    shutil.copy(wikitext_dir / "wiki.test.raw", tmp_path / "valid.txt")
    shutil.copy(wikitext_dir / "wiki.test.raw", tmp_path / "wiki.test.raw")
    (tmp_path / "wikitext-2-raw").symlink_to(wikitext_dir)  # the lm-eval example's local copy
    (tmp_path / "lm_eval_tasks").symlink_to(ROOT / "lm_eval_tasks")

    order = ["train", "export", "evaluate", "generate"]
    by_kind = {k: [c for c in cmds if _kind(c) == k] for k in [*order, "lm_eval"]}
    first, resume = by_kind["train"][0], "python train.py ckpt_path=last"
    assert first == "python train.py" and resume in by_kind["train"]
    for cmd in by_kind["train"]:
        if cmd == resume:
            continue
        runner.run(cmd, _train_extra(cmd, wikitext_dir))
        if cmd == first:  # resume the run just made, with the options it was made with, for more steps
            runner.base_run = runner.newest_run()
            runner.run(resume, [*_train_extra(first, wikitext_dir), "trainer.max_steps=6"])
    assert (runner.base_run / "checkpoints" / "last.ckpt").is_file()
    for cmd in by_kind["export"]:
        runner.run(cmd, [])
    assert (tmp_path / "hf_export" / "config.json").is_file()
    for cmd in by_kind["evaluate"]:
        args = shlex.split(cmd)
        data = _wikitext_overrides(wikitext_dir, args)
        if not any(a.startswith("data=") for a in args):  # evaluate needs only the split it scores
            data = ["data=files", f"data.test_path={wikitext_dir / 'wiki.test.raw'}"]
        proc = runner.run(cmd, [*data, "progress=false", "overwrite=true"])
        assert "ppl" in proc.stdout.lower(), proc.stdout[-2000:]
    for cmd in by_kind["generate"]:
        proc = runner.run(cmd, ["max_new_tokens=8"])
        assert proc.stdout.strip(), cmd

    # The Python snippets, with the export made above; generate must equal greedy parallel decoding.
    for code in readme_python():
        if "hf_export" not in code and "RTF(" not in code:
            continue
        script = code + _CHECKS.get("hf_export" if "hf_export" in code else "filter", "")
        proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=runner.env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, (code, proc.stderr[-4000:])

    for cmd in by_kind["lm_eval"]:
        limit = ["--limit", "3"] if "--limit" not in cmd else []
        proc = runner.run(cmd.replace("lm_eval", f"{shlex.quote(sys.executable)} -m lm_eval", 1), limit)
        assert "word_perplexity" in proc.stdout + proc.stderr, proc.stdout[-2000:]


_CHECKS = {
    # Appended to the README's Hugging Face snippet: its generate must be greedy-exact.
    "hf_export": """
import torch as _t
_ids = tok("The", return_tensors="pt").input_ids
_g = model.generate(_ids, max_new_tokens=10, min_new_tokens=10, do_sample=False)
_seq = _ids
for _ in range(10):
    _seq = _t.cat([_seq, model(_seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
assert _t.equal(_g, _seq), (_g, _seq)
""",
    # Appended to the filter snippet: the parallel, prefill and step outputs agree with lfilter.
    "filter": """
import numpy as _np
_x = u.double().numpy()
_ref = _np.stack([scipy.signal.lfilter(num[i].double().numpy(), den[i].double().numpy(), _x[:, :, i], axis=1)
                  for i in range(64)], -1)
_y = torch.cat([y_pre, y_t[:, None]], 1).detach().double().numpy()
assert _np.abs(_y - _ref[:, :1001]).max() / _np.abs(_ref).max() < 1e-3
assert (y[:, :1000] - y_pre).abs().max() < 1e-3
""",
}
