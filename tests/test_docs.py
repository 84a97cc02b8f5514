"""The repository must stand on its own: no file points at documents a clone does not have."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a clone has: the package, the docs, the workflow, the README (the planning notes
# CLAIMS.md and DESIGN.md live outside the repository, in ../shared/).
SCANNED = [
    ROOT / name
    for name in ("src", "docs", "workflow", "config", "README.md", "Snakefile", "dvc.yaml", "params.yaml")
]
OUTSIDE = re.compile(r"CLAIMS\.md|DESIGN\.md|\.\./shared\b")
TEXT_SUFFIXES = {".py", ".md", ".rst", ".smk", ".yaml", ".yml", ".ipynb", ".json", ".txt", ".cfg", ".toml"}


def scanned_files() -> list[Path]:
    files = []
    for place in SCANNED:
        candidates = [place] if place.is_file() else sorted(place.rglob("*"))
        files += [p for p in candidates if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.stem == p.name)]
    return files


def test_no_file_points_outside_the_repository():
    files = scanned_files()
    assert any(p.name == "probes.py" for p in files) and any(p.name == "decisions.md" for p in files)
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
        if OUTSIDE.search(line)
    ]
    assert not hits, "references to files outside the repository:\n" + "\n".join(hits)


def test_the_claims_document_the_package_cites_exists():
    assert (ROOT / "docs" / "claims.md").is_file()
