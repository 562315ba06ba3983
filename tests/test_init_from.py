"""train.py init_from=: a new run that starts from a checkpoint's weights (e.g. a distilled model)."""

from pathlib import Path

import pytest
import torch

from hyena_rtf.checkpoints.loading import check_init_from, load_initial_weights
from hyena_rtf.errors import UserError
from hyena_rtf.training.lit_module import HyenaLMModule
from hyena_rtf.modeling.presets import PRESETS

MODEL = {**PRESETS["hyena_rtf-tiny"], "vocab_size": 64, "max_position_embeddings": 32, "num_hidden_layers": 1,
         "state_size": 4, "rtf_constraint": "none"}


def save_like_lightning(module: HyenaLMModule, path: Path) -> None:
    torch.save({"hyper_parameters": {"model": dict(module.hparams.model)},
                "state_dict": module.state_dict()}, path)


def test_starting_weights_are_the_checkpoint_weights(tmp_path):
    torch.manual_seed(0)
    source = HyenaLMModule(model=MODEL)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_like_lightning(source, tmp_path / "a.ckpt")
    torch.manual_seed(1)
    # Init-only options and dropout may differ: the weights mean the same thing.
    fresh = HyenaLMModule(model={**MODEL, "rtf_init": "zeros", "resid_dropout": 0.1})
    check_init_from(tmp_path / "a.ckpt", dict(fresh.hparams.model))
    load_initial_weights(fresh.net, tmp_path / "a.ckpt")
    for (name, p), q in zip(source.net.named_parameters(), fresh.net.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("change,key", [
    ({"rtf_constraint": "reflection"}, "rtf_constraint"),  # same shapes, other meaning
    ({"state_size": 8}, "state_size"),
    ({"mixer": "hyena"}, "mixer"),
])
def test_a_different_model_is_refused_before_any_work(tmp_path, change, key):
    save_like_lightning(HyenaLMModule(model=MODEL), tmp_path / "a.ckpt")
    with pytest.raises(UserError, match=f"{key}="):
        check_init_from(tmp_path / "a.ckpt", {**MODEL, **change})
    with pytest.raises(UserError, match="not found"):
        check_init_from(tmp_path / "missing.ckpt", MODEL)


def test_train_refuses_init_from_together_with_resume(tmp_path, wikitext_dir):
    from helpers import compose_cfg, wikitext_data

    from hyena_rtf.tasks.train_task import train

    save_like_lightning(HyenaLMModule(model=MODEL), tmp_path / "a.ckpt")
    base = ["model=hyena_rtf_tiny", *wikitext_data(wikitext_dir, tmp_path / "cache")]
    cfg = compose_cfg("train", base + [f"init_from={tmp_path / 'a.ckpt'}", f"ckpt_path={tmp_path / 'a.ckpt'}"],
                      tmp_path / "run", return_hydra=False)
    with pytest.raises(UserError, match="not both"):
        train(cfg)
    cfg = compose_cfg("train", base + [f"init_from={tmp_path / 'a.ckpt'}"], tmp_path / "run2", return_hydra=False)
    with pytest.raises(UserError, match="max_position_embeddings="):
        train(cfg)  # the tiny preset's context differs from the checkpoint's: refused before data work
    assert not (tmp_path / "cache").exists()
