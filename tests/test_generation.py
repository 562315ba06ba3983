"""Recurrent / cached decoding against parallel forwards, and generate() on top of it."""

import pytest
import torch
from transformers.generation.streamers import BaseStreamer

from hyena_rtf.modeling.cache import HyenaCache, RecomputeCache
from hyena_rtf.modeling.modeling_hyena_rtf import CACHE_FIELD, HyenaRTFForCausalLM
from hyena_rtf.modeling.presets import preset_config
from helpers import argmax_loop
from hyena_rtf.tasks.generate_task import generate_text

L_MAX = 64
V = 97


def tiny(mixer, **overrides):
    # A larger init std than GPT-2's 0.02 makes random models produce varied, non-repeating tokens.
    kw = dict(vocab_size=V, max_position_embeddings=L_MAX, num_hidden_layers=2, initializer_range=0.3)
    return HyenaRTFForCausalLM(preset_config(f"{mixer}-tiny", **{**kw, **overrides})).eval()


MODELS = {
    "hyena_rtf": dict(mixer="hyena_rtf"),
    "hyena": dict(mixer="hyena"),
    # A random tiny S4D model with the preset's 4 modes and short steps falls into repeating one
    # token; more modes and longer steps give it the memory the non-degeneracy check below needs.
    "hyena_s4d": dict(mixer="hyena_s4d", state_size=16, s4d_dt_min=0.1, s4d_dt_max=1.0),
    "attention-learned": dict(mixer="attention"),
    "attention-rotary": dict(mixer="attention", position_embedding_type="rotary"),
}


def build(key):
    kw = dict(MODELS[key])
    return tiny(kw.pop("mixer"), **kw)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("key", list(MODELS))
@torch.no_grad()
def test_prefill_then_steps_reproduce_parallel_logits(key):
    model = build(key)
    ids = torch.randint(0, V, (2, L_MAX))
    ref = model(ids).logits  # (2, L_MAX, V)
    for split in (1, 23):
        out = model(ids[:, :split], use_cache=True)
        logits, cache = [out.logits], out[CACHE_FIELD]
        for t in range(split, L_MAX):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            logits.append(out.logits)
        assert cache.get_seq_length() == L_MAX
        assert rel_err(torch.cat(logits, 1), ref) < 1e-4, split


@pytest.mark.parametrize("key", ["hyena_rtf", "hyena_s4d"])
@torch.no_grad()
def test_chunked_prefill_continues_a_recurrent_state(key):
    model = build(key)
    ids = torch.randint(0, V, (2, 50))
    ref = model(ids).logits
    cache = model.new_cache()
    parts = [model(ids[:, a:b], cache=cache, use_cache=True).logits for a, b in ((0, 17), (17, 18), (18, 50))]
    assert isinstance(cache, HyenaCache)
    assert rel_err(torch.cat(parts, 1), ref) < 1e-4


@pytest.mark.parametrize("key", list(MODELS))
@pytest.mark.parametrize("prompt_len", [1, 12])
@torch.no_grad()
def test_greedy_generate_equals_argmax_over_parallel_forwards(key, prompt_len):
    model = build(key)
    ids = torch.randint(0, V, (3, prompt_len))
    n = L_MAX - prompt_len
    out = model.generate(ids, max_new_tokens=n, do_sample=False, min_new_tokens=n)
    ref = argmax_loop(model, ids, n)
    assert out.shape == (3, L_MAX)
    assert torch.equal(out, ref)
    assert len(set(out[0, prompt_len:].tolist())) > 3  # not a degenerate repetition


@pytest.mark.parametrize("key", ["hyena_rtf", "hyena_s4d"])
@torch.no_grad()
def test_recurrent_generation_runs_far_past_l_max(key):
    model = build(key)
    ids = torch.randint(0, V, (2, 5))
    n = 3 * L_MAX
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False)
    out = model.generate(ids, output_logits=True, return_dict_in_generate=True, **kw)
    seq, step_logits = out.sequences, torch.stack(out.logits, 1)  # (2, 5+n), (2, n, V)
    assert seq.shape == (2, 5 + n) and torch.isfinite(step_logits).all()
    # The recurrence is one system for any length: a single chunked prefill over the whole
    # sequence (FFT, chunks of l_max) scores every position exactly as the token-by-token steps did.
    prefill_logits = model(seq[:, :-1], use_cache=True).logits[:, 4:]  # predictions of tokens 5..
    assert rel_err(step_logits, prefill_logits) < 1e-4


@torch.no_grad()
def test_recompute_generation_slides_a_window_of_l_max():
    model = build("hyena")
    ids = torch.randint(0, V, (2, 7))
    n = L_MAX + 20
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    assert torch.equal(out, argmax_loop(model, ids, n, window=L_MAX))


@torch.no_grad()
def test_recompute_prefill_longer_than_l_max_scores_each_position_on_its_window():
    model = build("hyena")
    ids = torch.randint(0, V, (1, L_MAX + 5))
    out = model(ids, use_cache=True)
    assert isinstance(out[CACHE_FIELD], RecomputeCache)
    for t in (3, L_MAX - 1, L_MAX, L_MAX + 4):
        ref = model(ids[:, max(0, t - L_MAX + 1) : t + 1]).logits[:, -1]
        assert rel_err(out.logits[:, t], ref) < 1e-5, t


@pytest.mark.parametrize("key", ["hyena_rtf", "hyena", "hyena_s4d", "attention-learned"])
@torch.no_grad()
def test_left_padded_batch_generation_equals_one_by_one(key):
    model = build(key)
    prompts = [torch.randint(0, V, (n,)) for n in (9, 3, 6)]
    ids = torch.zeros(3, 9, dtype=torch.long)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, 9 - len(p) :], mask[i, 9 - len(p) :] = p, 1
    kw = dict(max_new_tokens=15, min_new_tokens=15, do_sample=False)
    out = model.generate(ids, attention_mask=mask, pad_token_id=0, **kw)
    for i, p in enumerate(prompts):
        one = model.generate(p.unsqueeze(0), **kw)
        assert torch.equal(out[i, 9:], one[0, len(p) :]), i


@pytest.mark.parametrize("key", ["hyena_rtf", "hyena", "hyena_s4d", "attention-rotary"])
@torch.no_grad()
def test_beam_search_with_cache_equals_beam_search_without(key):
    model = build(key)  # reorder_cache must follow the beams exactly
    ids = torch.randint(0, V, (2, 6))
    kw = dict(max_new_tokens=12, min_new_tokens=12, num_beams=3, do_sample=False)
    assert torch.equal(model.generate(ids, use_cache=True, **kw), model.generate(ids, use_cache=False, **kw))


@pytest.mark.parametrize("key", ["hyena_rtf", "hyena", "attention-rotary"])
@torch.no_grad()
def test_generate_from_inputs_embeds_equals_from_ids(key):
    model = build(key)
    ids = torch.randint(0, V, (2, 6))
    kw = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False)
    from_ids = model.generate(ids, **kw)
    from_embeds = model.generate(inputs_embeds=model.get_input_embeddings()(ids), **kw)  # new tokens only
    assert torch.equal(from_embeds, from_ids[:, 6:])


class _Collect(BaseStreamer):
    def __init__(self):
        self.chunks = []

    def put(self, value):
        self.chunks.append(value.flatten().tolist())

    def end(self):
        self.chunks.append(None)


def tv(p, q) -> float:
    """Total variation distance of two distributions over the vocabulary."""
    return 0.5 * float((p - q).abs().sum())


@torch.no_grad()
def sampled_first_tokens(model, ids, n=3000, **options) -> torch.Tensor:
    """Empirical distribution of the first token ``generate_text`` samples after ``ids`` (n draws in one batch)."""
    out = generate_text(model, None, ids.expand(n, -1), max_new_tokens=1, do_sample=True, stream=False, **options)
    assert out.shape == (n, ids.shape[1] + 1)
    return torch.bincount(out[:, -1], minlength=V).double() / n


@torch.no_grad()
def test_temperature_top_k_and_top_p_shape_the_sampled_distribution():
    """Sampled frequencies follow softmax(logits / T) of a parallel forward, restricted to the top_k
    tokens or to the smallest set of most likely tokens holding top_p of the probability."""
    model = build("hyena_rtf")
    ids = torch.randint(0, V, (1, 4))
    logits = model(ids).logits[0, -1].double()
    cold, hot = (logits / 0.5).softmax(-1), (logits / 2.0).softmax(-1)
    assert tv(cold, hot) > 0.6  # the two temperatures are far apart at this prompt
    for temperature, expected, other in ((0.5, cold, hot), (2.0, hot, cold)):
        freq = sampled_first_tokens(model, ids, temperature=temperature, top_k=0)
        assert tv(freq, expected) < 0.1 and tv(freq, other) > 0.5, temperature

    probs = logits.softmax(-1)
    top5 = probs.topk(5).indices
    expected = torch.zeros(V, dtype=torch.float64)
    expected[top5] = probs[top5] / probs[top5].sum()
    freq = sampled_first_tokens(model, ids, top_k=5)
    assert set(freq.nonzero().flatten().tolist()) == set(top5.tolist())
    assert tv(freq, expected) < 0.05

    order = probs.argsort(descending=True)
    keep = order[: int((probs[order].cumsum(0) < 0.85).sum()) + 1]  # most likely first, until 0.85 is held
    assert 2 <= len(keep) < V // 2
    expected = torch.zeros(V, dtype=torch.float64)
    expected[keep] = probs[keep] / probs[keep].sum()
    freq = sampled_first_tokens(model, ids, top_k=0, top_p=0.85)
    assert set(freq.nonzero().flatten().tolist()) == set(keep.tolist())
    assert tv(freq, expected) < 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
@torch.no_grad()
def test_sampling_with_top_k_1_is_greedy(seed):
    model = build("hyena_rtf")
    ids = torch.randint(0, V, (2, 5))
    torch.manual_seed(seed)
    out = generate_text(model, None, ids, max_new_tokens=20, do_sample=True, temperature=1.7, top_k=1, stream=False)
    assert torch.equal(out, argmax_loop(model, ids, 20))


@torch.no_grad()
def test_repetition_penalty_divides_the_logits_of_tokens_already_there():
    """Greedy decoding with repetition_penalty=theta equals an argmax loop over parallel forwards
    whose logits of tokens already in the sequence are divided by theta (multiplied if negative)."""
    model = build("hyena_rtf")
    ids = torch.randint(0, V, (2, 6))
    theta = 1.5
    seq = ids
    for _ in range(30):
        logits = model(seq).logits[:, -1]
        for row in range(seq.shape[0]):
            seen = seq[row].unique()
            logits[row, seen] = torch.where(logits[row, seen] > 0, logits[row, seen] / theta, logits[row, seen] * theta)
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    out = generate_text(model, None, ids, max_new_tokens=30, do_sample=False, repetition_penalty=theta, stream=False)
    assert torch.equal(out, seq)
    plain = argmax_loop(model, ids, 30)
    assert not torch.equal(plain, seq)  # the penalty changed the text

    def repeats(x):
        return sum(len(row) - len(set(row)) for row in x[:, 6:].tolist())

    assert repeats(seq) < repeats(plain)


@torch.no_grad()
def test_streamer_receives_the_generated_tokens():
    model = build("hyena_rtf")
    ids = torch.randint(0, V, (1, 4))
    streamer = _Collect()
    out = model.generate(ids, streamer=streamer, max_new_tokens=20, min_new_tokens=20, do_sample=True, top_k=20)
    assert out.shape == (1, 24) and int(out.max()) < V
    streamed = [t for c in streamer.chunks[1:-1] for t in c]  # first put is the prompt
    assert streamed == out[0, 4:].tolist() and streamer.chunks[-1] is None
    assert streamer.chunks[0] == ids[0].tolist()


def test_learned_position_attention_cannot_generate_past_its_table():
    model = build("attention-learned")
    with pytest.raises(ValueError, match="learned position table"):
        model.generate(torch.zeros(1, 60, dtype=torch.long), max_new_tokens=10, min_new_tokens=10, do_sample=False)


@pytest.mark.parametrize("key", ["hyena_rtf", "hyena_s4d"])
@torch.no_grad()
def test_recurrent_state_size_does_not_grow_with_position(key):
    # RTF: N fp32 numbers per channel; S4D: N/2 complex64 numbers, the same bytes.
    model = build(key)
    cache = model(torch.randint(0, V, (2, 10)), use_cache=True)[CACHE_FIELD]
    before = cache.memory_bytes()
    model(torch.randint(0, V, (2, 150)), cache=cache, use_cache=True)
    cfg = model.config
    short = (cfg.hyena_order + 1) * cfg.hidden_size * (cfg.short_filter_order - 1)
    per_layer = short + (cfg.hyena_order - 1) * cfg.hidden_size * cfg.state_size
    assert cache.memory_bytes() == before == 2 * cfg.num_hidden_layers * per_layer * 4


@pytest.mark.parametrize("key", ["hyena_rtf", "hyena", "attention-rotary"])
@torch.no_grad()
def test_both_cache_keywords_continue_the_same_state(key):
    # transformers < 5.24 passes the cache as past_key_values=, >= 5.24 as cache=: both must
    # continue the prompt's state, i.e. equal the parallel forward over prompt + new tokens.
    model = build(key)
    ids = torch.randint(0, V, (2, 12))
    ref = model(ids).logits[:, 8:]
    for name in ("cache", "past_key_values"):
        out = model(ids[:, :8], use_cache=True)
        assert getattr(out, CACHE_FIELD) is not None
        nxt = model(ids[:, 8:], use_cache=True, **{name: out[CACHE_FIELD]})
        assert rel_err(nxt.logits, ref) < 1e-4, name
    with pytest.raises(ValueError, match="pass the decoding cache once"):
        model(ids[:, 8:], cache=model.new_cache(), past_key_values=model.new_cache())


@pytest.mark.parametrize("key", ["hyena_rtf", "hyena"])
@torch.no_grad()
def test_generate_accepts_a_user_cache(key):
    # generate() asks every cache for is_linear (transformers >= 5.24); a cache made by the user
    # and handed in under the installed keyword must decode exactly like the parallel reference.
    model = build(key)
    ids = torch.randint(0, V, (2, 5))
    out = model.generate(ids, max_new_tokens=20, min_new_tokens=20, do_sample=False, **{CACHE_FIELD: model.new_cache()})
    assert torch.equal(out, argmax_loop(model, ids, 20, window=L_MAX))


@torch.no_grad()
def test_generate_prints_no_deprecation_warning(recwarn, capsys):
    from transformers.utils import logging as hf_logging

    model = build("hyena_rtf")
    hf_logging.enable_propagation()
    try:
        import logging

        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("transformers").addHandler(handler)
        model.generate(torch.randint(0, V, (1, 3)), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
        hf_logging.disable_propagation()
    said = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    said += [str(w.message) for w in recwarn.list]
    captured = capsys.readouterr()
    said += [line for line in (captured.out + captured.err).splitlines() if "deprecat" in line.lower()]
    assert not [m for m in said if "deprecat" in m.lower() or "cache" in m.lower()], said
