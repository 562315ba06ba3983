"""The README is a contract: every command of its Train, Evaluate, Generate, Distil and Hugging
Face sections runs here, as written, through the entry points (in this process, see
``helpers.cli``), and what each prints or writes is checked against an independent computation.

Commands are read from the README itself, so a command added there without a way to run it here
fails ``test_every_readme_command_is_covered``. Each command keeps its own arguments; the test
only appends overrides that shrink it (a tiny model, a few steps), points the WikiText commands at
the WikiText copy in ``../shared`` (the hub is unreachable here) and replaces the placeholders
(``<run>``, ``...``, ``train.txt``/``valid.txt``) with runs and files it made. The quickstart
(``python train.py``) trains on its default corpus, Shakespeare.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from helpers import ROOT, argmax_loop, check_printed_eval, cli, reference_nll, sample_loop, text_counts

README = ROOT / "README.md"
SECTIONS = ("Train", "Evaluate", "Generate", "Distil an implicit-filter Hyena into RTFs", "Hugging Face and lm-eval",
            "Use the filter and the operator directly")

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
    "trainer.log_every_n_steps=1",
    "++trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "++callbacks.sample_generation.max_new_tokens=8",
]
SHRINK = ("data.batch_size", "trainer.max_steps")  # applied even where the command sets them


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
    assert len(cmds) >= 15, cmds  # the sections were found and parsed
    kinds = {_kind(c) for c in cmds}
    assert kinds == {"train", "evaluate", "generate", "export", "distill", "lm_eval"}, kinds
    assert len(readme_python()) >= 2


EXPERIMENT_MIXER = {"wt103_hyena_rtf": "hyena_rtf", "wt103_hyena_rtf_paper": "hyena_rtf", "wt103_hyena": "hyena",
                    "wt103_transformer": "attention"}


def _option(args: list[str], key: str, default=None):
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"{key}=")), default)


class Readme:
    """Runs README commands in a scratch project directory and keeps what the checks need."""

    def __init__(self, cwd: Path, wikitext_dir: Path, token_cache: Path):
        self.cwd, self.wikitext_dir, self.token_cache = cwd, wikitext_dir, token_cache
        # The README's local files, made of real WikiText text: the first articles of each file
        # keep tokenising, training and whole-split scoring short.
        lines = {n: (wikitext_dir / n).read_text(encoding="utf-8").splitlines(keepends=True)
                 for n in ("wiki.valid.raw", "wiki.test.raw")}
        (cwd / "wikitext-2-raw").mkdir()  # the README's local WikiText-2 copy
        (cwd / "wikitext-2-raw" / "wiki.valid.raw").write_text("".join(lines["wiki.valid.raw"][:1500]), encoding="utf-8")
        (cwd / "wikitext-2-raw" / "wiki.test.raw").write_text("".join(lines["wiki.test.raw"][:400]), encoding="utf-8")
        (cwd / "train.txt").write_text("".join(lines["wiki.valid.raw"][:1500]), encoding="utf-8")
        (cwd / "valid.txt").write_text("".join(lines["wiki.test.raw"][:300]), encoding="utf-8")
        (cwd / "wiki.test.raw").write_text("".join(lines["wiki.test.raw"][:200]), encoding="utf-8")
        (cwd / "lm_eval_tasks").symlink_to(ROOT / "lm_eval_tasks")
        self.base_run: Path | None = None  # the quickstart run that <run> stands for
        self.teacher: Path | None = None  # a mixer=hyena run of the sweep, for the distillation commands

    def args(self, cmd: str) -> list[str]:
        """The command's arguments with placeholders replaced."""
        if "<mixer=hyena run>" in cmd:
            cmd = cmd.replace("logs/train/runs/<mixer=hyena run>", str(self.teacher.relative_to(self.cwd)))
        if _kind(cmd) == "distill":
            cmd = cmd.replace("<run>", str(self.teacher.relative_to(self.cwd))).replace("data.test_path=...", "data.test_path=wiki.test.raw")
        if "<run>" in cmd:
            cmd = cmd.replace("logs/train/runs/<run>", str(self.base_run.relative_to(self.cwd)))
        if "ckpt_path=..." in cmd:
            cmd = cmd.replace("ckpt_path=...", f"ckpt_path={self.base_run / 'checkpoints' / 'best.ckpt'}")
        return shlex.split(cmd)[1:]

    def run(self, cmd: str, extra: list[str]) -> str:
        args = self.args(cmd)
        proc = cli(args[0], *args[1:], *extra, cwd=self.cwd)
        assert proc.returncode == 0, (cmd, extra, proc.stdout[-2000:], proc.stderr[-4000:])
        return proc.stdout

    def wikitext(self, args: list[str]) -> list[str]:
        """data=wikitext103/wikitext2 read from the local WikiText text, as a user without the hub would."""
        wikitext = _option(args, "data") in ("wikitext103", "wikitext2") or _option(args, "experiment", "").startswith("wt103")
        if not wikitext:
            return []
        files = {"train": self.cwd / "train.txt", "validation": self.cwd / "valid.txt",
                 "test": self.cwd / "wiki.test.raw"}
        spec = ",".join(f"{k}:{v}" for k, v in files.items())
        return ["data.dataset_path=text", f"+data.data_files={{{spec}}}"]

    def train_extra(self, cmd: str) -> list[str]:
        args = self.args(cmd)
        given = {a.split("=", 1)[0] for a in args}
        tiny = [t for t in TINY if t.split("=", 1)[0].lstrip("+") not in given or t.startswith(SHRINK)]
        if _option(args, "data") in ("copying", "associative_recall"):  # sizes in sequences, not seq_len
            tiny = [t for t in tiny if not t.startswith("data.seq_len")] + ["data.train_size=64", "data.eval_size=16"]
        extra = [*tiny, *self.wikitext(args), f"paths.data_dir={self.token_cache}"]
        if any(a.startswith("experiment=wt103") for a in args):
            # The paper recipes: 8 GPUs, DDP, bf16, 125M. Same recipe on one CPU process at tiny size.
            extra += ["trainer.devices=1", "trainer.strategy=auto", "trainer.accumulate_grad_batches=1"]
        return extra


def runs(cwd: Path, kind: str = "runs") -> list[Path]:
    return sorted((cwd / "logs" / "train" / kind).glob("*"), key=lambda p: p.stat().st_mtime)


def ckpt(path: Path) -> dict:
    from hyena_rtf.checkpoints.loading import load_checkpoint_dict

    return load_checkpoint_dict(path)


def csv_losses(run: Path) -> dict[int, float]:
    import csv

    with open(run / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def csv_steps(run: Path, key: str) -> list[int]:
    import csv

    with open(run / "csv" / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get(key)]


@pytest.mark.slow
@pytest.mark.timeout(600)  # 15 tiny trainings and whole-split evaluations
def test_readme_commands_run_as_written(tmp_path, wikitext_dir, token_cache):
    from hyena_rtf.checkpoints.loading import load_for_inference
    from hyena_rtf.data.corpus import load_corpus

    cmds = readme_commands()
    by_kind = {k: [c for c in cmds if _kind(c) == k] for k in ("train", "export", "evaluate", "generate", "distill", "lm_eval")}
    readme = Readme(tmp_path, wikitext_dir, token_cache)

    # ---- Train. The quickstart first, on its default corpus; then its resumption.
    first, resume = by_kind["train"][0], "python train.py ckpt_path=last"
    assert first == "python train.py" and resume in by_kind["train"]
    out = readme.run(first, readme.train_extra(first))
    (readme.base_run,) = runs(tmp_path)
    assert re.search(r"val ppl\s+: [0-9.]+ +\(unigram ppl of the same tokenizer on the same split: [0-9.]+\)", out), out
    assert "test/ppl" in out and "sample         : 'KING" in out  # the Shakespeare data config: a test split, its prompts
    assert ckpt(readme.base_run / "checkpoints" / "last.ckpt")["datamodule_hyper_parameters"]["corpus"] == "shakespeare"
    readme.run(resume, [*readme.train_extra(first), "trainer.max_steps=6"])
    resumed = runs(tmp_path)[-1]
    assert resumed != readme.base_run and csv_steps(resumed, "train/loss") == [4, 5]  # continued, not restarted
    assert ckpt(resumed / "checkpoints" / "last.ckpt")["global_step"] == 6

    for cmd in by_kind["train"]:
        if cmd in (first, resume):
            continue
        before = set(runs(tmp_path)) | set(runs(tmp_path, "multiruns"))
        args = readme.args(cmd)
        extra = readme.train_extra(first if _option(args, "init_from") else cmd)  # + the options that built it
        out = readme.run(cmd, extra)
        if "-m" in args:  # the sweep: one run per combination, each with its own seed and model
            (sweep,) = set(runs(tmp_path, "multiruns")) - before
            jobs = sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: int(p.name))
            seeds = _option(args, "seed").split(",")
            models = _option(args, "model").split(",")
            assert len(jobs) == len(seeds) * len(models)
            made = set()
            for job in jobs:
                overrides = (job / ".hydra" / "overrides.yaml").read_text()
                seed, model = re.search(r"seed=(\d+)", overrides).group(1), re.search(r"model=(\w+)", overrides).group(1)
                state = ckpt(job / "checkpoints" / "last.ckpt")
                assert state["global_step"] == 4 and state["hyper_parameters"]["model"]["mixer"] == model.rsplit("_", 1)[0]
                made.add((seed, model))
                if model == "hyena_small" and readme.teacher is None:
                    readme.teacher = job
            assert made == {(s, m) for s in seeds for m in models}
            a, b = (ckpt(j / "checkpoints" / "last.ckpt")["state_dict"] for j in jobs[:2])
            assert any(not torch.equal(a[k], b[k]) for k in a)  # the combinations are different runs
            continue
        (run,) = set(runs(tmp_path)) - before
        state = ckpt(run / "checkpoints" / "last.ckpt")
        assert state["global_step"] == 4, cmd
        model = _option(args, "model")
        mixer = model.rsplit("_", 1)[0] if model else EXPERIMENT_MIXER.get(_option(args, "experiment"), "hyena_rtf")
        assert state["hyper_parameters"]["model"]["mixer"] == mixer, cmd
        if _option(args, "experiment", "").startswith("wt103"):
            data = state["datamodule_hyper_parameters"]
            assert (data["corpus"], data["tokenizer"]) == ("wikitext103", "gpt2"), cmd
        if _option(args, "data") in ("copying", "associative_recall"):
            assert "val/acc" in out and "test/exact" in out, cmd
        elif _option(args, "data") == "files":
            assert Path(state["datamodule_hyper_parameters"]["train_path"]).name == "train.txt"
        if _option(args, "init_from"):  # a new run from the quickstart's weights: its first loss is theirs
            assert f"starting from the weights of {_option(args, 'init_from')}" in out
            first_loss = {r: csv_losses(r)[0] for r in (readme.base_run, run)}
            assert first_loss[run] < first_loss[readme.base_run] - 0.01, first_loss
    assert readme.teacher is not None

    # ---- Export, then the Hugging Face snippet on it.
    for cmd in by_kind["export"]:
        readme.run(cmd, [])
    assert (tmp_path / "hf_export" / "config.json").is_file()

    # ---- Evaluate: the printed numbers are those of an independent computation on the same tokens.
    for cmd in by_kind["evaluate"]:  # (<run> is the quickstart's run in every command)
        args = readme.args(cmd)
        out = readme.run(cmd, [*readme.wikitext(args), "progress=false", "overwrite=true"])
        model, tok = load_for_inference(tmp_path / _option(args, "ckpt_path"))
        data = _option(args, "data")
        if data == "files":
            text = (tmp_path / _option(args, "data.test_path")).read_text(encoding="utf-8")
        elif data in ("wikitext103", "wikitext2"):  # the local text as the datasets "text" builder reads it
            text = load_corpus(data, dataset_path="text", data_files={"test": str(tmp_path / "wiki.test.raw")}).text("test")
        else:  # the default data config: Shakespeare's test plays
            text = load_corpus("shakespeare").text("test")
        ids = Tokenizer.from_str(tok.backend_tokenizer.to_str()).encode(text, add_special_tokens=False).ids
        stride, context = _option(args, "stride"), _option(args, "context")
        context = int(context) if context else model.config.max_position_embeddings
        nll, count = reference_nll(model, ids, context, int(stride) if stride else None)
        check_printed_eval(out, nll, count, *text_counts(text))

    # ---- Generate: greedy text equals an argmax loop; sampled text equals a sampling loop from the same seed.
    for cmd in by_kind["generate"]:
        if "distilled/" in cmd:
            continue  # after distillation below
        _check_generate(readme, cmd)

    # ---- Distil the sweep's implicit-filter run, then decode the student recurrently.
    for cmd in by_kind["distill"]:
        args = readme.args(cmd)
        out = readme.run(cmd, ["max_steps=50", "hankel_taps=160", "progress=false"])  # 160 taps: enough for order 64
        assert re.search(r"^test ppl: teacher [0-9.]+, student [0-9.]+", out, re.M), out
        assert "distillation took" in out
        if _option(args, "out_dir"):
            report = json.loads((tmp_path / _option(args, "out_dir") / "checkpoints" / "distill.json").read_text())
            assert report["state_size"] == int(_option(args, "state_size")) and report["max_pole_radius"] < 1
    assert len(list((tmp_path / "logs" / "distill" / "runs").glob("*/checkpoints/last.ckpt"))) == 1
    for cmd in by_kind["generate"]:
        if "distilled/" in cmd:
            _check_generate(readme, cmd)

    # ---- The Python snippets, as written, plus checks appended to them.
    for code in readme_python():
        script = code + _CHECKS["hf_export" if "hf_export" in code else "filter"]
        with _in(tmp_path):
            exec(compile(script, "README.md", "exec"), {"__name__": "__readme__"})  # noqa: S102

    # ---- lm_eval on the export, with the shipped local task.
    for cmd in by_kind["lm_eval"]:
        limit = ["--limit", "3"] if "--limit" not in cmd else []
        out = io.StringIO()
        argv = sys.argv
        sys.argv = ["lm_eval", *shlex.split(cmd)[1:], *limit]
        try:
            with _in(tmp_path), contextlib.redirect_stdout(out):
                runpy.run_module("lm_eval", run_name="__main__")
        finally:
            sys.argv = argv
        assert re.search(r"wikitext_local.*word_perplexity", out.getvalue().replace("\n", " ")), out.getvalue()[-2000:]


def _check_generate(readme: Readme, cmd: str) -> None:
    from hyena_rtf.checkpoints.loading import load_for_inference

    args = readme.args(cmd)
    sampled = _option(args, "do_sample", "true") == "true"
    n = int(_option(args, "max_new_tokens", "8"))
    extra = ["seed=5", "max_new_tokens=8"] if sampled else []
    out = readme.run(cmd, extra)
    if sampled:  # generate.py seeds, builds the model from the checkpoint, then samples: so does the reference
        torch.manual_seed(5)
    model, tok = load_for_inference(readme.cwd / _option(args, "ckpt_path"))
    prompt = torch.tensor([tok(_option(args, "prompt")).input_ids])
    if sampled:
        seq = sample_loop(model, prompt, 8, temperature=0.8, top_k=50, eos=tok.eos_token_id)
    else:
        seq = argmax_loop(model, prompt, n)
    assert out.strip() == tok.decode(seq[0], skip_special_tokens=True).strip(), cmd


@contextlib.contextmanager
def _in(path: Path):
    saved = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(saved)


_CHECKS = {
    # Appended to the README's Hugging Face snippet: its generate must be greedy-exact.
    "hf_export": """
import torch as _t
assert out.shape[1] > 1
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
