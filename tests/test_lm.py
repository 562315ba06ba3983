"""Decoder LM: config validation, presets and parameter counts, init, loss, masking, optimizer groups."""

import math

import pytest
import torch
import torch.nn.functional as F

from hyena_rtf.modeling.attention import CausalSelfAttention, attention_reference, causal_mask
from hyena_rtf.modeling.configuration_hyena_rtf import HyenaRTFConfig
from hyena_rtf.modeling.implicit_filter import ImplicitFilter
from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
from hyena_rtf.modeling.presets import PRESETS, preset_config
from hyena_rtf.modeling.rtf import RTF
from hyena_rtf.modeling.s4d import S4D

MIXERS = ["hyena_rtf", "hyena", "hyena_s4d", "attention"]


def tiny(mixer, **overrides):
    kw = dict(vocab_size=61, max_position_embeddings=32, num_hidden_layers=2, initializer_range=0.2)
    return HyenaRTFForCausalLM(preset_config(f"{mixer}-tiny", **{**kw, **overrides})).eval()


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(mixer="mamba"), "mixer"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(hidden_size=-4), "hidden_size"),
        (dict(max_position_embeddings=1), "max_position_embeddings"),
        (dict(state_size=1024), "state_size"),
        (dict(state_size=0), "state_size"),
        (dict(hyena_order=1), "hyena_order"),
        (dict(rtf_num_a=5), "rtf_num_a"),
        (dict(rtf_init="orthogonal"), "rtf_init"),
        (dict(rtf_constraint="l2"), "rtf_constraint"),
        (dict(output_rank=0), "output_rank"),
        (dict(embed_dropout=1.0), "embed_dropout"),
        (dict(resid_dropout=-0.1), "resid_dropout"),
        (dict(mixer="hyena", implicit_emb_dim=4), "implicit_emb_dim"),
        (dict(mixer="hyena_s4d", state_size=7), "state_size"),
        (dict(mixer="hyena_s4d", s4d_dt_min=0.0), "s4d_dt_min"),
        (dict(mixer="hyena_s4d", s4d_dt_min=0.2, s4d_dt_max=0.1), "s4d_dt_min"),
        (dict(mixer="attention", num_attention_heads=7), "num_attention_heads"),
        (dict(mixer="attention", position_embedding_type="alibi"), "position_embedding_type"),
        (dict(mixer="attention", hidden_size=36, num_attention_heads=12, position_embedding_type="rotary"),
         "num_attention_heads"),
        (dict(layer_norm_epsilon=0.0), "layer_norm_epsilon"),
        (dict(pad_vocab_size_multiple=0), "pad_vocab_size_multiple"),
        (dict(num_hidden_layers=2.5), "num_hidden_layers"),
    ],
)
def test_bad_config_values_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"HyenaRTFConfig\.{field} "):
        HyenaRTFConfig(**kwargs)


def test_model_revalidates_an_edited_config():
    cfg = preset_config("hyena_rtf-tiny")
    cfg.state_size = cfg.max_position_embeddings
    with pytest.raises(ValueError, match="state_size"):
        HyenaRTFForCausalLM(cfg)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="hyena_rtf-125m"):
        preset_config("hyena_rtf-7b")


def test_presets_cover_four_mixers_and_three_sizes():
    assert set(PRESETS) == {f"{m}-{s}" for m in MIXERS for s in ("125m", "small", "tiny")}
    # The 125m presets differ in the mixer (and the fields only that mixer reads) only.
    shared = lambda p: {k: v for k, v in p.items() if k != "mixer" and not k.startswith("s4d_")}  # noqa: E731
    base = shared(PRESETS["hyena_rtf-125m"])
    for m in MIXERS:
        assert shared(PRESETS[f"{m}-125m"]) == base
    assert PRESETS["hyena_s4d-125m"]["s4d_dt_min"] == 1e-3 and PRESETS["hyena_s4d-125m"]["s4d_dt_max"] == 1e-1


def _count(name):
    with torch.device("meta"):
        model = HyenaRTFForCausalLM(preset_config(name))
    return model, sum(p.numel() for p in model.parameters())


def test_parameter_counts_of_the_125m_presets():
    """Exact counts, derived by hand from the layer shapes (anchors-code.md 1.6 for Hyena-RTF).

    Per block, D=768, d_inner=3072, rank 384: MLP 4,722,432; two LayerNorms 3,072.
    Hyena mixers: in_proj 768*2304+2304 = 1,771,776; short conv 2304*3+2304 = 9,216; RMSNorm 768;
    mimo_proj 768*384+384 = 295,296; out_proj 384*768+768 = 295,680.
    RTF filter: a 768x64 + b 768x64 + h0 768 = 99,072 (the default reflection constraint), plus a
    montel scale 768 = 99,840 with the paper's l1_montel.
    Implicit filter (width 64, emb_dim 3, 3 sine layers with their own frequencies): positions
    1024*3 + MLP (3*64+64) + 2*(64*64+64) + 64*768 + sines 3*64 + skip 768 = 61,760.
    S4D filter (state 64 = 32 complex modes): log dt 768 + A (real, imag) 2*768*32 + C (complex)
    2*768*32 + D 768 = 99,840, the same as the paper's RTF.
    Attention: qkv 768*2304+2304 = 1,771,776; out_proj 590,592.
    Embedding 50264*768 = 38,602,752 (tied head); final LN 1,536; learned positions 1024*768.
    """
    mlp_ln = 4_722_432 + 3_072
    hyena_common = 1_771_776 + 9_216 + 768 + 295_296 + 295_680 + mlp_ln
    embed = 38_602_752 + 1_536
    expected = {
        "hyena_rtf-125m": 12 * (hyena_common + 99_072) + embed,
        "hyena-125m": 12 * (hyena_common + 61_760) + embed,
        "hyena_s4d-125m": 12 * (hyena_common + 99_840) + embed,
        "attention-125m": 12 * (1_771_776 + 590_592 + mlp_ln) + embed + 1024 * 768,
    }
    for name, n_expected in expected.items():
        model, n = _count(name)
        print(f"{name}: {n:,} parameters")
        assert n == n_expected, name
    with torch.device("meta"):
        paper = HyenaRTFForCausalLM(preset_config("hyena_rtf-125m", rtf_constraint="l1_montel", rtf_decay=None))
    assert sum(p.numel() for p in paper.parameters()) == 12 * (hyena_common + 99_840) + embed == 124_981_248  # ~124.98M
    # GPT-2 small has 124,439,808 parameters with the unpadded 50257-row embedding.
    assert expected["attention-125m"] == 124_439_808 + 7 * 768
    rtf = [m for m in _count("hyena_rtf-125m")[0].modules() if isinstance(m, RTF)]
    assert len(rtf) == 12 and all(m.state_size == 64 and m.l_max == 1024 for m in rtf)
    s4d = [m for m in _count("hyena_s4d-125m")[0].modules() if isinstance(m, S4D)]
    assert len(s4d) == 12 and all(m.state_size == 64 and m.l_max == 1024 for m in s4d)


# ---------------------------------------------------------------------------- init
def test_gpt2_init_scales_residual_projections_and_leaves_filters_alone():
    cfg = preset_config("hyena_rtf-small", vocab_size=1000)
    model = HyenaRTFForCausalLM(cfg)
    n_layer = cfg.num_hidden_layers
    scaled = 0.02 / math.sqrt(2 * n_layer)
    for name, p in model.named_parameters():
        if name.endswith(("out_proj.weight", "fc2.weight")):
            assert abs(p.std().item() - scaled) < 0.1 * scaled, name
        elif name.endswith(("in_proj.weight", "fc1.weight", "mimo_proj.weight", "embed_tokens.weight")):
            assert abs(p.std().item() - 0.02) < 0.002, name
        elif name.endswith(".bias") and "short_filter" not in name and "norm" not in name:
            assert torch.all(p == 0), name
    mixer = model.model.layers[0].mixer
    # Short conv keeps PyTorch's default (kaiming-uniform, bound 1/sqrt(fan_in=3)), not N(0, 0.02).
    assert mixer.short_filter.weight.abs().max() > 0.2
    f = mixer.filters[0]
    assert f.b.abs().max() <= 1 / math.sqrt(cfg.state_size) and f.b.std() > 0.05  # xavier, untouched
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_gpt2_init_leaves_s4d_filters_at_their_s4d_lin_init():
    model = HyenaRTFForCausalLM(preset_config("hyena_s4d-tiny", vocab_size=100))
    f = model.model.layers[0].mixer.filters[0]
    assert isinstance(f, S4D)
    modes = torch.arange(f.state_size // 2, dtype=torch.float32)
    torch.testing.assert_close(f.a_imag, math.pi * modes.expand_as(f.a_imag))  # A = -1/2 + i pi n
    torch.testing.assert_close(f.log_neg_a_real.exp(), torch.full_like(f.a_imag, 0.5))
    dt = f.log_dt.exp()
    assert dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 1e-1 * (1 + 1e-6) and dt.std() > 0
    assert 0.5 < f.c.std() * math.sqrt(2) < 1.5  # complex normal C, not N(0, 0.02)


# ---------------------------------------------------------------------------- forward
@pytest.mark.parametrize("mixer", MIXERS)
def test_loss_is_shifted_cross_entropy_ignoring_minus_100(mixer):
    model = tiny(mixer)
    ids = torch.randint(0, 61, (3, 20))
    labels = ids.clone()
    labels[0, 5:9] = -100
    out = model(ids, labels=labels)
    assert out.logits.shape == (3, 20, 61)  # sliced to vocab_size, not the padded 64
    assert model.model.embed_tokens.weight.shape[0] == 64
    ref = F.cross_entropy(out.logits[:, :-1].reshape(-1, 61), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, ref)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("mixer", MIXERS)
@torch.no_grad()
def test_models_are_causal(mixer):
    model = tiny(mixer).double()  # fp64: FFT round-off of fp32 would blur "exactly unchanged"
    ids = torch.randint(0, 61, (2, 24))
    changed = ids.clone()
    changed[:, 15] = (changed[:, 15] + 1) % 61
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :15], b[:, :15], rtol=0, atol=1e-10)
    assert (a[:, 15:] - b[:, 15:]).abs().max() > 1e-3


@pytest.mark.parametrize("mixer", MIXERS)
@torch.no_grad()
def test_left_padding_equals_unpadded_rows(mixer):
    model = tiny(mixer, position_embedding_type="rotary") if mixer == "attention" else tiny(mixer)
    rows = [torch.randint(0, 61, (n,)) for n in (20, 13, 20, 6)]
    ids = torch.zeros(4, 20, dtype=torch.long)
    mask = torch.zeros(4, 20, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, 20 - len(r) :], mask[i, 20 - len(r) :] = r, 1
    logits = model(ids, attention_mask=mask).logits
    for i, r in enumerate(rows):
        ref = model(r.unsqueeze(0)).logits[0]
        torch.testing.assert_close(logits[i, 20 - len(r) :], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fp32", [True, False])
@torch.no_grad()
def test_residual_stream_dtype_under_bf16_weights(fp32):
    model = tiny("hyena_rtf", residual_in_fp32=fp32).to(torch.bfloat16)
    out = model(torch.randint(0, 61, (2, 12)), output_hidden_states=True)
    residuals = out.hidden_states  # embeddings, then the stream after each block
    assert len(residuals) == 3 and {h.dtype for h in residuals} == {torch.float32 if fp32 else torch.bfloat16}
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all()


def test_learned_positions_refuse_sequences_past_the_table():
    model = tiny("attention")
    with pytest.raises(ValueError, match="rotary"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("mixer", ["hyena_rtf", "hyena", "hyena_s4d"])
def test_parallel_mode_refuses_sequences_longer_than_l_max(mixer):
    with pytest.raises(ValueError, match="max_position_embeddings=32"):
        tiny(mixer)(torch.zeros(1, 33, dtype=torch.long))


@torch.no_grad()
def test_sdpa_attention_matches_explicit_softmax_reference():
    attn = CausalSelfAttention(32, 4, position_type="rotary").eval()
    x = torch.randn(2, 9, 32)
    q, k, v = attn.project(x, torch.arange(9))
    pad = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9])
    for qs in (slice(0, 9), slice(6, 9)):  # full sequence, and 3 queries against 9 keys (cache)
        mask = causal_mask(qs.stop - qs.start, 9, pad)
        fast = attn.attend(q[:, :, qs], k, v, mask)
        ref = attn.out_proj(attention_reference(q[:, :, qs], k, v, mask).transpose(1, 2).reshape(2, -1, 32))
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    plain = attn.attend(q, k, v)
    ref = attn.out_proj(attention_reference(q, k, v).transpose(1, 2).reshape(2, 9, 32))
    torch.testing.assert_close(plain, ref, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_rotary_scores_depend_on_relative_position_only():
    attn = CausalSelfAttention(16, 2, position_type="rotary")
    x = torch.randn(1, 5, 16)
    q0, k0, _ = attn.project(x, torch.arange(5))
    q1, k1, _ = attn.project(x, torch.arange(5) + 37)
    torch.testing.assert_close(q0 @ k0.transpose(-1, -2), q1 @ k1.transpose(-1, -2), rtol=1e-4, atol=1e-4)
    assert (q0 - q1).abs().max() > 1e-2


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = tiny("hyena_rtf").train()
    b = tiny("hyena_rtf").train()
    b.load_state_dict(a.state_dict())
    b.activation_checkpointing_enable()
    ids = torch.randint(0, 61, (2, 16))
    a(ids, labels=ids).loss.backward()
    b(ids, labels=ids).loss.backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


# ---------------------------------------------------------------------------- optimizer groups
@pytest.mark.parametrize("mixer", MIXERS)
def test_param_groups_partition_the_parameters(mixer):
    model = tiny(mixer)
    filt = {id(p) for m in model.modules() if isinstance(m, (RTF, ImplicitFilter, S4D)) for p in m.parameters()}
    for decay_all in (True, False):
        groups = model.param_groups(weight_decay=0.25, filter_lr=1e-3, decay_norm_and_bias=decay_all)
        seen = [id(p) for g in groups for p in g["params"]]
        assert sorted(seen) == sorted({id(p) for p in model.parameters()})  # each parameter once
        by_name = {g["name"]: g for g in groups}
        if mixer == "attention":
            assert "filter" not in by_name
        else:
            assert filt and {id(p) for p in by_name["filter"]["params"]} == filt
            assert by_name["filter"]["lr"] == 1e-3 and by_name["filter"]["weight_decay"] == 0.0
        assert by_name["decay"]["weight_decay"] == 0.25
        if decay_all:
            assert "no_decay" not in by_name
        else:
            assert all(p.dim() < 2 for p in by_name["no_decay"]["params"])
            assert all(p.dim() >= 2 for p in by_name["decay"]["params"])
        opt = torch.optim.AdamW(groups, lr=3e-4)
        assert [g.get("lr") for g in opt.param_groups] == [1e-3 if g["name"] == "filter" else 3e-4 for g in groups]


def test_flop_count_charges_the_s4d_kernel_per_mode_and_rtf_nothing_per_state():
    from hyena_rtf.training.flops import flops_per_token

    def count(mixer, n):
        cfg = preset_config(f"{mixer}-tiny", state_size=n, max_position_embeddings=128)
        return flops_per_token(HyenaRTFForCausalLM(cfg), 128), cfg

    (r16, _), (r64, _) = count("hyena_rtf", 16), count("hyena_rtf", 64)
    assert r16 == r64  # state-free: the RTF kernel costs the same FFTs at any order
    (s16, cfg), (s64, _) = count("hyena_s4d", 16), count("hyena_s4d", 64)
    filters = cfg.num_hidden_layers * (cfg.hyena_order - 1)
    # by hand: 8 FLOPs per complex mode and tap, (64 - 16) / 2 more modes, 128 taps over 128 tokens
    assert s64 - s16 == pytest.approx(filters * 8 * cfg.hidden_size * (64 - 16) / 2 * 128 / 128)


# ---------------------------------------------------------------------------- paired initialisation
@pytest.mark.parametrize("other", [
    dict(mixer="hyena"),
    dict(mixer="hyena_s4d"),
    dict(mixer="hyena_rtf", rtf_init="zeros", rtf_constraint="reflection", rtf_decay=[0.3, 1.5], state_size=4),
    dict(mixer="hyena_rtf", hyena_order=2, rtf_num_a=1, rtf_h0_init="one"),
])
def test_models_that_differ_in_their_filters_share_every_other_initial_weight(other):
    """One seed, two filter choices: identical embeddings, projections, short convolutions, heads
    and MLPs (the filters draw from their own generators), so a comparison between them is paired."""
    def build(**kw):
        torch.manual_seed(123)
        cfg = dict(vocab_size=61, max_position_embeddings=32, num_hidden_layers=2, state_size=8)
        return HyenaRTFForCausalLM(preset_config(f"{kw.pop('mixer')}-tiny", **{**cfg, **kw}))

    base = dict(build(mixer="hyena_rtf").named_parameters())
    model = build(**other)
    shared = [(n, p) for n, p in model.named_parameters() if ".filters." not in n]
    assert len(shared) == len([n for n in base if ".filters." not in n]) > 10
    for name, p in shared:
        assert torch.equal(p, base[name]), name
    # The filters themselves did draw random numbers (and different ones per layer).
    f0, f1 = (model.model.layers[i].mixer.filters[0] for i in (0, 1))
    assert f0.init_seed != f1.init_seed
    # A different seed changes the shared weights: the check above can fail.
    torch.manual_seed(124)
    other_seed = HyenaRTFForCausalLM(preset_config("hyena_rtf-tiny", vocab_size=61, max_position_embeddings=32,
                                                   num_hidden_layers=2, state_size=8))
    assert not torch.equal(dict(other_seed.named_parameters())["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_implicit_filter_mlp_keeps_the_gpt2_init_scale():
    model = tiny("hyena", initializer_range=0.02)
    f = model.model.layers[0].mixer.filters[0]
    linears = [m for m in f.mlp if isinstance(m, torch.nn.Linear)]
    for lin in linears:
        assert abs(lin.weight.std().item() - 0.02) < 0.005
        if lin.bias is not None:
            assert torch.equal(lin.bias, torch.zeros_like(lin.bias))


def test_pole_learning_rate_group():
    model = tiny("hyena_rtf")
    groups = {g["name"]: g for g in model.param_groups(weight_decay=0.1, filter_lr=1e-3, filter_pole_lr=5e-3)}
    poles = {id(p) for m in model.modules() if isinstance(m, RTF) for p in m.pole_parameters()}
    assert {id(p) for p in groups["filter_poles"]["params"]} == poles and groups["filter_poles"]["lr"] == 5e-3
    assert not poles & {id(p) for p in groups["filter"]["params"]}
    without = {g["name"] for g in model.param_groups(weight_decay=0.1, filter_lr=1e-3)}
    assert "filter_poles" not in without
