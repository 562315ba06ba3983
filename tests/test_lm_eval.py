"""lm-eval on an exported directory with the shipped local WikiText task (the hub is unreachable).

The session's byte-level BPE tokenizer (trained on WikiText validation text) and a tiny Hyena-RTF
model are exported, and the documented command

    lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True \
        --include_path lm_eval_tasks --tasks wikitext_local --metadata '{"path": ".../wiki.test.raw"}'

scores the first WikiText test articles. The perplexities it reports are checked against the same
model scored in-process with the protocol and the article split written out by hand.
"""

import copy
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hyena_rtf.checkpoints.hf_export import export_hf
from hyena_rtf.modeling.modeling_hyena_rtf import HyenaRTFForCausalLM
from hyena_rtf.modeling.presets import preset_config

ROOT = Path(__file__).resolve().parents[1]
EOS = "<|endoftext|>"
L_MAX = 128
N_DOCS = 2


def wikitext_articles(text: str) -> list[str]:
    """Articles found by searching the whole text for top-level ' = Title = ' lines; each runs to
    the next title, with whitespace-only lines trimmed from both ends."""
    starts = [m.start() for m in re.finditer(r"^ = [^=\n][^\n]* = $", text, flags=re.MULTILINE)]
    bounds = zip(starts, starts[1:] + [len(text)])
    out = []
    for a, b in bounds:
        art = re.sub(r"(?:\n[ \t]*)+\Z", "", text[a:b])
        out.append(art)
    return out


@torch.no_grad()
def rolling_loglikelihood(model, ids: list[int], eos: int) -> float:
    """lm-eval's rolling protocol written out: windows predict L_MAX new tokens each (the last one
    fewer); a window's input is the L_MAX positions of [EOS] + ids ending just before its last
    target, so targets are scored against everything in that span (a short last window gets the
    overlap as extra context)."""
    padded = [eos] + ids  # padded[j] precedes ids[j]
    total = 0.0
    for s in range(0, len(ids), L_MAX):
        e = min(s + L_MAX, len(ids))
        inp = padded[max(0, e - L_MAX) : e]
        logp = model(torch.tensor([inp])).logits[0, -(e - s) :].log_softmax(-1)  # (e - s, V)
        total += logp[torch.arange(e - s), torch.tensor(ids[s:e])].sum().item()
    return total


@pytest.mark.slow
def test_lm_eval_cli_on_local_wikitext(tmp_path, wikitext_dir, wiki_tokenizer):
    raw = wikitext_dir / "wiki.test.raw"
    docs = wikitext_articles(raw.read_text(encoding="utf-8"))[:N_DOCS]
    assert len(docs) == N_DOCS and all(len(d) > 500 for d in docs)

    tokenizer = copy.deepcopy(wiki_tokenizer)  # shared by the session: set the context on a copy
    tokenizer.model_max_length = L_MAX
    assert tokenizer.eos_token == EOS
    torch.manual_seed(0)
    config = preset_config(
        "hyena_rtf-tiny", vocab_size=len(tokenizer), max_position_embeddings=L_MAX, eos_token_id=tokenizer.eos_token_id
    )
    model = HyenaRTFForCausalLM(config).eval()
    export_hf(model, tokenizer, tmp_path / "model")

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_DATASETS_CACHE=str(tmp_path / "datasets"),
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        TOKENIZERS_PARALLELISM="false",
    )
    lm_eval = Path(sys.executable).parent / "lm_eval"
    # The README's command, run from the repository root (where lm_eval_tasks/ is).
    cmd = [
        str(lm_eval),
        "--model", "hf",
        "--model_args", f"pretrained={tmp_path / 'model'},trust_remote_code=True,dtype=float32",
        "--include_path", "lm_eval_tasks",
        "--tasks", "wikitext_local",
        "--metadata", json.dumps({"path": str(raw)}),
        "--limit", str(N_DOCS),
        "--batch_size", "2",
        "--output_path", str(tmp_path / "results"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result_files = list((tmp_path / "results").rglob("results*.json"))
    assert len(result_files) == 1, proc.stderr[-2000:]
    metrics = json.loads(result_files[0].read_text())["results"]["wikitext_local"]
    word_ppl, byte_ppl, bpb = (metrics[f"{m},none"] for m in ("word_perplexity", "byte_perplexity", "bits_per_byte"))

    # The same numbers from the in-process model and the protocol written out by hand.
    ll = sum(rolling_loglikelihood(model, tokenizer(d)["input_ids"], tokenizer.eos_token_id) for d in docs)
    words = sum(len(re.split(r"\s+", d)) for d in docs)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    # Compared in log space (perplexities of a random model are huge and amplify round-off).
    assert math.log(word_ppl) * words == pytest.approx(-ll, rel=1e-6)
    assert math.log(byte_ppl) * n_bytes == pytest.approx(-ll, rel=1e-6)
    assert bpb * math.log(2) * n_bytes == pytest.approx(-ll, rel=1e-6)
    # An untrained model is close to uniform over the 300 tokens.
    assert 100 < math.exp(-ll / sum(len(tokenizer(d)["input_ids"]) for d in docs)) < 1000
