"""DVC on top of the workflow: repro, no-op repro, metrics, plots, queued experiment sweeps,
and a remote that a fresh clone pulls the study from without recomputing anything."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_project, run

pytestmark = pytest.mark.slow

# The columns a sweep is compared on: the claims' verdict counts and each cell's best loss
# (the README shows the same command).
HEADLINE = ["dvc", "exp", "show", "--no-pager", "--csv", "--drop", r"claims\."]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def stage_params(dvc_yaml: dict) -> list[tuple[str, str]]:
    """(stage, dotted key) for every `params:` entry of every stage (params.yaml's, the default
    file; an entry given as {file: [keys]} names another file and is skipped)."""
    out = []
    for name, stage in dvc_yaml["stages"].items():
        for entry in stage.get("params", []):
            if isinstance(entry, str):
                out.append((name, entry))
            else:
                keys = entry.get("params.yaml", [])
                out.extend((name, key) for key in keys)
    return out


def test_every_stage_param_is_spelled_out_in_params_yaml_itself():
    """DVC reads params.yaml as committed, without the schema's defaults: a section that only
    the schema fills in makes `dvc repro` fail on the untouched default ("Parameters 'bench'
    are missing from 'params.yaml'"). Read the file itself, never a merged config."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    entries = stage_params(yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    assert entries
    for stage, key in entries:
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"stage {stage!r}: {key!r} is not in params.yaml"
            node = node[part]


@pytest.fixture
def untouched(project: Path) -> Path:
    """A fresh clone, params.yaml and dvc.yaml exactly as committed, nothing run yet."""
    run(["git", "init", "-q", "-b", "main"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "clone"], project)
    return project


def test_dvc_agrees_on_the_untouched_default(untouched):
    """DVC on the committed files: `dvc status` and, once the data stage has run (seconds; a
    dry run cannot plan a stage whose input does not exist yet), `dvc repro --dry` plan the
    study without an error. On the old params.yaml, which left `bench` to the schema, the dry
    run failed with "Parameters 'bench' are missing from 'params.yaml'"."""
    status = run(["dvc", "status"], untouched)
    assert "ERROR" not in status.stdout + status.stderr
    run(["dvc", "repro", "prepare"], untouched)
    dry = run(["dvc", "repro", "--dry"], untouched)
    out = dry.stdout + dry.stderr
    assert "Running stage 'study'" in out and "ERROR" not in out, out
    assert not (untouched / "results").exists()  # planned, not run


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("lr_rules: [none, linear]", "lr_rules: [none, malladi]", "grid.lr_rules: malladi is a rule for"),
        ("name: cnn1d ", 'name: custom\n  factory: "models/missing.py:make"\n ', "model.factory"),
    ],
    ids=["malladi-with-sgd", "missing-model-file"],
)
def test_dvc_repro_refuses_a_bad_model_or_optimizer_before_any_work(untouched, old, new, key):
    """params.yaml edited as a user would: `dvc repro` stops with the line naming the key, and
    nothing is written (no prepared data, no results)."""
    params = untouched / "params.yaml"
    assert old in params.read_text()
    params.write_text(params.read_text().replace(old, new, 1))
    proc = run(["dvc", "repro"], untouched, check=False)
    assert proc.returncode != 0 and key in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert not (untouched / "results").exists() and not (untouched / "data/prepared").exists()


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project as its own git repository with the tiny study as params.yaml, after one
    `dvc repro` whose dvc.lock is committed (what a user who ran the study has)."""
    from batchscale.config import deep_merge, read_yaml

    project = copy_project(tmp_path_factory.mktemp("dvc") / "project")
    params = deep_merge(read_yaml(project / "params.yaml"), read_yaml(project / "config/tiny.yaml"))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "tiny study"], project)
    run(["dvc", "repro"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "study results"], project)
    return project


def test_repro_is_then_a_no_op_and_metrics_plots_work(reproduced):
    project = reproduced
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


def test_a_fresh_clone_pulls_the_study_from_a_remote_with_nothing_left_to_do(reproduced, tmp_path):
    """Push data and results; a fresh clone pulls them, then (after `snakemake --touch`, which
    only aligns the checked-out files' modification times) neither DVC nor Snakemake has
    anything to do: nothing is regenerated."""
    project = reproduced
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "--local", "-d", "shared", str(remote)], project)
    run(["dvc", "push"], project)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["dvc", "remote", "add", "--local", "-d", "shared", str(remote)], clone)
    assert not (clone / "results").exists() and not (clone / "data/prepared").exists()
    run(["dvc", "pull"], clone)
    for output in ("data/prepared/mnist1d.npz", "reports/report.html", "reports/tables/runs.csv"):
        assert md5(clone / output) == md5(project / output), output

    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone).stdout
    touched = run(["snakemake", "--cores", "1", "--touch"], clone)
    assert "batchscale train" not in touched.stdout + touched.stderr  # touched, not run
    dry = run(["snakemake", "-n"], clone)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    assert "didn't change" in run(["dvc", "repro"], clone).stdout
    for output in ("data/prepared/mnist1d.npz", "reports/report.html"):
        assert md5(clone / output) == md5(project / output), output


def wait_for_queue(project: Path, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], project).stdout
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(5)
    raise AssertionError(f"the DVC queue did not finish:\n{status}")


def test_a_queued_sweep_runs_and_shows_its_headline_metrics(reproduced):
    project = reproduced
    sweeps = {"wide-grid": "grid.batch_sizes=[32,64]", "higher-lr": "train.base_lr=0.02"}
    for name, override in sweeps.items():
        run(["dvc", "exp", "run", "--queue", "--name", name, "-S", override], project)
    try:
        run(["dvc", "queue", "start", "--jobs", "1"], project)
        status = wait_for_queue(project)
    finally:
        run(["dvc", "queue", "stop", "--kill"], project, check=False)
    assert status.count("Success") == 2 and "Failed" not in status, status

    shown = run(HEADLINE, project).stdout
    lines = {line.split(",")[0]: line for line in shown.splitlines()}
    header = lines["Experiment"]
    assert "min_val_loss.none_bs32" in header and "verdicts.reproduced" in header
    assert "claims.C2.observed" not in header  # the headline view leaves the details out
    assert set(sweeps) <= set(lines), shown
    assert "min_val_loss.none_bs64" in header  # a cell only the wider grid has
    assert "0.02" in lines["higher-lr"] and "[32, 64]" in lines["wide-grid"]
