"""Hugging Face interoperability: save/load, Auto classes, export with code, loading without the package."""

import ast
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from hyena_rtf.checkpoints.hf_export import export_hf
from hyena_rtf.modeling.configuration_hyena_rtf import HyenaRTFConfig
from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM, register_auto_classes
from hyena_rtf.modeling.presets import preset_config
from helpers import argmax_loop

V = 83


def tiny(mixer, **overrides):
    # A large init std makes random models emit varied tokens, so a broken cache changes them.
    kw = dict(vocab_size=V, max_position_embeddings=48, num_hidden_layers=2, initializer_range=0.5)
    return HyenaRTFForCausalLM(preset_config(f"{mixer}-tiny", **{**kw, **overrides})).eval()


@pytest.mark.parametrize("mixer", ["hyena_rtf", "hyena", "hyena_s4d", "attention"])
@torch.no_grad()
def test_save_and_load_give_identical_logits(mixer, tmp_path):
    model = tiny(mixer)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    loaded = HyenaRTFForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, V, (2, 40))
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    kw = dict(max_new_tokens=30, min_new_tokens=30, do_sample=False)
    got = loaded.generate(ids[:, :4], **kw)
    assert torch.equal(got, argmax_loop(model, ids[:, :4], 30))  # the original's parallel forwards
    assert len(set(got[:, 4:].flatten().tolist())) > 3  # varied output, so a broken cache would show


@torch.no_grad()
def test_auto_classes_after_registration(tmp_path):
    register_auto_classes()
    register_auto_classes()  # idempotent
    model = tiny("hyena_rtf")
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, HyenaRTFConfig) and config.state_size == model.config.state_size
    auto = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(auto) is HyenaRTFForCausalLM
    ids = torch.randint(0, V, (1, 20))
    assert torch.equal(auto(ids).logits, model(ids).logits)
    assert type(AutoModelForCausalLM.from_config(config)) is HyenaRTFForCausalLM


def test_export_refuses_to_overwrite(tmp_path):
    model = tiny("hyena_rtf")
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_hf(model, None, tmp_path)
    with pytest.raises(FileExistsError, match="config.json"):
        export_hf(model, None, tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    out = tmp_path / "export"
    export_hf(model, None, out)
    with pytest.raises(FileExistsError):
        export_hf(model, None, out)
    (out / "stale.bin").write_bytes(b"old")
    export_hf(model, None, out, overwrite=True)
    assert not (out / "stale.bin").exists()
    with pytest.raises(ValueError, match="HyenaRTFForCausalLM"):
        export_hf(torch.nn.Linear(2, 2), None, tmp_path / "other")


def test_export_ships_every_modeling_file(tmp_path):
    export_hf(tiny("hyena_rtf"), None, tmp_path / "e")
    files = sorted(os.listdir(tmp_path / "e"))
    code = {
        "attention.py", "blocks.py", "cache.py", "configuration_hyena_rtf.py", "fftconv.py",
        "filters.py", "hyena.py", "implicit_filter.py", "long_filter.py", "mixer.py", "mixers.py", "modeling_hyena_rtf.py",
        "reflection.py", "rtf.py", "rtf_init.py", "rtf_kernel.py", "rtf_recurrence.py", "s4d.py", "sections.py",
    }
    assert set(files) == code | {"config.json", "generation_config.json", "model.safetensors"}
    auto_map = json.loads((tmp_path / "e" / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_hyena_rtf.HyenaRTFConfig",
        "AutoModelForCausalLM": "modeling_hyena_rtf.HyenaRTFForCausalLM",
    }
    for name in code:  # shipped code imports siblings with single dots, and no package of ours
        tree = ast.parse((tmp_path / "e" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and f"{node.module}.py" in code, (name, node.module)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                roots = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                allowed = {"__future__", "dataclasses", "math", "typing", "torch", "transformers"}
                assert all(r.split(".")[0] in allowed for r in roots), (name, roots)


_ISOLATED = """
import json, sys


class HideHyenaRTF:
    # The package may be installed (editable) in this environment: hide it from every importer.
    def find_spec(self, name, path=None, target=None):
        if name == "hyena_rtf" or name.startswith("hyena_rtf."):
            raise ImportError("hyena_rtf is hidden in this test")
        return None


sys.meta_path.insert(0, HideHyenaRTF())
try:
    import hyena_rtf  # noqa: F401
    raise SystemExit("hyena_rtf must not be importable here")
except ImportError:
    pass
import torch
from transformers import AutoModelForCausalLM
ids = torch.tensor(json.loads(sys.argv[1]))
n = int(sys.argv[2])
result = {}
for path in sys.argv[3:]:
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    result[path] = {"module": type(model).__module__, "tokens": out.tolist()}
print(json.dumps(result))
"""


@pytest.mark.slow
@torch.no_grad()
def test_exported_directories_load_and_generate_without_the_package(tmp_path):
    models = {m: tiny(m, position_embedding_type="rotary") for m in ("hyena_rtf", "hyena", "hyena_s4d", "attention")}
    for name, model in models.items():
        export_hf(model, None, tmp_path / name)
    # 4 prompts: a random RTF model with slow (graded) poles settles on a few tokens per prompt.
    ids = torch.randint(0, V, (4, 5))
    n = 48 - 5  # up to l_max, so the reference can run full parallel forwards
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    # -I: isolated mode (no PYTHONPATH, no cwd on sys.path); cwd is a fresh empty directory.
    (tmp_path / "cwd").mkdir()
    paths = [str(tmp_path / name) for name in models]
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _ISOLATED, json.dumps(ids.tolist()), str(n), *paths],
        cwd=tmp_path / "cwd", env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, model in models.items():
        got = result[str(tmp_path / name)]
        assert got["module"].startswith("transformers_modules.")  # the shipped copy, not hyena_rtf
        # Reference: greedy argmax over full parallel forwards of the in-process original.
        expected = argmax_loop(model, ids, n)
        assert got["tokens"] == expected.tolist(), name
        assert len(set(expected[:, 5:].flatten().tolist())) > 3, name  # varied, so a broken cache would show


_PUBLIC_API = """
import sys
from transformers import AutoConfig, AutoModelForCausalLM
from hyena_rtf import HyenaOperator, HyenaRTFConfig, HyenaRTFForCausalLM, RTF  # the public names
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])  # no trust_remote_code: registered on import
assert type(model) is HyenaRTFForCausalLM, type(model)
assert type(AutoConfig.from_pretrained(sys.argv[1])) is HyenaRTFConfig
assert callable(RTF) and callable(HyenaOperator)
heavy = sorted(m for m in ("lightning", "hydra", "datasets", "wandb") if m in sys.modules)
print("heavy:", heavy)
"""


@pytest.mark.slow  # a fresh interpreter
def test_public_api_imports_and_registers_auto_classes(tmp_path):
    tiny("hyena_rtf").save_pretrained(tmp_path / "m")
    proc = subprocess.run(
        [sys.executable, "-c", _PUBLIC_API, str(tmp_path / "m")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "heavy: []" in proc.stdout  # the model API does not drag in the training stack
