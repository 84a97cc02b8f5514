"""A newcomer's first session on the default study, as the README tells it: the Quick start
command read from the README and run as written in a fresh copy (its own virtual environment,
the committed params.yaml, nothing patched), then the README's DVC commands on what it made.

The slowest test (the default study: about 5 minutes on 2 cores, plus the install). Every
other end-to-end test runs the tiny study; this one is what a user who changes nothing gets.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import copy_project
from readme_commands import install_part, quick_start

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def newcomer_env() -> dict[str, str]:
    """The environment of a shell that has never seen this project's virtual environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    ours = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != ours)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    for role in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{role}_NAME", "newcomer")
        env.setdefault(f"GIT_{role}_EMAIL", "newcomer@batchscale.invalid")
    return env


def sh(command: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`command` in bash, with the copy's own virtual environment activated once it exists."""
    activate = ". .venv/bin/activate && " if (cwd / ".venv/bin/activate").exists() else ""
    proc = subprocess.run(
        ["bash", "-c", activate + command], cwd=cwd, env=newcomer_env(),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"`{command}` failed ({proc.returncode}):\n{out[-6000:]}"
    return proc


def md5s(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def test_ci_runs_the_readme_commands():
    """.ci/run installs with the Quick start's install part and runs its test command, both read
    from the README (so a README edit changes what CI runs, and cannot drift from it)."""
    install_and_run, test = quick_start()
    ci = (ROOT / ".ci/run").read_text()
    assert 'eval "$(python3.11 tests/readme_commands.py install)"' in ci
    assert 'eval "$(python tests/readme_commands.py test)"' in ci
    assert "pytest" in test and "pip install" in install_part(install_and_run)


def test_readme_quick_start_then_dvc_on_the_untouched_default(tmp_path):
    project = copy_project(tmp_path / "clone")
    for command in ("git init -q -b main", "git add -A", "git commit -q -m clone"):
        sh(command, project)
    install_and_run, _ = quick_start(project / "README.md")

    study = sh(install_and_run, project, timeout=2400)
    for name in ("report.html", "claims.csv", "metrics.json", "tables/bench.csv"):
        assert (project / "reports" / name).is_file(), name
    assert "Nothing to be done" not in study.stdout + study.stderr
    runs = project / "results/mnist1d-cnn1d/runs"
    computed = md5s(runs)
    assert len([p for p in computed if p.endswith("weights.pt")]) == 7  # 4 batch sizes x 2 rules, bs32 shared

    # DVC adopts what Snakemake computed: it records it, retraining nothing.
    repro = sh("dvc repro", project)
    out = repro.stdout + repro.stderr
    assert "Running stage 'study'" in out and "batchscale train" not in out, out[-4000:]
    assert md5s(runs) == computed
    assert (project / "dvc.lock").is_file()

    again = sh("dvc repro", project)
    assert "Running stage" not in again.stdout and "didn't change" in again.stdout, again.stdout
    dry = sh("snakemake -n", project)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    assert "Data and pipelines are up to date" in sh("dvc status", project).stdout

    metrics = sh("dvc metrics show", project).stdout
    assert "reports/metrics.json" in metrics and "claims.C2.observed" in metrics
    sh("dvc plots show -o dvc_plots", project)
    page = (project / "dvc_plots/index.html").read_text()
    assert "val_loss" in page and "train_loss" in page
