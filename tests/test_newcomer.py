"""The newcomer path through the entry points on real WikiText text (tiny models, CPU).

Each test runs ``train.py``/``evaluate.py``/``export.py`` as a user would (in this process, see
``helpers.cli``) and checks what the user sees: errors before any data work, a README-style run
without a test split, clean logs, prompts that fit the data, one step convention for metrics and
checkpoints, and exports that load quietly.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import stat
import time
from pathlib import Path

import pytest

from helpers import TINY, assert_one_line_error, cli, files_data


def no_cache(cwd: Path) -> bool:
    """Nothing was tokenised: the token cache (paths.data_dir = <cwd>/data/cache) was never created."""
    return not (cwd / "data" / "cache").exists()


def run_dir(cwd: Path, task: str = "train") -> Path:
    (run,) = sorted((cwd / "logs" / task / "runs").glob("*"))
    return run


# ---------------------------------------------------------------------------------------------
# Config errors before any data work

def _without(args: list[str], prefix: str) -> list[str]:
    return [a for a in args if not a.startswith(prefix)]


CONFIG_ERRORS = {
    # The README example minus its validation file: stop before tokenising, not at the first validation.
    "no_validation": (lambda w: [*files_data(w, validation=False), *TINY], ["data.validation_path"]),
    # data=files defaults to seq_len 256; hyena_rtf_tiny's l_max is 128.
    "seq_len": (lambda w: [*_without(files_data(w), "data.seq_len"), "model=hyena_rtf_tiny"],
                ["data.seq_len=256", "model.max_position_embeddings=128"]),
    "gpt2_vocab": (lambda w: [*_without(files_data(w), "data.vocab_size"), *TINY, "data.tokenizer=gpt2",
                              "data.vocab_size=4096"], ["data.vocab_size=4096", "gpt2"]),
    "model_typo": (lambda w: [*files_data(w), *TINY, "+model.hiden_size=8"], ["model.hiden_size", "model.hidden_size"]),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_errors_come_before_any_data_work(case, tmp_path, wikitext_dir):
    make_args, needles = CONFIG_ERRORS[case]
    proc = cli("train.py", *make_args(wikitext_dir), "trainer.max_steps=2", cwd=tmp_path)
    line = assert_one_line_error(proc, *needles)
    assert no_cache(tmp_path), "the error came after tokenising"
    # The error is in the run's log file too, not only on the console.
    assert line in (run_dir(tmp_path) / "train.log").read_text()


# ---------------------------------------------------------------------------------------------
# The session's README-style run (conftest.trained_run), then evaluate and export it


def test_readme_run_without_test_split_finishes(trained_run):
    out = trained_run.stdout + trained_run.stderr
    assert "no test split" in out and "skipping the final test" in out
    assert "run dir" in trained_run.stdout and "val ppl" in trained_run.stdout  # the final summary printed
    assert "test/ppl" not in trained_run.stdout


def test_readme_run_output_is_clean(trained_run):
    out = trained_run.stdout + trained_run.stderr
    # Lightning lines print once (no bare "INFO: " copy beside the timestamped one).
    assert not [line for line in trained_run.stderr.splitlines() if line.startswith("INFO: ")]
    assert out.count("GPU available:") == 1
    assert "FLOPs" not in out and "Flops" not in out
    assert "LeafSpec" not in out and "Tip:" not in out
    assert "model summary" in out


def test_samples_use_the_data_configs_prompts(trained_run):
    text = (trained_run.run / "samples.txt").read_text()
    samples = re.findall(r"^step (\d+): (.{4})", text, flags=re.MULTILINE)  # samples may span lines
    # One sample per validation (steps 10, 20, 30) from the files config's only prompt.
    assert [step for step, _ in samples] == ["10", "20", "30"], text
    assert all(start == "The " for _, start in samples), text
    assert "KING" not in trained_run.stdout + trained_run.stderr


def test_metric_steps_match_checkpoint_steps_and_validation_is_limited(trained_run):
    run = trained_run.run
    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val_steps = sorted(int(r["step"]) for r in rows if r.get("val/loss"))
    ckpt_steps = sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("step_*.ckpt"))
    assert val_steps == ckpt_steps == [10, 20, 30]
    radius_steps = sorted(int(r["step"]) for r in rows if r.get("stability/max_pole_radius"))
    assert radius_steps == [10, 20, 30]
    # train/loss of the k-th batch is logged at step k - 1 (the weights after k - 1 updates).
    assert sorted(int(r["step"]) for r in rows if r.get("train/loss")) == list(range(30))
    # The default validation is the first 20 batches, and the summary says so.
    hydra_cfg = (run / ".hydra" / "config.yaml").read_text()
    assert re.search(r"limit_val_batches: 20\b", hydra_cfg)
    assert "first 20 validation batches" in trained_run.stdout


def test_evaluate_without_train_path_writes_into_the_run(trained_run, wikitext_dir, tmp_path):
    cwd = tmp_path / "project"
    shutil.copytree(trained_run.cwd, cwd)  # evaluate writes into the run
    run = run_dir(cwd)
    # A short real WikiText test file keeps the whole-split scoring quick.
    lines = (wikitext_dir / "wiki.test.raw").read_text(encoding="utf-8").splitlines(keepends=True)[:60]
    small = tmp_path / "wiki.test.small.raw"
    small.write_text("".join(lines), encoding="utf-8")
    proc = cli("evaluate.py", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "data=files",
               f"data.test_path={small}", "progress=false", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run / "eval_test_last.json").read_text())
    # The whole split is scored: every token after the first, counted with the run's tokenizer.
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(run / "tokenizer"))
    n = len(tok.backend_tokenizer.encode("".join(lines), add_special_tokens=False).ids)
    assert result["tokens_scored"] == n - 1
    assert not (cwd / "logs" / "eval").exists() or not list((cwd / "logs" / "eval").rglob("*.json"))
    # Asked again, it refuses before scoring anything.
    again = cli("evaluate.py", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "data=files",
                f"data.test_path={small}", cwd=cwd)
    assert_one_line_error(again, "exists", "overwrite=true")
    assert "evaluating" not in again.stderr


ROBERT = " = Robert Boulter = \n Robert Boulter is an English film , television and theatre actor ."


def test_export_writes_world_readable_files_with_the_runs_tokenizer(trained_run, tmp_path):
    """(That a fresh interpreter without this package loads it quietly: test_entrypoints.)"""
    exported = tmp_path / "hf_export"
    proc = cli("export.py", f"ckpt_path={trained_run.last}", f"out_dir={exported}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for path in exported.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    reference = Tokenizer.from_file(str(trained_run.run / "tokenizer" / "tokenizer.json")).encode(ROBERT, add_special_tokens=False).ids
    assert AutoTokenizer.from_pretrained(str(exported), trust_remote_code=True)(ROBERT)["input_ids"] == reference


# ---------------------------------------------------------------------------------------------
# logger=none and WikiText-103 without network


def test_logger_none_trains(tmp_path, wikitext_dir, token_cache):
    proc = cli("train.py", *files_data(wikitext_dir), *TINY, "logger=none", "trainer.max_steps=2",
               "trainer.val_check_interval=2", "trainer.limit_val_batches=2",
               "callbacks.sample_generation.max_new_tokens=4", f"paths.data_dir={token_cache}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = run_dir(tmp_path)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "csv").exists()


@pytest.mark.parametrize("mode", ["offline_env", "unreachable"])
def test_wikitext103_offline_fails_at_once_with_local_alternatives(mode, tmp_path):
    if mode == "offline_env":
        env, drop = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}, ()
    else:  # no offline flags; the hub endpoint refuses connections
        env, drop = {"HF_ENDPOINT": "http://127.0.0.1:9"}, ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    env["HF_DATASETS_CACHE"] = str(tmp_path / "hf_datasets")
    t0 = time.monotonic()
    proc = cli("train.py", "data=wikitext103", "data.seq_len=128", *TINY[:1], "trainer.max_steps=1", cwd=tmp_path,
               env=env, drop=drop)
    elapsed = time.monotonic() - t0
    assert_one_line_error(proc, "data=files", "data.train_path=")
    assert no_cache(tmp_path)
    # The error is immediate (datasets alone retried for ~24 s); the imports are already done here.
    assert elapsed < 10, elapsed


def test_resume_with_other_options_is_refused_before_any_data_work(trained_run, tmp_path, token_cache):
    args = [a for a in trained_run.args if not a.startswith("data.vocab_size=")]
    proc = cli("train.py", *args, "data.vocab_size=400", f"ckpt_path={trained_run.last}", cwd=tmp_path)
    assert_one_line_error(proc, "data.vocab_size=300", "400", "resume")
    assert "Tokeniz" not in proc.stderr  # refused before the new vocabulary was trained
    assert not [p for p in token_cache.iterdir() if "bpe400" in p.name]
