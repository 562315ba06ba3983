"""The seams of the training layer: every data config is a TaskData that checks the model against
itself before anything is read; unknown options are caught against each group's own target; the
optimizer comes from its config."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import CONF, assert_one_line_error, cli, compose_cfg, fake_checkpoint
from hyena_rtf.data.protocol import ModelLimits, TaskData
from hyena_rtf.errors import UserError
from hyena_rtf.evaluation.recall import ExactRecall, RecallAccuracy
from hyena_rtf.training.config_checks import check_config
from hyena_rtf.training.lit_module import HyenaLMModule

DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))


def data_cfg(name: str, tmp_path, *overrides: str):
    extra = ["data.train_path=x.txt"] if name == "files" else []
    return compose_cfg("train", [f"data={name}", *extra, *overrides], tmp_path, return_hydra=False)


@pytest.mark.parametrize("name", DATA)
def test_every_data_config_is_a_task_data_that_checks_the_context(name, tmp_path):
    dm = instantiate(data_cfg(name, tmp_path).data)
    assert isinstance(dm, TaskData)
    dm.check_model(ModelLimits(max_positions=dm.seq_len))  # exactly fits: accepted
    with pytest.raises(UserError, match="max_position_embeddings"):
        dm.check_model(ModelLimits(max_positions=dm.seq_len - 1))


def test_copying_names_its_own_options_when_too_long(tmp_path):
    dm = instantiate(data_cfg("copying", tmp_path, "data.mem_len=40", "data.delay=7").data)
    with pytest.raises(UserError, match=r"2 \* data.mem_len \+ data.delay = 87 tokens"):
        dm.check_model(ModelLimits(max_positions=86))


@pytest.mark.parametrize("name,vocab", [("shakespeare", 4096), ("wikitext103", 50257), ("copying", 16)])
def test_a_model_vocabulary_smaller_than_the_data_is_refused(name, vocab, tmp_path):
    dm = instantiate(data_cfg(name, tmp_path).data)
    dm.check_model(ModelLimits(vocab_size=vocab))
    with pytest.raises(UserError, match="vocab_size"):
        dm.check_model(ModelLimits(vocab_size=vocab - 1))
    dm.check_model(ModelLimits.from_config({"vocab_size": None}))  # null: taken from the data


def test_recall_tasks_bring_their_metrics_and_corpora_do_not(tmp_path):
    recall = instantiate(data_cfg("associative_recall", tmp_path).data).eval_metrics()
    assert {k: type(v) for k, v in recall.items()} == {"acc": RecallAccuracy, "exact": ExactRecall}
    assert instantiate(data_cfg("shakespeare", tmp_path).data).eval_metrics() == {}


def test_recall_metrics_against_a_hand_count():
    targets = torch.tensor([[-100, 3, 4, -100], [-100, -100, 1, 2], [-100, -100, -100, -100]])  # (B, L)
    predicted = torch.tensor([[0, 3, 4, 0], [0, 0, 1, 0], [5, 5, 5, 5]])  # row 0 all right, row 1 half
    logits = torch.nn.functional.one_hot(predicted, 6).float()  # (B, L, V)
    acc, exact = RecallAccuracy(), ExactRecall()
    acc.update(logits, targets)
    exact.update(logits, targets)
    assert acc.compute().item() == pytest.approx(3 / 4)  # 3 of 4 scored positions
    assert exact.compute().item() == pytest.approx(1 / 2)  # row 2 has nothing scored: not counted


@pytest.mark.parametrize("name", ["copying", "files", "shakespeare"])
def test_unknown_data_options_are_checked_against_the_configured_class(name, tmp_path):
    cfg = data_cfg(name, tmp_path)
    check_config(cfg)  # every key of the shipped config is known
    key = "train_size" if name == "copying" else "seq_len"
    with pytest.raises(UserError, match=rf"unknown option data\.{key}x \(did you mean data\.{key}\?\)"):
        check_config(compose_cfg("train", [f"data={name}", f"+data.{key}x=1"], tmp_path, return_hydra=False))


def test_the_optimizer_is_built_from_its_target(tmp_path):
    cfg = compose_cfg("train", ["optim.optimizer._target_=torch.optim.SGD", "+optim.optimizer.momentum=0.5",
                                "~optim.optimizer.betas", "optim.lr=0.02"], tmp_path, return_hydra=False)
    check_config(cfg)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("_target_")
    model.update(vocab_size=64, hidden_size=16, num_hidden_layers=1, intermediate_size=32)
    module = HyenaLMModule(model=model, **OmegaConf.to_container(cfg.optim, resolve=True))
    module.trainer = type("T", (), {"estimated_stepping_batches": 10})()  # what the schedule reads
    optimizer = module.configure_optimizers()["optimizer"]
    assert type(optimizer) is torch.optim.SGD
    assert {g["momentum"] for g in optimizer.param_groups} == {0.5}
    assert max(g["initial_lr"] for g in optimizer.param_groups) == pytest.approx(0.02)


@pytest.mark.parametrize("overrides,needle", [
    (["optim.optimizer._target_=torch.optim.AdamWW"], "is not an importable optimizer class"),
    (["optim.optimizer._target_=torch.optim.SGD"], r"unknown option optim\.optimizer\.betas"),  # AdamW's option left behind
    (["+optim.optimizer.bettas=[0.9,0.99]"], r"did you mean optim\.optimizer\.betas"),
    (["+optim.optimizer.lr=0.1"], r"set optim\.lr instead"),
])
def test_bad_optimizer_options_fail_before_anything_is_built(overrides, needle, tmp_path):
    with pytest.raises(UserError, match=needle):
        check_config(compose_cfg("train", overrides, tmp_path, return_hydra=False))


def test_the_data_is_checked_against_the_model_before_starting_weights_are_read(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")  # reading it would fail with "damaged"
    proc = cli("train.py", "data.seq_len=9999", f"init_from={junk}", cwd=tmp_path)
    assert_one_line_error(proc, "data.seq_len=9999 exceeds the model's context")


def test_distill_scores_only_text_and_finds_the_teacher_first(tmp_path):
    proc = cli("distill.py", f"ckpt_path={tmp_path / 'missing.ckpt'}", "data=wikitext103", cwd=tmp_path)
    assert_one_line_error(proc, "checkpoint not found")  # not a hub error: the corpus is not touched
    teacher = tmp_path / "teacher.ckpt"
    fake_checkpoint(teacher)
    proc = cli("distill.py", f"ckpt_path={teacher}", "data=copying", cwd=tmp_path)
    assert_one_line_error(proc, "is not a text corpus")
