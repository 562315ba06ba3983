"""Bad input through the entry points: one line on stderr, exit code 2, nothing overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import assert_one_line_error, cli, fake_checkpoint, files_data  # noqa: F401  (re-exported for other test files)


def run(script: str, *args: str, cwd: Path):
    """``python <script> <args>`` in ``cwd`` (in this process: see helpers.cli)."""
    return cli(script, *args, cwd=cwd)


BAD_TRAIN = [
    (["data=files", "data.train_path=/nonexistent/train.txt"], ["data file not found", "/nonexistent/train.txt"]),
    (["data.corpus=wikitext7"], ["unknown corpus", "wikitext7"]),
    (["data.seq_len=0"], ["seq_len"]),
    (["model.state_size=100000"], ["state_size"]),
    (["model.mixer=mamba"], ["mixer"]),
    (["ckpt_path=/nonexistent/last.ckpt"], ["checkpoint not found"]),
    (["ckpt_path=last", "task_name=never_trained"], ["no intact checkpoint"]),
]


@pytest.mark.parametrize("args,needles", BAD_TRAIN, ids=[a[0][-1] for a in BAD_TRAIN])
def test_train_bad_input(args, needles, tmp_path, token_cache, wikitext_dir):
    # Model values are checked once the tokenizer is known: give those cases the session's corpus.
    data = files_data(wikitext_dir) if args[0].startswith("model.") else []
    proc = run("train.py", *data, *args, "trainer.max_steps=1", f"paths.data_dir={token_cache}", cwd=tmp_path)
    assert_one_line_error(proc, *needles)


def test_train_empty_and_non_utf8_data(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    valid = [f"data.validation_path={empty}"]  # a run needs a validation split; the empty train file fails first
    assert_one_line_error(run("train.py", "data=files", f"data.train_path={empty}", *valid, cwd=tmp_path), "empty")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café\n".encode("latin-1") * 10)
    assert_one_line_error(run("train.py", "data=files", f"data.train_path={bad}", *valid, cwd=tmp_path), "not UTF-8")


def test_evaluate_and_generate_bad_input(tmp_path):
    assert_one_line_error(run("evaluate.py", "ckpt_path=/nonexistent/x.ckpt", cwd=tmp_path), "checkpoint not found")
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    assert_one_line_error(run("evaluate.py", f"ckpt_path={junk}", cwd=tmp_path), "damaged")
    other = tmp_path / "other.ckpt"
    fake_checkpoint(other, hidden_size=48, intermediate_size=96)  # weights of a 32-wide model
    assert_one_line_error(run("generate.py", f"ckpt_path={other}", "prompt_ids=[1,2]", cwd=tmp_path),
                          "another architecture")
    good = tmp_path / "good.ckpt"
    fake_checkpoint(good)
    assert_one_line_error(run("generate.py", f"ckpt_path={good}", "prompt_ids=[5,99999]", cwd=tmp_path),
                          "outside the vocabulary")
    assert_one_line_error(run("generate.py", f"ckpt_path={good}", "prompt_ids=[]", cwd=tmp_path), "empty")
    # Exports are never overwritten unless asked.
    proc = run("export.py", f"ckpt_path={good}", f"out_dir={tmp_path / 'hf'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run("export.py", f"ckpt_path={good}", f"out_dir={tmp_path / 'hf'}", cwd=tmp_path)
    assert_one_line_error(proc, "not empty")
