"""The mixer contract: the registry, each mixer's decoding state against its parallel forward,
config validation by the mixers, and a backbone that never asks for a mixer's name."""

import ast
from pathlib import Path

import pytest
import torch

from hyena_rtf.modeling.attention import CausalSelfAttention, KVState
from hyena_rtf.modeling.configuration_hyena_rtf import MIXERS, HyenaRTFConfig
from hyena_rtf.modeling.filters import FILTERS, MIXER_FILTERS
from hyena_rtf.modeling.hyena import HyenaOperator
from hyena_rtf.modeling.mixer import Mixer
from hyena_rtf.modeling.mixers import MIXER_CLASSES, build_mixer, mixer_class
from hyena_rtf.modeling.presets import preset_config

MODELING = Path(__file__).resolve().parents[1] / "hyena_rtf" / "modeling"


def test_the_registry_names_every_config_mixer_with_a_mixer_class():
    assert MIXERS == tuple(MIXER_CLASSES)
    assert all(issubclass(mixer_class(name), Mixer) for name in MIXERS)
    with pytest.raises(ValueError, match="mamba"):
        mixer_class("mamba")


@pytest.mark.parametrize("name", ["hyena_rtf", "hyena_s4d", "attention-learned", "attention-rotary"])
@torch.no_grad()
def test_prefill_then_steps_of_a_mixer_reproduce_its_parallel_forward(name):
    mixer, _, positions = name.partition("-")
    extra = {"position_embedding_type": positions} if positions else {}
    cfg = preset_config(f"{mixer}-tiny", max_position_embeddings=16, **extra)
    torch.manual_seed(0)
    m = build_mixer(cfg).double().eval()
    assert m.has_state
    x = torch.randn(2, 12, cfg.hidden_size, dtype=torch.float64)  # (B, T, D)
    ys, state = m.prefill(x[:, :5], m.initial_state(2))  # (B, 5, D)
    ys = [ys]
    for t in range(5, 12):
        y_t, state = m.step(x[:, t], state)  # (B, D)
        ys.append(y_t.unsqueeze(1))
    torch.testing.assert_close(torch.cat(ys, 1), m(x))


def test_attention_state_holds_every_key_and_value():
    m = CausalSelfAttention(8, 2).eval()
    _, state = m.prefill(torch.randn(3, 4, 8))
    _, state = m.step(torch.randn(3, 8), state)
    assert isinstance(state, KVState) and state.get_seq_length() == 5 and state.keys.shape == (3, 2, 5, 4)


def test_a_mixer_without_state_says_so():
    m = build_mixer(preset_config("hyena-tiny"))
    assert not m.has_state and not m.has_recurrence
    with pytest.raises(NotImplementedError, match="no recurrent mode"):
        m.initial_state(1)


def test_each_mixer_validates_its_own_fields_only():
    # The config checks the fields of the mixer it names: bad attention fields do not stop a
    # Hyena config, and the attention class alone rejects them.
    hyena_cfg = HyenaRTFConfig(mixer="hyena_rtf", num_attention_heads=7)
    with pytest.raises(ValueError, match=r"HyenaRTFConfig\.num_attention_heads "):
        CausalSelfAttention.check_config(hyena_cfg)
    attention_cfg = HyenaRTFConfig(mixer="attention", hyena_order=1)
    with pytest.raises(ValueError, match=r"HyenaRTFConfig\.hyena_order "):
        HyenaOperator.check_config(attention_cfg)


def test_no_modeling_file_compares_against_a_mixer_or_filter_name_outside_the_registries():
    names = set(MIXERS) | set(FILTERS) | set(MIXER_FILTERS)
    found = []
    for path in sorted(MODELING.glob("*.py")):
        if path.name in ("mixers.py", "filters.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                consts = [s.value for s in sides if isinstance(s, ast.Constant) and isinstance(s.value, str)]
                if any(c in names for c in consts):
                    found.append(f"{path.name}:{node.lineno}")
    assert not found, found
