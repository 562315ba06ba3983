"""Write constraints.txt: the exact version of every installed dependency except torch's own.

Run by ``make lock`` inside a venv that was just installed without constraints (so it holds the
newest releases the pyproject allows). torch is left out, and so is every package torch itself
requires (sympy, networkx, nvidia-*, ...): users install the torch build they want first (CPU or
CUDA), and pinning torch's dependencies would fight the build they picked.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

SKIP = {"torch", "hyena-rtf", "pip", "setuptools", "wheel"}


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def torch_requirements() -> set[str]:
    names = set()
    for req in metadata.requires("torch") or []:
        if "extra ==" in req:
            continue
        names.add(canon(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0]))
    return names


def main(out: str) -> None:
    skip = SKIP | torch_requirements()
    pins = {}
    for dist in metadata.distributions():
        name = canon(dist.metadata["Name"])
        if name not in skip and not name.startswith(("nvidia-", "triton")):
            pins[name] = dist.version
    lines = [
        "# Exact versions for `make setup` / `make test` / the Dockerfile (pip install -c constraints.txt).",
        "# Regenerate with `make lock`. torch and torch's own dependencies are not pinned here:",
        "# install the torch build you want (CPU or CUDA) first.",
        *(f"{name}=={version}" for name, version in sorted(pins.items())),
    ]
    Path(out).write_text("\n".join(lines) + "\n")
    print(f"wrote {len(pins)} pins to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "constraints.txt")
