"""Each entry point once as a real process: what ``python <script>.py`` adds to the in-process runs
of the other tests (``helpers.cli``): a fresh interpreter (warnings and log lines at import time),
the script's ``__main__`` guard, exit statuses that reach the operating system, and an export
that loads in an interpreter without this package."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import torch
from tokenizers import Tokenizer

from helpers import (
    ROOT, TINY, argmax_loop, assert_one_line_error, check_printed_eval, files_data, python_env, reference_nll,
    text_counts,
)


ROBERT = " = Robert Boulter = \n Robert Boulter is an English film , television and theatre actor ."


@pytest.mark.slow
def test_every_entry_point_runs_as_a_process(tmp_path, wikitext_dir, token_cache):
    from hyena_rtf.checkpoints.loading import load_for_inference

    env = python_env(tmp_path)

    def python(script: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)

    # train.py: the README's data=files run, a few steps; its console output is what a user reads.
    proc = python("train.py", *files_data(wikitext_dir), *TINY, f"paths.data_dir={token_cache}", "trainer.max_steps=4",
                  "trainer.val_check_interval=2", "trainer.limit_val_batches=2", "callbacks.sample_generation.max_new_tokens=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "val ppl" in proc.stdout and out.count("GPU available:") == 1
    assert not [line for line in proc.stderr.splitlines() if line.startswith("INFO: ")]
    assert "Warning" not in out and "LeafSpec" not in out and "Tip:" not in out and "FLOPs" not in out
    (run,) = (tmp_path / "logs" / "train" / "runs").glob("*")
    assert "Seed set to" in (run / "train.log").read_text()  # Hydra's log file of the run
    ckpt = run / "checkpoints" / "last.ckpt"

    # export.py, then evaluate.py on the export: the printed numbers are an independent computation's.
    proc = python("export.py", f"ckpt_path={ckpt}", f"out_dir={tmp_path / 'hf'}")
    assert proc.returncode == 0 and (tmp_path / "hf" / "config.json").is_file(), proc.stderr[-3000:]
    for path in (tmp_path / "hf").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name  # readable by the users it is shared with
    # A fresh interpreter without this package loads the export's tokenizer (remote code) quietly.
    code = ("import json\nfrom transformers import AutoTokenizer\n"
            f"tok = AutoTokenizer.from_pretrained({str(tmp_path / 'hf')!r}, trust_remote_code=True)\n"
            f"print(json.dumps(tok({ROBERT!r})['input_ids']))\n")
    load_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    load_env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    load = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=load_env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert load.returncode == 0, load.stderr[-2000:]
    assert load.stderr.strip() == ""  # no "custom code" or "model of type" message
    reference = Tokenizer.from_file(str(run / "tokenizer" / "tokenizer.json")).encode(ROBERT, add_special_tokens=False).ids
    assert json.loads(load.stdout.strip().splitlines()[-1]) == reference
    text = "".join((wikitext_dir / "wiki.test.raw").read_text(encoding="utf-8").splitlines(keepends=True)[:40])
    (tmp_path / "small.raw").write_text(text, encoding="utf-8")
    proc = python("evaluate.py", f"ckpt_path={tmp_path / 'hf'}", "data=files", f"data.test_path={tmp_path / 'small.raw'}",
                  "progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, tok = load_for_inference(ckpt)
    nll, count = reference_nll(model, tok.backend_tokenizer.encode(text, add_special_tokens=False).ids, 32)
    check_printed_eval(proc.stdout, nll, count, *text_counts(text))

    # generate.py: greedy text of an argmax loop over parallel forwards.
    proc = python("generate.py", f"ckpt_path={ckpt}", "prompt=The", "do_sample=false", "max_new_tokens=12")
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = tok.decode(argmax_loop(model, torch.tensor([tok("The").input_ids]), 12)[0], skip_special_tokens=True)
    assert proc.stdout.strip() == expected.strip()

    # distill.py with an impossible order: exit status 2 and one line, from the process.
    assert_one_line_error(python("distill.py", f"ckpt_path={ckpt}", "state_size=0", "evaluate=false"), "state_size must be")
