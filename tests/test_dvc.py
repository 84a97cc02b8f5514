"""DVC on top of the workflow: repro, no-op repro, metrics, plots, experiments, remotes."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import yaml

from conftest import run

pytestmark = pytest.mark.slow


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def dvc_project(project, tiny_params):
    """The project as its own git repository, with the tiny study as params.yaml."""
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "tiny study"], project)
    return project


def test_repro_is_then_a_no_op_and_metrics_plots_remote_work(dvc_project, tmp_path):
    project = dvc_project
    run(["dvc", "repro"], project)
    assert (project / "reports/report.html").exists()
    assert (project / "data/prepared/mnist1d.npz").exists()

    again = run(["dvc", "repro"], project)
    assert "didn't change" in again.stdout and "Running stage" not in again.stdout
    dry = run(["snakemake", "-n"], project)
    assert "Nothing to be done" in dry.stdout + dry.stderr

    metrics = run(["dvc", "metrics", "show"], project).stdout
    assert "reports/metrics.json" in metrics and "claims.C2.observed" in metrics

    run(["dvc", "plots", "show", "-o", "dvc_plots"], project)
    page = (project / "dvc_plots/index.html").read_text()
    assert "val_loss" in page and '"field": "cell"' in page

    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "local", str(remote)], project)
    run(["dvc", "push"], project)
    data = project / "data/prepared/mnist1d.npz"
    before = md5(data)
    shutil.rmtree(project / "data/prepared")
    shutil.rmtree(project / ".dvc/cache")
    run(["dvc", "pull", "data/prepared"], project)
    assert md5(data) == before


def test_experiment_with_another_grid(dvc_project):
    project = dvc_project
    run(["dvc", "exp", "run", "-S", "grid.batch_sizes=[32,64]"], project)
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], project).stdout
    assert "[32, 64]" in shown or "32, 64" in shown
    assert "claims.C2.observed" in shown
