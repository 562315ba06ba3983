"""Shared fixtures: paths to the read-only shared data, deterministic seeds, thread limits."""

from __future__ import annotations

import os
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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED}; set HYENA_RTF_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def wikitext_dir(shared_dir) -> Path:
    return shared_dir / "data" / "wikitext-2-raw"
