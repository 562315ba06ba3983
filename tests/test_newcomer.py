"""The newcomer path through the real command lines on real WikiText text (tiny models, CPU).

Each test runs ``train.py``/``evaluate.py``/``export.py`` as a user would and checks what the user
sees: errors before any data work, a README-style run without a test split, clean logs, prompts
that fit the data, one step convention for metrics and checkpoints, and exports that load quietly.
"""

from __future__ import annotations

import csv
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT
from test_cli_errors import assert_one_line_error

TINY = [
    "model=hyena_rtf_tiny", "model.hidden_size=32", "model.intermediate_size=64",
    "model.max_position_embeddings=32", "model.state_size=4", "model.output_rank=null",
]  # fmt: skip


def cli(script: str, *args: str, cwd: Path, env_extra: dict | None = None, drop: tuple = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HYENA_RTF_ROOT": str(cwd), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    for key in ("HYENA_RTF_DEBUG", *drop):
        env.pop(key, None)
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=lambda: os.umask(0o022))


def files_data(wikitext_dir: Path, *, test: bool = False, validation: bool = True) -> list[str]:
    args = ["data=files", f"data.train_path={wikitext_dir / 'wiki.valid.raw'}", "data.vocab_size=300",
            "data.seq_len=32", "data.batch_size=4"]
    if validation:
        args.append(f"data.validation_path={wikitext_dir / 'wiki.test.raw'}")
    if test:
        args.append(f"data.test_path={wikitext_dir / 'wiki.test.raw'}")
    return args


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


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_errors_come_before_any_data_work(case, tmp_path, wikitext_dir):
    make_args, needles = CONFIG_ERRORS[case]
    proc = cli("train.py", *make_args(wikitext_dir), "trainer.max_steps=2", cwd=tmp_path)
    line = assert_one_line_error(proc, *needles)
    assert no_cache(tmp_path), "the error came after tokenising"
    # The error is in the run's log file too, not only on the console.
    assert line in (run_dir(tmp_path) / "train.log").read_text()


# ---------------------------------------------------------------------------------------------
# One README-style run, then evaluate and export it


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory, wikitext_dir):
    """``train.py data=files data.train_path=... data.validation_path=...`` (no test split),
    validation every 3 steps with the default number of validation batches."""
    cwd = tmp_path_factory.mktemp("readme")
    proc = cli("train.py", *files_data(wikitext_dir), *TINY, "trainer.max_steps=6", "trainer.val_check_interval=3",
               "trainer.log_every_n_steps=1", "callbacks.sample_generation.max_new_tokens=6", cwd=cwd)
    return cwd, proc


@pytest.mark.slow
def test_readme_run_without_test_split_finishes(readme_run):
    cwd, proc = readme_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "no test split" in out and "skipping the final test" in out
    assert "run dir" in proc.stdout and "val ppl" in proc.stdout  # the final summary printed
    assert "test/ppl" not in proc.stdout


@pytest.mark.slow
def test_readme_run_output_is_clean(readme_run):
    cwd, proc = readme_run
    out = proc.stdout + proc.stderr
    # Lightning lines print once (no bare "INFO: " copy beside the timestamped one).
    assert not [line for line in proc.stderr.splitlines() if line.startswith("INFO: ")]
    assert out.count("GPU available:") == 1
    assert "FLOPs" not in out and "Flops" not in out
    assert "LeafSpec" not in out and "Tip:" not in out
    assert "model summary" in out


@pytest.mark.slow
def test_samples_use_the_data_configs_prompts(readme_run):
    cwd, proc = readme_run
    text = (run_dir(cwd) / "samples.txt").read_text()
    samples = re.findall(r"^step (\d+): (.{4})", text, flags=re.MULTILINE)  # samples may span lines
    # One sample per validation (steps 3 and 6) from the files config's only prompt.
    assert [step for step, _ in samples] == ["3", "6"], text
    assert all(start == "The " for _, start in samples), text
    assert "KING" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_metric_steps_match_checkpoint_steps_and_validation_is_limited(readme_run):
    cwd, proc = readme_run
    run = run_dir(cwd)
    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val_steps = sorted(int(r["step"]) for r in rows if r.get("val/loss"))
    ckpt_steps = sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("step_*.ckpt"))
    assert val_steps == ckpt_steps == [3, 6]
    radius_steps = sorted(int(r["step"]) for r in rows if r.get("stability/max_pole_radius"))
    assert radius_steps == [3, 6]
    # train/loss of the k-th batch is logged at step k - 1 (the weights after k - 1 updates).
    assert sorted(int(r["step"]) for r in rows if r.get("train/loss")) == list(range(6))
    # The default validation is the first 20 batches, and the summary says so.
    hydra_cfg = (run / ".hydra" / "config.yaml").read_text()
    assert re.search(r"limit_val_batches: 20\b", hydra_cfg)
    assert "first 20 validation batches" in proc.stdout


@pytest.mark.slow
def test_evaluate_without_train_path_writes_into_the_run(readme_run, wikitext_dir, tmp_path):
    cwd, _ = readme_run
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


@pytest.mark.slow
def test_export_loads_quietly_with_normal_modes(readme_run, tmp_path):
    cwd, _ = readme_run
    run = run_dir(cwd)
    out = tmp_path / "hf_export"
    proc = cli("export.py", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"out_dir={out}", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
    text = " = Robert Boulter = \n Robert Boulter is an English film , television and theatre actor ."
    code = (
        "import json, sys\n"
        "from transformers import AutoTokenizer\n"
        f"tok = AutoTokenizer.from_pretrained({str(out)!r}, trust_remote_code=True)\n"
        f"print(json.dumps(tok({text!r})['input_ids']))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    load = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert load.returncode == 0, load.stderr[-2000:]
    assert "custom code" not in load.stdout + load.stderr and "model of type" not in load.stdout + load.stderr
    assert load.stderr.strip() == ""
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(run / "tokenizer" / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    assert json.loads(load.stdout.strip().splitlines()[-1]) == reference


# ---------------------------------------------------------------------------------------------
# logger=none and WikiText-103 without network


@pytest.mark.slow
def test_logger_none_trains(tmp_path, wikitext_dir):
    proc = cli("train.py", *files_data(wikitext_dir), *TINY, "logger=none", "trainer.max_steps=2",
               "trainer.val_check_interval=2", "trainer.limit_val_batches=2",
               "callbacks.sample_generation.max_new_tokens=4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = run_dir(tmp_path)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["offline_env", "unreachable"])
def test_wikitext103_offline_fails_at_once_with_local_alternatives(mode, tmp_path, startup_seconds):
    if mode == "offline_env":
        env, drop = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}, ()
    else:  # no offline flags; the hub endpoint refuses connections
        env, drop = {"HF_ENDPOINT": "http://127.0.0.1:9"}, ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    env["HF_DATASETS_CACHE"] = str(tmp_path / "hf_datasets")
    t0 = time.monotonic()
    proc = cli("train.py", "data=wikitext103", "data.seq_len=128", *TINY[:1], "trainer.max_steps=1", cwd=tmp_path,
               env_extra=env, drop=drop)
    elapsed = time.monotonic() - t0
    assert_one_line_error(proc, "data=files", "data.train_path=")
    assert no_cache(tmp_path)
    # Interpreter start-up and imports aside, the error is immediate (datasets retried for ~24 s).
    assert elapsed - startup_seconds < 10, (elapsed, startup_seconds)


@pytest.fixture(scope="module")
def startup_seconds(tmp_path_factory) -> float:
    """Seconds a train.py run takes to fail in the datamodule constructor, after all imports."""
    t0 = time.monotonic()
    proc = cli("train.py", "data.seq_len=0", cwd=tmp_path_factory.mktemp("startup"))
    assert proc.returncode == 2
    return time.monotonic() - t0


@pytest.mark.slow
def test_resume_with_other_options_is_refused_before_any_data_work(tmp_path, wikitext_dir):
    base = [*TINY, *files_data(wikitext_dir), "trainer.max_steps=2", "trainer.val_check_interval=2",
            "trainer.limit_val_batches=1", "logger=none"]
    first = cli("train.py", *base, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    proc = cli("train.py", *base, "data.vocab_size=400", f"ckpt_path={ckpt}", cwd=tmp_path)
    assert_one_line_error(proc, "data.vocab_size=300", "400", "resume")
    assert "Tokeniz" not in proc.stderr  # refused before the new vocabulary was trained
