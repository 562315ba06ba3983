"""Non-finite losses, DDP on CPU, FSDP, and offline W&B: the training layer under less friendly conditions."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from helpers import TINY_MODEL, compose_cfg, wikitext_data
from hyena_rtf.checkpoints.loading import load_checkpoint_dict
from hyena_rtf.tasks.train_task import train

BASE = [
    *TINY_MODEL,
    "trainer.accelerator=cpu",
    "trainer.max_steps=8",
    "trainer.val_check_interval=8",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "~callbacks.sample_generation",
    "~callbacks.throughput",
    "~callbacks.progress_bar",
    "+trainer.enable_progress_bar=false",
    "test=false",
    "seed=3",
]


@pytest.fixture
def cache_dir(token_cache):
    return token_cache


class NaNAtStep(L.Callback):
    """Makes the embedding output NaN during one training step and records the weights around it."""

    def __init__(self, step: int):
        self.step, self.before, self.after, self.handle = step, None, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.before = {k: v.clone() for k, v in pl_module.state_dict().items()}
            emb = pl_module.net.get_input_embeddings()
            self.handle = emb.register_forward_hook(lambda m, i, o: o * float("nan"))
        elif trainer.global_step == self.step + 1 and self.after is None:
            self.after = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def _run_with_nan(cfg, step: int):
    from hyena_rtf.tasks import train_task as training

    probe = NaNAtStep(step)
    orig = training.instantiate_dict_list

    def with_probe(group):
        out = orig(group)
        return out + [probe] if group is cfg.get("callbacks") else out

    training.instantiate_dict_list = with_probe
    try:
        return probe, train(cfg)
    finally:
        training.instantiate_dict_list = orig


def test_nonfinite_loss_skips_the_step(tmp_path, wikitext_dir, cache_dir):
    cfg = compose_cfg("train", [*wikitext_data(wikitext_dir, cache_dir), *BASE, "nonfinite=skip"],
                      tmp_path / "run", return_hydra=False)
    probe, metrics = _run_with_nan(cfg, step=3)
    assert metrics["train/skipped"] == 1.0
    # The poisoned batch changed no weight (the optimizer step was skipped), and training went on.
    assert probe.before is not None and probe.after is not None
    for k in probe.before:
        if k == "skipped_steps":
            continue
        assert torch.equal(probe.before[k], probe.after[k]), k
    last = load_checkpoint_dict(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert last["global_step"] >= 7
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_nonfinite_loss_can_stop_the_run(tmp_path, wikitext_dir, cache_dir):
    cfg = compose_cfg("train", [*wikitext_data(wikitext_dir, cache_dir), *BASE, "nonfinite=stop",
                                "callbacks.model_checkpoint.every_n_train_steps=2"], tmp_path / "run", return_hydra=False)
    with pytest.raises(FloatingPointError, match="non-finite training loss at step 5"):
        _run_with_nan(cfg, step=5)
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    step4 = load_checkpoint_dict(ckpts / "step_0000004.ckpt")
    assert all(torch.isfinite(v).all() for v in step4["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(tmp_path, wikitext_dir, cache_dir):
    data = wikitext_data(wikitext_dir, cache_dir)
    single = compose_cfg("train", [*data, *BASE, "data.batch_size=8"], tmp_path / "one", return_hydra=False)
    train(single)
    # The trainer group is swapped first, then BASE's trainer values apply on top of ddp_cpu.
    ddp = compose_cfg("train", ["trainer=ddp_cpu", *data, *BASE, "data.batch_size=4"], tmp_path / "two", return_hydra=False)
    assert ddp.trainer.devices == 2 and ddp.trainer.strategy == "ddp_spawn"
    train(ddp)
    a = load_checkpoint_dict(Path(single.paths.output_dir) / "checkpoints" / "last.ckpt")
    b = load_checkpoint_dict(Path(ddp.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 8
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=1e-4, atol=1e-5)


def test_wandb_offline_and_csv_logs(tmp_path, wikitext_dir, cache_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_cfg("train", [*wikitext_data(wikitext_dir, cache_dir), *BASE, "logger=many", "trainer.max_steps=3",
                                "trainer.val_check_interval=3"], tmp_path / "run", return_hydra=False)
    train(cfg)
    run = Path(cfg.paths.output_dir)
    assert list((run / "wandb").glob("offline-run-*")), "wandb wrote no offline run directory"
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    header = (run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/loss", "train/lr", "val/loss", "val/ppl", "step"):
        assert key in header


def test_fsdp_on_cpu_is_refused_by_lightning_and_by_torch(tmp_path):
    """trainer=fsdp cannot run on CPU processes with the installed releases, so no test runs it (the
    README says so): Lightning refuses FSDPStrategy without a GPU, and torch's FullyShardedDataParallel,
    under it, refuses CPU modules. When a release lifts both, this fails: run trainer=fsdp on two
    CPU processes against one process then, as the DDP test does."""
    import torch.distributed as dist
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from torch.distributed.fsdp import FullyShardedDataParallel

    cfg = compose_cfg("train", ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2",
                                "trainer.precision=32-true"], tmp_path / "run", return_hydra=False)
    with pytest.raises(InstantiationException, match="strategy `fsdp` requires a GPU accelerator"):
        instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeError, match="non-CPU accelerator"):
            FullyShardedDataParallel(torch.nn.Linear(4, 4))
    finally:
        dist.destroy_process_group()


def test_stability_monitor_reports_pole_radius_and_kernel_shift():
    """The monitor's numbers against a hand computation on a tiny model: pole radius from numpy's
    roots of each RTF denominator, kernel shift from the kernels before and after a change."""
    import types

    import numpy as np

    from hyena_rtf.training.callbacks import StabilityMonitor
    from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
    from hyena_rtf.modeling.presets import preset_config

    net = HyenaRTFForCausalLM(preset_config("hyena_rtf-tiny", vocab_size=50, max_position_embeddings=32, state_size=4,
                                            rtf_constraint="none"))
    logged = {}
    module = types.SimpleNamespace(modules=net.modules, log_at_step=logged.update)
    trainer = types.SimpleNamespace(sanity_checking=False)
    monitor = StabilityMonitor()
    monitor.on_fit_start(trainer, module)
    filters = [m for m in net.modules() if hasattr(m, "a_raw")]
    before = [f.kernel().detach().double() for f in filters]
    with torch.no_grad():
        filters[0].b.add_(0.5)  # move one filter only
    monitor.on_validation_epoch_end(trainer, module)
    after = [f.kernel().detach().double() for f in filters]
    expected = [float((a - b).norm() / b.norm()) for a, b in zip(after, before)]
    assert logged["filters/kernel_shift_layer_0"] == pytest.approx(expected[0]) and expected[0] > 0
    assert logged["filters/kernel_shift_layer_1"] == 0.0
    radii = [max(np.abs(np.roots(np.r_[1.0, row])).max() for row in f.denominator().detach().numpy()) for f in filters]
    assert logged["stability/max_pole_radius"] == pytest.approx(max(radii), rel=1e-9)
