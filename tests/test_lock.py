"""The lock is the pyproject's lower bounds: what `make test` installs is what the pyproject promises."""

import importlib.util

import pytest
from packaging.version import Version

from helpers import ROOT

spec = importlib.util.spec_from_file_location("ci_lock", ROOT / ".ci" / "lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))


def test_the_lock_pins_every_direct_dependency_at_its_lower_bound():
    floors, pinned = lock.floors(), pins()
    assert len(floors) >= 15 and "transformers" in floors and "pytest-xdist" in floors
    for name, floor in floors.items():
        assert name in pinned, f"{name} is a dependency in pyproject.toml but not in constraints.txt"
        assert Version(pinned[name]) == Version(floor), f"{name}: pyproject lower bound {floor}, lock {pinned[name]}"
    assert "torch" not in pinned  # the user installs the torch build first


def test_floors_read_the_lower_bound_of_each_requirement(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["torch>=2.6", "Foo_Bar>=1.2,<2", "baz >= 0.3.1"]\n'
                         '[project.optional-dependencies]\ndev = ["qux[extra]>=4"]\n')
    assert lock.floors(pyproject) == {"foo-bar": "1.2", "baz": "0.3.1", "qux": "4"}
    pyproject.write_text('[project]\ndependencies = ["nobound"]\n[project.optional-dependencies]\ndev = []\n')
    with pytest.raises(SystemExit, match="no lower bound"):
        lock.floors(pyproject)
