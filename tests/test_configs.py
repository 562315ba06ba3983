"""Every Hydra config group composes and instantiates; the paper experiment has the paper's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import CONF, compose_cfg
from hyena_rtf.modeling.configuration_hyena_rtf import HyenaRTFConfig
from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
from hyena_rtf.modeling.presets import PRESETS
from hyena_rtf.tasks.train_task import instantiate_dict_list


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("name", options("model"))
def test_model_configs_build(name, tmp_path):
    cfg = compose_cfg("train", [f"model={name}"], tmp_path, return_hydra=False)
    model_cfg = OmegaConf.to_container(cfg.model)
    model_cfg.pop("_target_")
    model_cfg["vocab_size"] = 1000
    config = HyenaRTFConfig(**model_cfg)
    assert name.startswith(config.mixer)
    if config.hidden_size <= 256:  # build the small ones for real
        model = HyenaRTFForCausalLM(config)
        logits = model(input_ids=torch.randint(0, 1000, (1, 8))).logits
        assert logits.shape == (1, 8, 1000)


@pytest.mark.parametrize("name", [n for n in options("model") if not n.endswith("quickstart")])
def test_model_yaml_matches_preset(name, tmp_path):
    mixer, size = name.rsplit("_", 1)
    preset = dict(PRESETS[f"{mixer}-{size}"])
    cfg = OmegaConf.to_container(compose_cfg("train", [f"model={name}"], tmp_path, return_hydra=False).model)
    for key, value in preset.items():
        if key != "vocab_size":
            assert cfg[key] == value, key


@pytest.mark.parametrize("name", options("data"))
def test_data_configs_instantiate(name, tmp_path):
    extra = ["data.train_path=x.txt"] if name == "files" else []
    cfg = compose_cfg("train", [f"data={name}", *extra], tmp_path, return_hydra=False)
    dm = instantiate(cfg.data)
    # data=copying derives its length: the block, the delay, the copies.
    seq_len = cfg.data.seq_len if "seq_len" in cfg.data else 2 * cfg.data.mem_len + cfg.data.delay
    assert dm.seq_len == seq_len  # constructing does not read or download anything


@pytest.mark.parametrize("name", ["default", "cpu", "ddp_cpu"])
def test_trainer_configs_instantiate(name, tmp_path):
    cfg = compose_cfg("train", [f"trainer={name}"], tmp_path, return_hydra=False)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("name", ["gpu", "ddp", "fsdp"])
def test_gpu_trainer_configs_compose(name, tmp_path):
    cfg = compose_cfg("train", [f"trainer={name}"], tmp_path, return_hydra=False)
    assert cfg.trainer.accelerator == "gpu"
    OmegaConf.to_container(cfg.trainer, resolve=True)  # every interpolation resolves
    if name == "fsdp":  # the strategy object itself builds without a GPU
        from lightning.pytorch.strategies import FSDPStrategy

        from hyena_rtf.modeling.blocks import Block

        strategy = instantiate(cfg.trainer.strategy)
        assert isinstance(strategy, FSDPStrategy)
        assert Block in cfg_policy(strategy)


def cfg_policy(strategy) -> set:
    policy = strategy.kwargs.get("auto_wrap_policy")
    return set(getattr(policy, "_module_classes", None) or getattr(policy, "module_classes", None) or policy)


@pytest.mark.parametrize("name", [n for n in options("logger") if n != "many"] + ["many"])
def test_logger_configs_instantiate(name, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg("train", [f"logger={name}"], tmp_path, return_hydra=False)
    loggers = instantiate_dict_list(cfg.get("logger"))
    assert len(loggers) == {"none": 0, "many": 3}.get(name, 1)


@pytest.mark.parametrize("name", options("callbacks"))
def test_callback_configs_instantiate(name, tmp_path):
    cfg = compose_cfg("train", [f"callbacks={name}"], tmp_path, return_hydra=False)
    callbacks = instantiate_dict_list(cfg.get("callbacks"))
    assert len(callbacks) == (0 if name == "none" else len(cfg.callbacks))


@pytest.mark.parametrize("name", options("debug"))
def test_debug_configs_compose(name, tmp_path):
    cfg = compose_cfg("train", [f"debug={name}"], tmp_path, return_hydra=False)
    assert cfg.trainer.accelerator == "cpu" and cfg.task_name == "debug"


@pytest.mark.parametrize("name", options("experiment"))
def test_experiments_compose(name, tmp_path):
    cfg = compose_cfg("train", [f"experiment={name}"], tmp_path, return_hydra=False)
    OmegaConf.to_container(cfg, resolve=True)


def test_wt103_experiment_is_the_paper_recipe(tmp_path):
    cfg = compose_cfg("train", ["experiment=wt103_hyena_rtf_paper"], tmp_path, return_hydra=False)
    m, o, t, d = cfg.model, cfg.optim, cfg.trainer, cfg.data
    assert (m.hidden_size, m.num_hidden_layers, m.intermediate_size) == (768, 12, 3072)
    assert (m.max_position_embeddings, m.hyena_order, m.state_size, m.output_rank) == (1024, 2, 64, 384)
    assert (m.rtf_init, m.rtf_constraint, m.get("rtf_num_a"), m.rtf_decay) == ("xavier", "l1_montel", None, None)
    assert (m.embed_dropout, m.resid_dropout, m.mixer_dropout) == (0.25, 0.25, 0.25)
    assert m.tie_word_embeddings and m.residual_in_fp32 and m.pad_vocab_size_multiple == 8
    assert (d.corpus, d.tokenizer, d.seq_len) == ("wikitext103", "gpt2", 1024)
    assert d.batch_size * t.devices * t.accumulate_grad_batches == 128  # global batch
    assert (o.lr, o.weight_decay, o.filter_lr, o.filter_weight_decay) == (1e-3, 0.25, 1e-3, 0.0)
    assert o.decay_norm_and_bias and o.optimizer._target_ == "torch.optim.AdamW" and list(o.optimizer.betas) == [0.9, 0.999]
    assert (t.max_steps, o.warmup_steps, o.min_lr_rate, t.gradient_clip_val) == (90000, 900, 0.1, 1.0)
    assert cfg.seed == 2222
    model_cfg = OmegaConf.to_container(m)
    model_cfg.pop("_target_")
    with torch.device("meta"):
        model = HyenaRTFForCausalLM(HyenaRTFConfig(**model_cfg))
    assert sum(p.numel() for p in model.parameters()) == 124_981_248  # the paper's ~124.98M
    # The project's recipe is the same but for the filter: reflection constraint and graded decay.
    ours = compose_cfg("train", ["experiment=wt103_hyena_rtf"], tmp_path, return_hydra=False)
    differ = {k for k in set(ours.model) | set(m) if ours.model.get(k) != m.get(k)}
    assert differ == {"rtf_constraint", "rtf_decay"}
    assert (ours.model.rtf_constraint, list(ours.model.rtf_decay)) == ("reflection", [0.3, 1.5, 0.5])
    assert OmegaConf.to_container(ours.optim) == OmegaConf.to_container(o) and ours.seed == cfg.seed


def test_default_run_is_the_quickstart(tmp_path):
    a = compose_cfg("train", [], tmp_path, return_hydra=False)
    b = compose_cfg("train", ["experiment=quickstart"], tmp_path, return_hydra=False)
    ca, cb = OmegaConf.to_container(a), OmegaConf.to_container(b)
    ca.pop("tags")
    cb.pop("tags")
    assert ca == cb
    assert a.data.corpus == "shakespeare" and a.model.mixer == "hyena_rtf"


@pytest.mark.parametrize("name", [n for n in options("model") if not n.endswith("125m")])
def test_model_presets_bring_their_mixers_tuned_recipe(name, tmp_path):
    """model=<mixer>_* trains at conf/optim/<mixer>.yaml's lr and weight decay (read from the file
    here, not through Hydra); an optim= choice on the command line replaces it."""
    cfg = compose_cfg("train", [f"model={name}"], tmp_path, return_hydra=False)
    # The quickstart (300 steps on Shakespeare) has a recipe of its own; every other preset its mixer's.
    recipe = OmegaConf.load(CONF / "optim" / f"{'quickstart' if name.endswith('quickstart') else cfg.model.mixer}.yaml")
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (recipe.lr, recipe.weight_decay)
    assert cfg.optim.filter_lr == cfg.optim.lr and cfg.optim.warmup_steps == recipe.warmup_steps
    lowered = compose_cfg("train", [f"model={name}", "optim.lr=1e-4"], tmp_path, return_hydra=False)
    assert lowered.optim.filter_lr == 1e-4  # the filters follow a changed lr
    base = OmegaConf.load(CONF / "optim" / "adamw.yaml")
    chosen = compose_cfg("train", [f"model={name}", "optim=adamw"], tmp_path, return_hydra=False)
    assert OmegaConf.to_container(chosen.optim) == OmegaConf.to_container(base)


@pytest.mark.parametrize("name", [n for n in options("model") if n.endswith("125m")])
def test_125m_presets_keep_the_paper_optimizer(name, tmp_path):
    cfg = compose_cfg("train", [f"model={name}"], tmp_path, return_hydra=False)
    base = OmegaConf.load(CONF / "optim" / "adamw.yaml")
    assert OmegaConf.to_container(cfg.optim) == OmegaConf.to_container(base)
