"""Token caches (one memmap per split + meta.json) and the chunked dataset read from them.

A cache entry lives in ``<cache_dir>/<corpus>-<tokenizer>-<key>/`` where the key hashes every
preprocessing parameter (corpus identity: paths, sizes, mtimes or dataset name; tokenizer and
vocabulary size; EOS handling; format version). It holds ``<split>.bin`` (uint16 when the vocabulary
fits, else int32), ``meta.json`` and the tokenizer (``tokenizer.json``). Entries are written to a
temporary directory and renamed into place, so a crash never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .corpus import SPLITS, Corpus, safe_pieces
from ..errors import UserError
from .tokenization import EOS, TOKENIZERS, gpt2_tokenizer, load_tokenizer, tokenizer_identity, train_bpe

log = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "cache_key", "prepare_cache", "tokenize_text", "text_stats", "TokenChunks", "open_tokens"]

FORMAT_VERSION = 1


def cache_key(corpus: Corpus, tokenizer: str, vocab_size: Optional[int], add_eos: bool) -> str:
    """Directory name of the cache entry for these preprocessing parameters."""
    if tokenizer not in TOKENIZERS:
        raise UserError(f"unknown tokenizer {tokenizer!r}; choose one of {TOKENIZERS}")
    params = {
        "corpus": corpus.identity,
        "tokenizer": tokenizer,
        "vocab_size": vocab_size if tokenizer == "bpe" else None,
        "add_eos": add_eos,
        "format": FORMAT_VERSION,
    }
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    vocab = f"{vocab_size}" if tokenizer == "bpe" else ""
    return f"{corpus.name}-{tokenizer}{vocab}-{digest}"


def text_stats(text: str) -> dict:
    """Word and byte counts of raw text. Words are whitespace-separated strings (``str.split()``),
    the count WikiText word-level perplexity divides by."""
    return {"words": len(text.split()), "bytes": len(text.encode("utf-8")), "chars": len(text)}


def tokenize_text(tokenizer, text: str, add_eos: bool = False, desc: str = "tokenizing") -> np.ndarray:
    """Token ids of ``text`` (int64), tokenised in pieces with a progress bar."""
    pieces = safe_pieces(text)
    out = []
    batch = 16
    bar = tqdm(total=len(text), desc=desc, unit="char", unit_scale=True, disable=len(pieces) < 4, leave=False)
    for i in range(0, len(pieces), batch):
        chunk = pieces[i : i + batch]
        enc = tokenizer.backend_tokenizer.encode_batch(chunk, add_special_tokens=False)
        out.extend(np.asarray(e.ids, dtype=np.int64) for e in enc)
        bar.update(sum(len(p) for p in chunk))
    bar.close()
    ids = np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
    if add_eos:
        ids = np.append(ids, tokenizer.convert_tokens_to_ids(EOS))
    return ids


def prepare_cache(
    corpus: Corpus,
    cache_dir: str | Path,
    tokenizer: str = "bpe",
    vocab_size: Optional[int] = 4096,
    add_eos: bool = False,
    splits: tuple[str, ...] = SPLITS,
) -> Path:
    """Tokenise ``splits`` of ``corpus`` into a cache entry (reused when it exists); returns its path."""
    root = Path(cache_dir)
    entry = root / cache_key(corpus, tokenizer, vocab_size, add_eos)
    if entry.is_dir() and all((entry / f"{s}.bin").is_file() for s in splits):
        return entry
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=root))
    try:
        if entry.is_dir():  # a previous run prepared other splits: keep them
            shutil.copytree(entry, tmp, dirs_exist_ok=True)
        if (tmp / "tokenizer.json").is_file():
            tok = load_tokenizer(tmp)
        elif tokenizer == "gpt2":
            tok = gpt2_tokenizer()
        else:
            log.info(f"training a byte-level BPE tokenizer ({vocab_size} tokens) on the {corpus.name} train split")
            tok = train_bpe(safe_pieces(corpus.text("train"), 1 << 16), vocab_size)
        tok.save_pretrained(str(tmp))
        meta_path = tmp / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        meta.update({"corpus": corpus.identity, "tokenizer": tokenizer, "tokenizer_id": tokenizer_identity(tok),
                     "vocab_size": len(tok), "add_eos": add_eos, "format": FORMAT_VERSION})
        dtype = np.uint16 if len(tok) <= np.iinfo(np.uint16).max + 1 else np.int32
        meta["dtype"] = np.dtype(dtype).name
        meta.setdefault("splits", {})
        for split in splits:
            if (tmp / f"{split}.bin").is_file():
                continue
            text = corpus.text(split)
            ids = tokenize_text(tok, text, add_eos, desc=f"tokenizing {corpus.name}/{split}")
            if len(ids) < 2:
                raise UserError(f"the {split} split of {corpus.name} has fewer than 2 tokens; give it more text")
            ids.astype(dtype).tofile(tmp / f"{split}.bin")
            meta["splits"][split] = {"tokens": int(len(ids)), **text_stats(text)}
            log.info(f"{corpus.name}/{split}: {len(ids):,} tokens, {meta['splits'][split]['words']:,} words")
        meta_path.write_text(json.dumps(meta, indent=2))
        if entry.is_dir():
            shutil.rmtree(entry)
        os.replace(tmp, entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return entry


def open_tokens(entry: Path, split: str) -> np.memmap:
    """Read-only memmap of a split's token ids."""
    meta = json.loads((entry / "meta.json").read_text())
    path = entry / f"{split}.bin"
    if not path.is_file():
        raise UserError(f"split {split!r} is not in the token cache {entry}; prepare it first")
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")


class TokenChunks(Dataset):
    """Non-overlapping windows of a token file: item i is tokens[i*L : i*L + L + 1], returned as
    ``{"input_ids": (L,), "targets": (L,)}`` with targets shifted by one. The tail is dropped.

    The memmap opens lazily in each process, so the dataset pickles for workers and ddp_spawn.
    """

    def __init__(self, entry: str | Path, split: str, seq_len: int):
        if seq_len < 1:
            raise UserError(f"data.seq_len must be >= 1, got {seq_len}")
        self.entry, self.split, self.seq_len = Path(entry), split, seq_len
        meta = json.loads((self.entry / "meta.json").read_text())
        n = meta["splits"][split]["tokens"]
        self.n_chunks = (n - 1) // seq_len
        if self.n_chunks < 1:
            raise UserError(
                f"the {split} split has {n} tokens, fewer than data.seq_len + 1 = {seq_len + 1}; lower seq_len"
            )
        self._tokens: Optional[np.memmap] = None

    def __len__(self) -> int:
        return self.n_chunks

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._tokens is None:
            self._tokens = open_tokens(self.entry, self.split)
        start = i * self.seq_len
        window = torch.from_numpy(np.asarray(self._tokens[start : start + self.seq_len + 1], dtype=np.int64))
        return {"input_ids": window[:-1], "targets": window[1:]}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_tokens"] = None
        return state
