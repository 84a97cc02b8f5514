"""What the README's first command installs: every pin in requirements/constraints.txt must
install on the oldest Python that pyproject.toml allows, not only on the newer 3.11 CI has.
Debian 12's python3.11 (what the README's `apt-get install python3.11-venv` gives) is 3.11.2;
soupsieve 4.1.3 needs 3.11.5, and the install stopped there with "ResolutionImpossible"."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def oldest_python() -> str:
    """The lowest version pyproject.toml's requires-python admits, as x.y.0."""
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    (lower,) = [s.version for s in SpecifierSet(spec) if s.operator == ">="]
    return lower if lower.count(".") == 2 else f"{lower}.0"


def pins() -> dict[str, str]:
    lines = (ROOT / "requirements/constraints.txt").read_text().splitlines()
    pairs = [line.split("#")[0].strip().split("==") for line in lines if "==" in line.split("#")[0]]
    return {canonicalize_name(name.split("[")[0]): version for name, version in pairs}


def test_every_pinned_package_installs_on_the_oldest_python_pyproject_allows():
    python = oldest_python()
    refused = []
    for name, version in pins().items():
        # The installed distribution is the pinned one (CI and the quick start install from the
        # constraints); its metadata says which Pythons it supports.
        installed = metadata.metadata(name)
        assert installed["Version"].split("+")[0] == version.split("+")[0], f"{name}: not the pinned version"
        requires = installed.get("Requires-Python")
        if requires and not SpecifierSet(requires).contains(python):
            refused.append(f"{name}=={version} requires Python {requires}")
    assert not refused, f"not installable on Python {python}: {refused}"
