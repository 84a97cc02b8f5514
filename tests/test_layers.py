"""The package's modules import one way only: from the data, models and engine up through
aggregation and analysis, claims, figures and the report to the command line.

Every import counts, the ones inside functions too (the CLI and the figures import lazily so
that a step loads only what it needs; a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "batchscale"

# Lowest first. A module may import modules of its own layer or a lower one, never a higher.
LAYERS = [
    # foundations: no knowledge of training
    {"__init__", "errors", "io", "scaling", "progress", "allocator", "devices", "provenance", "cluster"},
    # what is trained on and what is trained
    {"data", "packed", "model_factory", "model_traits", "models", "config"},
    # training and measuring
    {"optimizers", "strategies", "engine", "timing", "probes", "probe_runs", "bench", "thread_layout"},
    # tables -> numbers
    {"analysis", "aggregate", "stats", "tuning", "tuned_resample", "tuned_analysis"},
    {"claim_specs", "claim_results", "claims", "tuned_claims"},
    # presenting numbers: HTML pieces and text, matplotlib figures
    {"report_html", "report_studies", "report_tuned", "figures_style", "figures_claims", "figures_landscape",
     "figures_beyond", "figures_tuned"},
    # the figure registry: each figure with its caption and its drawing
    {"figure_captions", "figures"},
    # rendering the report: papermill and nbconvert
    {"report"},
    {"cli", "__main__"},
]


def imports_of(path: Path) -> set[str]:
    """The package's modules that `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "batchscale":
            parts = node.module.split(".")
            found |= {alias.name for alias in node.names} if len(parts) == 1 else {parts[1]}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("batchscale.")}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    return (found & modules) - {path.stem}


def graph() -> dict[str, set[str]]:
    return {path.stem: imports_of(path) for path in sorted(PACKAGE.glob("*.py"))}


def test_every_module_has_a_layer():
    placed = set().union(*LAYERS)
    assert set(graph()) == placed, f"unplaced: {set(graph()) - placed}; gone: {placed - set(graph())}"


def test_no_module_imports_from_a_higher_layer():
    rank = {module: i for i, layer in enumerate(LAYERS) for module in layer}
    upward = [
        f"{module} -> {dep}" for module, deps in graph().items() for dep in deps if rank[dep] > rank[module]
    ]
    assert not upward, upward


def test_there_is_no_import_cycle():
    deps, done, path = graph(), set(), []

    def visit(module: str) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        path.append(module)
        for dep in sorted(deps[module]):
            visit(dep)
        path.pop()
        done.add(module)

    for module in deps:
        visit(module)


def test_the_checks_catch_an_upward_import(tmp_path, monkeypatch):
    """The checks can fail: a data module importing the report is an upward import and a cycle."""
    fake = tmp_path / "batchscale"
    fake.mkdir()
    for path in PACKAGE.glob("*.py"):
        (fake / path.name).write_text(path.read_text())
    (fake / "data.py").write_text((fake / "data.py").read_text() + "\nfrom batchscale import report\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    rank = {module: i for i, layer in enumerate(LAYERS) for module in layer}
    assert any(rank[dep] > rank["data"] for dep in graph()["data"])
    try:
        test_there_is_no_import_cycle()
    except AssertionError as exc:
        assert "data" in str(exc) and "report" in str(exc)
    else:
        raise AssertionError("the cycle data -> report -> ... -> data was not found")


# The house's sizes (issue "One place for each thing"): a module a reader can hold, a function
# that does one thing. A longer one needs a reason, written here.
MAX_MODULE_LINES = 550
MAX_FUNCTION_LINES = 60


def test_modules_and_functions_stay_small():
    too_long = []
    for path in sorted(PACKAGE.glob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.name}: {node.name} has {length} lines")
    assert not too_long, too_long
