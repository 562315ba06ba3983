"""Shared fixtures and the tier rule.

Tiers: every test is in the fast tier (``make test``) unless it is marked ``slow``; the slow tier
(``make test-slow``, CI) holds the end-to-end tests. A test that starts a Python process (an
entry point, lm_eval, an isolated interpreter, DDP workers) is slow by definition: in the fast
tier the fixture below fails it with the fix. The fast tier runs entry points in this process
(``helpers.cli``) and shares one token cache and one tiny trained run per session.
"""

from __future__ import annotations

import logging
import multiprocessing.util
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Idle OpenMP threads that spin stall every parallel region when the 2 cores are shared with other
# processes (subprocess tests, a busy CI host); sleeping waiters cost nothing when they are not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HYENA_RTF_SHARED", ROOT.parent / "shared"))

# The hub is unreachable where the tests run; make every HF library fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Remote code of exported models (trust_remote_code) is copied here, not into the user's cache.
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="hyena_rtf_hf_modules_"))

from helpers import TINY, WIKI_VOCAB, cli, files_data  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _logger_levels():
    """Logger levels a test sets (the benchmarks quieten Lightning) do not leak into later tests,
    whose in-process entry points must log what a fresh interpreter logs. Loggers the test created
    go back to NOTSET, the level logging gives a new logger."""
    manager = logging.root.manager
    levels = {name: lg.level for name, lg in manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    yield
    for name, lg in list(manager.loggerDict.items()):
        if isinstance(lg, logging.Logger):
            lg.setLevel(levels.get(name, logging.NOTSET))


# ---------------------------------------------------------------------------------------------
# The tier rule


def _starts_python(args) -> bool:
    first = args if isinstance(args, (str, bytes, os.PathLike)) else (list(args)[:1] or [""])[0]
    first = os.fsdecode(first).split()[0] if os.fsdecode(first).strip() else ""
    name = os.path.basename(first)
    return (name.startswith("python") or name in ("lm_eval", "torchrun")
            or os.path.realpath(first) == os.path.realpath(sys.executable))


@pytest.fixture(autouse=True)
def _fast_tier_stays_in_process(request, monkeypatch):
    """Fail a fast-tier test that starts a Python process (interpreter start-up and imports cost
    5-8 s each on 2 cores): run the entry point with ``helpers.cli`` or mark the test slow."""
    if request.node.get_closest_marker("slow"):
        return

    def refuse(what):
        pytest.fail(f"{request.node.nodeid} starts a Python process ({what}) in the fast tier: run entry points "
                    "in-process with helpers.cli, or mark the test @pytest.mark.slow", pytrace=False)

    real_init = subprocess.Popen.__init__

    def popen_init(self, args, *a, **kw):
        if _starts_python(args):
            refuse(repr(args)[:120])
        return real_init(self, args, *a, **kw)

    def spawn(path, args, passfds):  # multiprocessing's spawn/forkserver start (DDP workers)
        refuse(f"multiprocessing {os.path.basename(os.fsdecode(path))}")

    monkeypatch.setattr(subprocess.Popen, "__init__", popen_init)
    monkeypatch.setattr(multiprocessing.util, "spawnv_passfds", spawn)


# ---------------------------------------------------------------------------------------------
# Shared data


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED}; set HYENA_RTF_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def wikitext_dir(shared_dir) -> Path:
    return shared_dir / "data" / "wikitext-2-raw"


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory) -> Path:
    """One token cache for the session (``paths.data_dir``): each corpus/tokenizer pair is
    tokenised once, whichever test needs it first."""
    return tmp_path_factory.mktemp("token_cache")


@pytest.fixture(scope="session")
def wiki_tokenizer(wikitext_dir, token_cache):
    """The session's WikiText tokenizer: byte-level BPE (WIKI_VOCAB tokens) trained on the WikiText
    validation text, the one ``files_data`` runs (and ``trained_run``) use, from the token cache."""
    from hyena_rtf.data.corpus import load_corpus
    from hyena_rtf.data.token_cache import prepare_cache
    from hyena_rtf.data.tokenization import load_tokenizer

    corpus = load_corpus("files", train_path=str(wikitext_dir / "wiki.valid.raw"),
                         validation_path=str(wikitext_dir / "wiki.test.raw"))
    return load_tokenizer(prepare_cache(corpus, token_cache, "bpe", WIKI_VOCAB, splits=("train", "validation")))


@dataclass
class TrainedRun:
    """The session's tiny trained model: the README's ``data=files`` run as a user launches it."""

    cwd: Path  # HYENA_RTF_ROOT of the run (logs/ and data/ below it)
    run: Path  # logs/train/runs/<timestamp>
    args: list  # the train.py arguments
    stdout: str
    stderr: str

    @property
    def last(self) -> Path:
        return self.run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, wikitext_dir, token_cache, wiki_tokenizer) -> TrainedRun:
    """``train.py data=files data.train_path=... data.validation_path=...`` (no test split), 30
    steps of a tiny Hyena-RTF, validation and a checkpoint every 10 steps on the default 20
    validation batches. Shared read-only: a test that writes into the run copies it first."""
    cwd = tmp_path_factory.mktemp("trained")
    args = [*files_data(wikitext_dir), *TINY, f"paths.data_dir={token_cache}", "trainer.max_steps=30",
            "trainer.val_check_interval=10", "trainer.log_every_n_steps=1", "optim.warmup_steps=3",
            "callbacks.sample_generation.max_new_tokens=6"]
    proc = cli("train.py", *args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = sorted((cwd / "logs" / "train" / "runs").glob("*"))
    return TrainedRun(cwd, run, args, proc.stdout, proc.stderr)
