"""The lock (constraints.txt) and the floors it is built on.

    python .ci/lock.py --floors        print ``name==<lower bound>`` for every direct dependency
    python .ci/lock.py constraints.txt write the exact version of every installed dependency

The lock pins every direct dependency of the pyproject (``dependencies`` and the ``dev`` extra) at
its lower bound, so the lock leg of CI tests the lower bounds and the latest leg the newest
releases the ranges allow; dependencies of dependencies are pinned at what pip chose for them.
``make lock`` installs from ``--floors`` in a fresh venv, then writes the lock from that venv.

torch is left out, and so is every package torch itself requires (sympy, networkx, nvidia-*,
...): users install the torch build they want first (CPU or CUDA), and pinning torch's
dependencies would fight the build they picked.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

SKIP = {"torch", "hyena-rtf", "pip", "setuptools", "wheel"}
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def floors(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """Lower bound (``>=``) of every direct dependency but torch, by canonical name."""
    project = tomllib.loads(pyproject.read_text())["project"]
    out = {}
    for req in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        name = canon(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
        if name in SKIP:
            continue
        lower = re.search(r">=\s*([0-9][^,;\s]*)", req)
        if lower is None:
            raise SystemExit(f"{req!r} in {pyproject} has no lower bound (>=)")
        out[name] = lower.group(1)
    return out


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
    from packaging.version import Version

    off = {n: (f, pins.get(n)) for n, f in floors().items() if pins.get(n) is None or Version(pins[n]) != Version(f)}
    if off:
        raise SystemExit(f"installed versions are not the pyproject's lower bounds: {off}; install with --floors")
    lines = [
        "# Exact versions for `make setup` / `make test` / the Dockerfile (pip install -c constraints.txt).",
        "# Regenerate with `make lock`: every direct dependency at the pyproject's lower bound, the rest as",
        "# pip resolved them. torch and torch's own dependencies are not pinned here: install the torch",
        "# build you want (CPU or CUDA) first.",
        *(f"{name}=={version}" for name, version in sorted(pins.items())),
    ]
    Path(out).write_text("\n".join(lines) + "\n")
    print(f"wrote {len(pins)} pins to {out}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--floors"]:
        print("\n".join(f"{name}=={version}" for name, version in sorted(floors().items())))
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else "constraints.txt")
