"""Documents of the ``wikitext_local`` lm-eval task: a raw WikiText file cut into articles."""

from __future__ import annotations

import os
import re
from pathlib import Path

# A top-level heading line, " = Title = ", starts an article (" = = Section = = " does not).
_TITLE = re.compile(r"^ = [^=].* = $")


def split_articles(text: str) -> list[str]:
    """The articles of a raw WikiText text, each from its title line to the line before the next
    title, blank lines at either end removed; together they hold every non-blank line once, in order."""
    articles: list[list[str]] = []
    for line in text.splitlines():
        if _TITLE.match(line) or not articles:
            articles.append([])
        articles[-1].append(line)
    out = []
    for lines in articles:
        while lines and not lines[-1].strip():  # WikiText's blank lines hold one space
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if lines:
            out.append("\n".join(lines))
    return out


def load(path: str | None = None, **_metadata):
    """``custom_dataset`` hook: ``{"test": Dataset}`` with one ``page`` per article of ``path``
    (from ``--metadata '{"path": ...}'``, else the ``WIKITEXT_RAW`` environment variable)."""
    import datasets

    path = path or os.environ.get("WIKITEXT_RAW")
    if not path:
        raise ValueError('wikitext_local needs the raw file: --metadata \'{"path": ".../wiki.test.raw"}\'')
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"wikitext_local: no such file {file}")
    pages = split_articles(file.read_text(encoding="utf-8"))
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict({"page": pages})})
