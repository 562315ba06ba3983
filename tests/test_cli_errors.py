"""Bad input through the real CLIs: one line on stderr, exit code 2, nothing overwritten."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT
from hyena_rtf.modeling.presets import preset_config


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HYENA_RTF_ROOT": str(cwd)}
    env.pop("HYENA_RTF_DEBUG", None)
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
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

    cfg = preset_config("hyena_rtf-tiny", vocab_size=300, hidden_size=32, intermediate_size=64,
                        max_position_embeddings=32, state_size=4, output_rank=None).to_dict()
    model_kwargs = {k: cfg[k] for k in preset_config("hyena_rtf-tiny").to_dict() if k in cfg and k in HyenaRTFConfig().to_dict()}
    model = HyenaRTFForCausalLM(HyenaRTFConfig(**model_kwargs))
    hp = {**model_kwargs, **overrides}
    torch.save({"hyper_parameters": {"model": hp}, "state_dict": {f"net.{k}": v for k, v in model.state_dict().items()},
                "global_step": 0}, path)


BAD_TRAIN = [
    (["data=files", "data.train_path=/nonexistent/train.txt"], ["data file not found", "/nonexistent/train.txt"]),
    (["data.corpus=wikitext7"], ["unknown corpus", "wikitext7"]),
    (["data.seq_len=0"], ["seq_len"]),
    (["model.state_size=100000"], ["state_size"]),
    (["model.mixer=mamba"], ["mixer"]),
    (["ckpt_path=/nonexistent/last.ckpt"], ["checkpoint not found"]),
    (["ckpt_path=last", "task_name=never_trained"], ["no intact checkpoint"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("args,needles", BAD_TRAIN, ids=[a[0][-1] for a in BAD_TRAIN])
def test_train_bad_input(args, needles, tmp_path):
    proc = run("train.py", *args, "trainer.max_steps=1", cwd=tmp_path)
    assert_one_line_error(proc, *needles)


@pytest.mark.slow
def test_train_empty_and_non_utf8_data(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    valid = [f"data.validation_path={empty}"]  # a run needs a validation split; the empty train file fails first
    assert_one_line_error(run("train.py", "data=files", f"data.train_path={empty}", *valid, cwd=tmp_path), "empty")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café\n".encode("latin-1") * 10)
    assert_one_line_error(run("train.py", "data=files", f"data.train_path={bad}", *valid, cwd=tmp_path), "not UTF-8")


@pytest.mark.slow
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
