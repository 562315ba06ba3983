"""Corpora, tokenizers, token caches and metrics against independent references."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from tokenizers import Tokenizer

from hyena_rtf.data.corpus import load_corpus, safe_pieces
from hyena_rtf.data.token_cache import TokenChunks, cache_key, open_tokens, prepare_cache, tokenize_text
from hyena_rtf.data.lm_datamodule import LMDataModule
from hyena_rtf.errors import UserError
from hyena_rtf.evaluation.metrics import bits_per_byte, perplexity, unigram_ppl, word_perplexity
from hyena_rtf.data.tokenization import gpt2_tokenizer, load_tokenizer, train_bpe


@pytest.fixture(scope="module")
def valid_text(wikitext_dir):
    return (wikitext_dir / "wiki.valid.raw").read_text(encoding="utf-8")


def test_gpt2_offline_matches_verified_files(shared_dir, valid_text):
    tok = gpt2_tokenizer()
    assert len(tok) == 50257 and tok.eos_token_id == 50256
    assert tok("Hello world").input_ids == [15496, 995]
    ref = Tokenizer.from_file(str(shared_dir / "tokenizers" / "gpt2" / "tokenizer.json"))
    sample = valid_text[:200_000]
    assert tok(sample).input_ids == ref.encode(sample).ids


def test_piecewise_tokenization_equals_whole_text(valid_text):
    tok = gpt2_tokenizer()
    text = valid_text[:300_000]
    pieces = safe_pieces(text, target=5_000)
    assert len(pieces) > 20 and "".join(pieces) == text
    whole = tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
    np.testing.assert_array_equal(tokenize_text(tok, text), np.asarray(whole))


def test_bpe_training_is_deterministic_and_reloads(tmp_path, valid_text):
    a = train_bpe([valid_text[:200_000]], 400)
    b = train_bpe([valid_text[:200_000]], 400)
    assert len(a) == 400
    sample = valid_text[200_000:210_000]
    assert a(sample).input_ids == b(sample).input_ids
    a.save_pretrained(str(tmp_path))
    assert load_tokenizer(tmp_path)(sample).input_ids == a(sample).input_ids
    assert a.decode(a(sample).input_ids) == sample  # byte-level: lossless


def test_cache_meta_counts_and_chunks(tmp_path, wikitext_dir, valid_text):
    corpus = load_corpus("files", train_path=str(wikitext_dir / "wiki.valid.raw"),
                         test_path=str(wikitext_dir / "wiki.test.raw"))
    entry = prepare_cache(corpus, tmp_path, "bpe", 300, splits=("train", "test"))
    meta = json.loads((entry / "meta.json").read_text())
    tr = meta["splits"]["train"]
    assert tr["words"] == len(valid_text.split())
    assert tr["bytes"] == len(valid_text.encode("utf-8"))
    ids = open_tokens(entry, "train")
    assert tr["tokens"] == len(ids) and meta["dtype"] == "uint16"
    tok = load_tokenizer(entry)
    assert tok.decode(np.asarray(ids[:500]).tolist()) == tok.decode(tok(valid_text[:3000]).input_ids[:500])
    ds = TokenChunks(entry, "train", seq_len=32)
    assert len(ds) == (len(ids) - 1) // 32
    item = ds[3]
    np.testing.assert_array_equal(item["input_ids"].numpy(), ids[96:128])
    np.testing.assert_array_equal(item["targets"].numpy(), ids[97:129])
    # A second call reuses the entry (no re-tokenisation).
    mtime = (entry / "train.bin").stat().st_mtime_ns
    assert prepare_cache(corpus, tmp_path, "bpe", 300, splits=("train", "test")) == entry
    assert (entry / "train.bin").stat().st_mtime_ns == mtime


def test_cache_key_names_every_parameter(tmp_path, wikitext_dir):
    path = tmp_path / "a.txt"
    path.write_text("hello world\n" * 50)
    corpus = load_corpus("files", train_path=str(path))
    base = cache_key(corpus, "bpe", 300, False)
    assert cache_key(corpus, "bpe", 301, False) != base
    assert cache_key(corpus, "bpe", 300, True) != base
    assert cache_key(corpus, "gpt2", None, False) != base
    path.write_text("hello world\n" * 51)  # the file changed
    assert cache_key(load_corpus("files", train_path=str(path)), "bpe", 300, False) != base


def test_hf_datasets_path_offline_with_local_source(tmp_path, wikitext_dir):
    """The wikitext103 loader goes through datasets.load_dataset; pointed at a local json source."""
    lines = (wikitext_dir / "wiki.test.raw").read_text(encoding="utf-8").splitlines(keepends=True)
    files = {}
    for split, chunk in (("train", lines[:2000]), ("validation", lines[2000:2500]), ("test", lines[2500:3000])):
        files[split] = str(tmp_path / f"{split}.jsonl")
        with open(files[split], "w") as f:
            for line in chunk:
                f.write(json.dumps({"text": line}) + "\n")
    corpus = load_corpus("wikitext103", dataset_path="json", data_files=files)
    assert corpus.text("validation") == "".join(lines[2000:2500])
    dm = LMDataModule(corpus="wikitext103", dataset_path="json", data_files=files, tokenizer="gpt2",
                      seq_len=64, batch_size=4, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup()
    assert dm.meta("test")["words"] == len("".join(lines[2500:3000]).split())
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 64)


def test_offline_default_corpus_has_disjoint_splits():
    corpus = load_corpus("shakespeare")
    val, test = corpus.text("validation"), corpus.text("test")
    assert "MACBETH" in val and "JULIUS CAESAR" in test.upper()
    assert "MACBETH" not in corpus.text("train")[:200_000]
    files = corpus.identity["files"]
    names = [set(n for n, _ in files[s]) for s in ("train", "validation", "test")]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    assert len(names[0]) >= 30


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="wikitext7"), "unknown corpus"),
        (dict(name="files", train_path="/nonexistent/x.txt"), "not found"),
        (dict(name="files"), "train_path"),
    ],
)
def test_bad_corpus_arguments(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(UserError, match=match):
        load_corpus(name, **kwargs)


def test_empty_and_non_utf8_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(UserError, match="empty"):
        load_corpus("files", train_path=str(empty)).text("train")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 au lait\n")
    with pytest.raises(UserError, match="not UTF-8"):
        load_corpus("files", train_path=str(bad)).text("train")


def test_metrics_against_hand_computation():
    nll = 3 * math.log(4) + math.log(2)  # four tokens with probabilities 1/4, 1/4, 1/4, 1/2
    assert abs(perplexity(nll, 4) - math.exp(nll / 4)) < 1e-12
    assert abs(word_perplexity(nll, 2) - math.exp(nll / 2)) < 1e-12
    assert abs(bits_per_byte(nll, 7) - 7 / 7) < 1e-12  # 7 bits over 7 bytes
    # unigram: counts +1 over vocab 4 from train [0, 0, 1] -> p = [3, 2, 1, 1] / 7
    p = np.array([3, 2, 1, 1]) / 7
    ref = math.exp(-np.mean(np.log(p[[0, 1, 3]])))
    assert abs(unigram_ppl(np.array([0, 0, 1]), np.array([0, 1, 3]), 4) - ref) < 1e-12
    with pytest.raises(ValueError, match="tokens"):
        perplexity(1.0, 0)


def test_validation_fraction_holds_out_whole_articles_at_the_end(tmp_path, wikitext_dir, valid_text):
    """data.validation_fraction: the last ~10% of the train file, cut at an article heading, is the
    validation split; train + validation is exactly the file; nothing of the test file is used."""
    from hyena_rtf.data.lm_datamodule import LMDataModule

    corpus = load_corpus("files", train_path=str(wikitext_dir / "wiki.valid.raw"), validation_fraction=0.1)
    train, validation = corpus.text("train"), corpus.text("validation")
    assert train + validation == valid_text
    assert 0.08 < len(validation) / len(valid_text) < 0.12
    assert validation.startswith(" = ") and not validation.startswith(" = = ")  # a level-1 heading
    assert train.endswith("\n")
    other = load_corpus("files", train_path=str(wikitext_dir / "wiki.valid.raw"), validation_fraction=0.2)
    assert other.key() != corpus.key()  # the cut is part of the cache key
    dm = LMDataModule(corpus="files", train_path=str(wikitext_dir / "wiki.valid.raw"), validation_fraction=0.1,
                      test_path=str(wikitext_dir / "wiki.test.raw"), vocab_size=300, seq_len=64, cache_dir=str(tmp_path))
    assert dm.available_splits() == ("train", "validation", "test")
    dm.check(["train", "validation", "test"])
    dm.prepare_data()
    assert dm.meta("validation")["words"] == len(validation.split())
    assert dm.meta("train")["words"] == len(train.split())


@pytest.mark.parametrize("kwargs,match", [
    (dict(validation_fraction=1.5), "in \\(0, 1\\)"),
    (dict(validation_fraction=0.1, validation_path="VALID"), "leave data.validation_path null"),
    (dict(validation_fraction=0.1, train_path=None, test_path="TRAIN"), "set data.train_path"),
])
def test_validation_fraction_errors(tmp_path, kwargs, match):
    path = tmp_path / "t.txt"
    path.write_text("a b c\n" * 100)
    args = dict(train_path=str(path))
    args.update({k: (str(path) if v in ("VALID", "TRAIN") else v) for k, v in kwargs.items()})
    with pytest.raises(UserError, match=match):
        load_corpus("files", **args)
    with pytest.raises(UserError, match="data=files only"):
        load_corpus("shakespeare", validation_fraction=0.1)
