"""Trustworthy under faults and bad input (issue 6), on the real CLI, Snakemake and DVC.

Exact resume after SIGKILL/SIGTERM/SIGINT, bit-for-bit reruns across clones and --cores,
bad configuration refused before any job, safe loading of checkpoints and YAML, Snakemake's
lock against a concurrent run, DVC noticing a hand-edited data file, and a diverging cell
recorded rather than crashing the study.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
import yaml

from batchscale import cli, data
from batchscale.config import ConfigError, deep_merge, read_yaml, run_dirs, validate
from batchscale.io import UnsafeFileError, atomic_path, load_torch, write_csv_atomic

from conftest import copy_project, random_arrays, run, tool_env

# Long enough that a kill reliably lands mid-run (the first checkpoint appears after one
# epoch of 40), short enough that four interrupted runs and their references stay cheap.
LONG = {"train": {"epochs": 40}}
RUN = "results/mnist1d-cnn1d/runs/bs32_lr0.01"  # the tiny grid's base cell, shared by every LR rule


# --- helpers -------------------------------------------------------------------------------


def study_params(project: Path, *overrides: dict) -> dict:
    """params.yaml with config/tiny.yaml and `overrides` on top, as the project copy has them."""
    params = read_yaml(project / "params.yaml")
    for layer in (read_yaml(project / "config/tiny.yaml"), *overrides):
        params = deep_merge(params, layer)
    return params


def write_override(project: Path, override: dict) -> None:
    """override.yaml, which `snakemake_cmd` layers on top of the tiny study."""
    (project / "override.yaml").write_text(yaml.safe_dump(override))


def snakemake_cmd(cores: int, *targets: str) -> list[str]:
    """Snakemake on the tiny study with the project's override.yaml on top."""
    return ["snakemake", "--cores", str(cores), "--configfile", "config/tiny.yaml", "override.yaml",
            "--", *targets]  # fmt: skip


def train_targets(project: Path) -> list[str]:
    params = validate(study_params(project, LONG))
    return [f"{d}/history.csv" for d in run_dirs(params)]


def history(run_dir: Path) -> pd.DataFrame:
    """A run's history without its timings: everything that must be reproducible."""
    return pd.read_csv(run_dir / "history.csv").drop(columns="epoch_seconds")


def assert_same_run(got: Path, expected: Path) -> None:
    """Histories equal to the last bit (but for timings), weights equal tensor by tensor."""
    pd.testing.assert_frame_equal(history(got), history(expected), check_exact=True)
    a, b = load_torch(got / "weights.pt"), load_torch(expected / "weights.pt")
    for part in ("final", "best", "init"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{got.name}: {part}/{name} differs"
    assert (
        json.loads((got / "summary.json").read_text())["identity"]
        == json.loads((expected / "summary.json").read_text())["identity"]
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    """Start `cmd` in its own process group (so a signal can reach it and its jobs, as a
    terminal's Ctrl-C or a batch scheduler's does), output to a file (no pipe to fill).

    SIGINT is reset to its default first: a test run started in the background of a script
    (`.ci/run &`) inherits SIGINT ignored, and so would Snakemake, which then ran through a
    Ctrl-C as if nothing had happened. A user's terminal delivers it."""
    with (cwd / "background.out").open("w") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=tool_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_default_sigint)  # fmt: skip


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def training_job(snakemake: subprocess.Popen) -> psutil.Process | None:
    """The `batchscale train` process Snakemake started, once it runs."""
    for child in psutil.Process(snakemake.pid).children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if any(part.endswith("batchscale") for part in cmdline) and "train" in cmdline:
            return child
    return None


@contextmanager
def running_training(project: Path) -> Iterator[tuple[subprocess.Popen, psutil.Process]]:
    """Snakemake training the RUN cell, yielded once its job has written a first checkpoint."""
    proc = start(snakemake_cmd(1, f"{RUN}/history.csv"), project)
    try:
        wait_for(lambda: (project / RUN / "checkpoint.pt").exists(), "the first checkpoint")
        job = training_job(proc)
        assert job is not None, (project / "background.out").read_text()
        yield proc, job
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def tree_state(project: Path, *folders: str) -> dict[str, tuple[int, int]]:
    """Every file under `folders`, with size and modification time, to see what was written."""
    return {
        str(path.relative_to(project)): (path.stat().st_size, path.stat().st_mtime_ns)
        for folder in folders
        for path in sorted((project / folder).rglob("*"))
        if path.is_file()
    }


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def study_repo(root: Path, params: Callable[[Path], dict]) -> Path:
    """A project copy as its own git repository (DVC needs one), `params(project)` as params.yaml."""
    project = copy_project(root / "project")
    (project / "params.yaml").write_text(yaml.safe_dump(params(project), sort_keys=False))
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "study"]):
        run(["git", *cmd], project)
    return project


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy in which every run of the (longer) tiny grid trained uninterrupted, one
    job at a time: the reference for the resumed and the parallel runs."""
    project = copy_project(tmp_path_factory.mktemp("reference") / "project")
    write_override(project, LONG)
    run(snakemake_cmd(1, *train_targets(project)), project)
    return project


@pytest.fixture
def trained_data(reference: Path, tmp_path: Path) -> Path:
    """A copy of the reference project with its data prepared but no training run yet."""
    project = tmp_path / "project"
    shutil.copytree(reference, project, symlinks=True)
    shutil.rmtree(project / "results")
    return project


# --- 1. exact resume -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "sig"),
    [
        ("job", signal.SIGKILL),  # the job alone (OOM killer, preempted job): Snakemake reports it failed
        ("group", signal.SIGKILL),  # Snakemake too (lost node): its lock stays until --unlock
        ("group", signal.SIGTERM),  # a batch scheduler's preemption
        ("group", signal.SIGINT),  # Ctrl-C
    ],
    ids=lambda value: value.name if isinstance(value, signal.Signals) else value,
)
def test_killed_training_resumes_exactly(trained_data, reference, target, sig):
    project = trained_data
    with running_training(project) as (proc, job):
        if target == "job":
            job.send_signal(sig)
        else:
            os.killpg(proc.pid, sig)
        assert proc.wait(timeout=60) != 0
    run_dir = project / RUN
    # Nothing that marks the run finished was written; what is left is the checkpoint (and at
    # most a hidden temp file, if the kill landed inside a write).
    leftovers = {p.name for p in run_dir.iterdir()}
    assert {name for name in leftovers if not name.startswith(".")} == {"checkpoint.pt"}, leftovers
    assert all(name.endswith(".tmp") for name in leftovers if name.startswith("."))
    assert load_torch(run_dir / "checkpoint.pt")["epoch"] >= 1

    if sig == signal.SIGKILL and target == "group":
        run(["snakemake", "--unlock"], project)  # what Snakemake's lock message tells users
    run(snakemake_cmd(1, f"{RUN}/history.csv"), project)
    log = (project / "logs/mnist1d-cnn1d/train/bs32_lr0.01.log").read_text()
    assert "resuming from" in log, log
    assert_same_run(run_dir, reference / RUN)
    assert not (run_dir / "checkpoint.pt").exists()


def test_a_write_that_fails_midway_leaves_the_previous_file_and_no_temp(tmp_path):
    """What every output goes through: a temp name beside the target, renamed only when complete."""
    target = tmp_path / "history.csv"
    write_csv_atomic(target, pd.DataFrame({"epoch": [1]}))
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("epoch\n1\n2")
        raise RuntimeError("killed mid-write")
    assert pd.read_csv(target)["epoch"].tolist() == [1]
    assert [path.name for path in tmp_path.iterdir()] == ["history.csv"]


# --- 4. bit-for-bit reruns -----------------------------------------------------------------


@pytest.mark.slow
def test_fresh_clone_with_parallel_jobs_gives_identical_runs(reference, tmp_path):
    """Another clone, another path, every job at once (--cores 4, not 1): the same bits."""
    project = copy_project(tmp_path / "clone")
    write_override(project, LONG)
    targets = train_targets(project)
    run(snakemake_cmd(4, *targets), project)
    assert md5(project / "data/prepared/mnist1d.npz") == md5(reference / "data/prepared/mnist1d.npz")
    for target in targets:
        run_dir = Path(target).parent
        assert_same_run(project / run_dir, reference / run_dir)


# --- 5. concurrent invocations -------------------------------------------------------------


@pytest.mark.slow
def test_second_snakemake_is_locked_out_and_first_finishes_intact(trained_data, reference):
    project = trained_data
    with running_training(project) as (proc, job):
        # Hold the job still so that the first run is certainly alive while the second starts.
        job.suspend()
        second = run(snakemake_cmd(1, f"{RUN}/history.csv"), project, check=False)
        job.resume()
        assert proc.wait(timeout=120) == 0, (project / "background.out").read_text()
    assert second.returncode != 0
    assert "LockException" in second.stdout + second.stderr
    assert_same_run(project / RUN, reference / RUN)


# --- 2. bad configuration fails fast, from Snakemake and from DVC --------------------------


@pytest.fixture(scope="module")
def dvc_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project as its own git repository with the tiny study as params.yaml (for DVC)."""
    return study_repo(tmp_path_factory.mktemp("dvc"), study_params)


def with_override(override: dict) -> Callable[[str], str]:
    return lambda text: yaml.safe_dump(deep_merge(yaml.safe_load(text), override), sort_keys=False)


EVIL_MARKER = "evil-was-here"

BAD_CONFIGS = {
    # case: (how params.yaml is spoiled, what the one error line must name)
    "batch_size_over_train_set": (
        with_override({"grid": {"batch_sizes": [32, 100000]}}),
        ["grid.batch_sizes", "100000"],
    ),
    "duplicated_batch_sizes": (
        with_override({"grid": {"batch_sizes": [32, 32]}}),
        ["grid.batch_sizes", "[32, 32]"],
    ),
    "unknown_lr_rule": (with_override({"grid": {"lr_rules": ["cubic"]}}), ["grid.lr_rules", "'cubic'"]),
    "zero_epochs": (with_override({"train": {"epochs": 0}}), ["train.epochs", "0"]),
    "infinite_lr": (with_override({"train": {"base_lr": math.inf}}), ["train.base_lr", "inf"]),
    "nan_lr": (with_override({"train": {"base_lr": math.nan}}), ["train.base_lr", "nan"]),
    "negative_lr": (with_override({"train": {"base_lr": -0.1}}), ["train.base_lr", "-0.1"]),
    "duplicate_seeds": (with_override({"train": {"seeds": [1, 1]}}), ["train.seeds", "[1, 1]"]),
    "unknown_data_set": (with_override({"data": {"name": "imagenet"}}), ["data.name", "'imagenet'"]),
    "unknown_model": (with_override({"model": {"name": "resnet"}}), ["model.name", "'resnet'"]),
    "yaml_syntax_error": (lambda text: text + "extra: [1, 2\n", ["params.yaml", "line"]),
    # Safe loading: a tag that would run code under an unsafe loader is an error, not a call.
    "python_object_tag": (
        lambda text: text + f"extra: !!python/object/apply:os.mkdir [{EVIL_MARKER}]\n",
        ["params.yaml", "line"],
    ),
}


@contextmanager
def spoiled_params(project: Path, spoil: Callable[[str], str]) -> Iterator[None]:
    params = project / "params.yaml"
    params.write_text(spoil(params.read_text()))
    try:
        yield
    finally:
        # A case that wrongly ran jobs must not spoil the next one: back to the committed state.
        run(["git", "checkout", "-q", "--", "."], project)
        run(["git", "clean", "-fdqx"], project)


def one_error_line(output: str, marker: str) -> str:
    """The single line of `output` that carries the error (no traceback around it)."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if marker in line]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_configuration_stops_snakemake_and_dvc_before_any_job(dvc_tiny, case):
    project = dvc_tiny
    spoil, names = BAD_CONFIGS[case]
    before = tree_state(project, "results", "reports", "data")
    with spoiled_params(project, spoil):
        snakemake = run(["snakemake", "--cores", "1"], project, check=False)
        dvc = run(["dvc", "repro"], project, check=False)
    assert snakemake.returncode != 0 and dvc.returncode != 0

    line = one_error_line(snakemake.stdout + snakemake.stderr, "batchscale: invalid configuration:")
    assert all(name in line for name in names), line
    dvc_output = dvc.stdout + dvc.stderr
    if case in ("yaml_syntax_error", "python_object_tag"):
        # DVC parses params.yaml itself, before any stage: its own (multi-line) message.
        assert "Traceback" not in dvc_output and "unable to read: 'params.yaml'" in dvc_output, dvc_output
    else:
        line = one_error_line(dvc_output, "batchscale: invalid configuration:")
        assert all(name in line for name in names), line

    assert tree_state(project, "results", "reports", "data") == before
    assert not (project / "results").exists() and not (project / "data/prepared").exists()
    assert not (project / EVIL_MARKER).exists()


@pytest.mark.slow
def test_yaml_error_in_a_configfile_override_stops_snakemake(dvc_tiny):
    """Snakemake parses --configfile files itself, before the Snakefile runs: its message names
    neither the file nor the line (a known limit, see the README), but nothing runs."""
    project = dvc_tiny
    before = tree_state(project, "results", "reports", "data")
    (project / "broken.yaml").write_text("train: [1, 2\n")
    try:
        proc = run(["snakemake", "--cores", "1", "--configfile", "broken.yaml"], project, check=False)
    finally:
        (project / "broken.yaml").unlink()
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output and "not valid JSON or YAML" in output
    assert tree_state(project, "results", "reports", "data") == before


# --- 3. safe loading -----------------------------------------------------------------------


class Evil:
    """Unpickling this calls os.mkdir: what a malicious checkpoint would do with anything."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def tiny_data(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.npz"
    data.write_npz_deterministic(path, random_arrays())
    return path


def test_malicious_pickle_is_refused_by_load_torch(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"version": 1, "identity": "x", "payload": Evil(marker)}, path)
    with pytest.raises(UnsafeFileError) as err:
        load_torch(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    # The payload is live: what unpickling would call does create the marker.
    function, arguments = Evil(marker).__reduce__()
    function(*arguments)
    assert marker.exists()


@pytest.mark.parametrize("command", ["train", "probe"])
def test_cli_refuses_a_malicious_checkpoint_or_weights_file(tmp_path, capsys, command):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    name = "checkpoint.pt" if command == "train" else "weights.pt"
    torch.save({"version": 1, "payload": Evil(marker)}, run_dir / name)
    params = json.dumps({"model": {"name": "mlp", "hidden": [4]}, "train": {"epochs": 1, "seeds": [0]},
                         "probes": {"examples": 8, "noise_batch_size": 8}})  # fmt: skip
    common = ["--params", params, "--data", str(tiny_data(tmp_path))]
    if command == "train":
        argv = ["train", *common, "--batch-size", "8", "--lr", "0.1", "--out-dir", str(run_dir)]
    else:
        argv = ["probe", *common, "--run-dir", str(run_dir), "--out-dir", str(tmp_path / "probe")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and name in err and "refused" in err, err
    assert not marker.exists()


def test_yaml_python_tags_are_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"train: !!python/object/apply:os.mkdir [{marker}]\n")
    with pytest.raises(ConfigError) as err:
        read_yaml(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert cli.main(["check", "--params", str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not marker.exists()
    yaml.unsafe_load(path.read_text())  # the payload is live under an unsafe loader
    assert marker.exists()


# --- 7. divergence, and 6. DVC integrity (one dvc repro for both) --------------------------

# One batch size, two rules: `none` trains at 3.2 (every member diverges in its first epoch),
# `linear` at 3.2 x 32/128 = 0.8 (finite). Probes and timings are cut to the bone.
DIVERGING = {
    "train": {"base_lr": 3.2, "base_batch_size": 128, "epochs": 4},
    "grid": {"batch_sizes": [32], "lr_rules": ["none", "linear"]},  # the tiny study's tuned sweep aside
    "timing": {"repeats": 1},
    "probes": {"examples": 50, "noise_batch_size": 50, "hessian_iters": 3, "ascent_steps": 1,
               "slice_points": 3, "contour_points": 3, "interpolation_points": 3},
    "stats": {"bootstrap": 100},
}  # fmt: skip
DIVERGED_RUN, STABLE_RUN = "results/mnist1d-cnn1d/runs/bs32_lr3.2", "results/mnist1d-cnn1d/runs/bs32_lr0.8"


@pytest.fixture(scope="module")
def diverging_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny study with a diverging cell, reproduced by `dvc repro` in its own git repo."""
    project = study_repo(tmp_path_factory.mktemp("diverging"), lambda p: study_params(p, DIVERGING))
    run(["dvc", "repro"], project)
    return project


def diverged_epochs(run_dir: Path) -> list[int]:
    return json.loads((run_dir / "summary.json").read_text())["diverged_epoch"]


@pytest.mark.slow
def test_a_diverging_cell_is_recorded_and_the_study_still_reports(diverging_study):
    project = diverging_study
    diverged = diverged_epochs(project / DIVERGED_RUN)
    assert all(epoch >= 1 for epoch in diverged), diverged
    assert diverged_epochs(project / STABLE_RUN) == [-1, -1, -1]
    hist = pd.read_csv(project / DIVERGED_RUN / "history.csv")
    for seed, epoch in zip(sorted(hist["seed"].unique()), diverged, strict=True):
        member = hist[hist["seed"] == seed].set_index("epoch")
        # Recorded where it happened: finite and unmarked before, a non-finite loss at that epoch.
        assert not member.loc[: epoch - 1, "diverged"].any()
        assert member.loc[epoch:, "diverged"].all()
        assert not np.isfinite(member.loc[epoch, ["train_loss", "val_loss"]].to_numpy(float)).all()

    runs = pd.read_csv(project / "reports/tables/runs.csv")
    assert list(runs[runs["rule"] == "none"].sort_values("seed")["diverged_epoch"]) == diverged
    claims = pd.read_csv(project / "reports/claims.csv")
    assert list(claims["claim_id"]) == [f"C{i}" for i in range(1, 13)]
    assert claims["verdict"].notna().all()
    html = (project / "reports/report.html").read_text()
    assert "Diverged runs" in html and f"(epoch {diverged[0]})" in html
    assert torch.__version__ in html  # the report names the software that produced it
    log = (project / "logs/mnist1d-cnn1d/train/bs32_lr3.2.log").read_text()
    assert "train nan" in log and "train 0.0000" not in log  # no mean over zero members


def test_report_survives_a_reference_rule_that_diverged_everywhere():
    from batchscale import report_html

    runs = pd.DataFrame(
        {"rule": ["linear"] * 3 + ["none"] * 3, "batch_size": 32, "seed": [0, 1, 2] * 2,
         "min_val_loss": [math.nan] * 3 + [1.7, 1.8, 1.6], "target_val_loss": math.nan}
    )  # fmt: skip
    assert "every linear-rule run diverged" in report_html.target_caption(runs)


@pytest.mark.slow
def test_dvc_notices_a_hand_edited_data_file_and_repro_restores_it(diverging_study):
    """`dvc repro` puts the data back (from its run cache), and since the study's input is then
    what the study was computed from, it is not rerun."""
    project = diverging_study
    prepared = project / "data/prepared/mnist1d.npz"
    assert "up to date" in run(["dvc", "status"], project).stdout
    original = md5(prepared)

    arrays = dict(np.load(prepared))
    arrays["x_train"][0, 0] += 1.0
    data.write_npz_deterministic(prepared, arrays)
    status = run(["dvc", "status"], project).stdout
    assert "prepare:" in status and "modified:" in status and "data/prepared" in status, status
    assert "study:" in status, status  # the stage that depends on the data is out of date too

    repro = run(["dvc", "repro"], project)
    assert md5(prepared) == original
    assert "Stage 'study' didn't change" in repro.stdout, repro.stdout
    assert "up to date" in run(["dvc", "status"], project).stdout


# --- 7b. a member that diverges mid-run is left out of every claim statistic (issue 12) ------


def engine_history(batch_size: int, lrs: list[float], epochs: int, warmup: tuple[int, float] = (0, 0.0)):
    """A real ensemble run (the engine, one member per seed 0..len(lrs)-1) on random data."""
    import io

    from batchscale.data import Dataset
    from batchscale.engine import Ensemble, TrainSpec, train
    from batchscale.progress import EpochProgress

    arrays = {k: torch.from_numpy(v) for k, v in random_arrays(seed=0).items()}
    spec = TrainSpec(batch_size=batch_size, seeds=list(range(len(lrs))), lrs=lrs, epochs=epochs, momentum=0.9,
                     warmup_epochs=warmup[0], warmup_start_lr=warmup[1])  # fmt: skip
    ensemble = Ensemble({"name": "mlp", "hidden": [16, 8]}, Dataset(**arrays, num_classes=3), spec,
                        torch.device("cpu"))  # fmt: skip
    return pd.DataFrame(train(ensemble, progress=EpochProgress(epochs, stream=io.StringIO())).history)


def test_a_member_diverging_mid_run_is_left_out_of_every_claim_statistic(tmp_path):
    """Seed 4 of linear/bs32 trains normally for a few epochs, then its LR (ramped up by a
    warm-up to 1000x its cell's) blows it up. runs.csv has NaN for each of its statistics, not
    the ones of its epochs before, and every claim is decided as if that run's seed had not
    been run under the linear rule (its pairing across batch sizes is broken)."""
    from batchscale import aggregate, claims
    from batchscale.config import Cell

    epochs, seeds, blown_seed = 6, 5, 4
    grid = {("none", 8): 0.05, ("none", 16): 0.05, ("none", 32): 0.05,
            ("linear", 8): 0.05, ("linear", 16): 0.1, ("linear", 32): 0.2}  # fmt: skip
    cells = [Cell(rule, b, lr) for (rule, b), lr in grid.items()]
    for cell in cells:
        path = tmp_path / cell.run_dir / "history.csv"
        if path.exists():  # the base batch size's run is shared by both rules
            continue
        lrs, warmup = [cell.lr] * seeds, (0, 0.0)
        if (cell.rule, cell.batch_size) == ("linear", 32):
            lrs[blown_seed], warmup = 1000 * cell.lr, (4, cell.lr)
        path.parent.mkdir(parents=True)
        write_csv_atomic(path, engine_history(cell.batch_size, lrs, epochs, warmup))
    timing = pd.DataFrame(
        [{"batch_size": b, "threads": t, "repeat": r, "epoch_seconds": (0.2 + 0.01 * r) * 16 / b / t**0.5,
          "device": "cpu"} for b in (8, 16, 32) for t in (1, 2) for r in range(4)]
    )  # fmt: skip
    write_csv_atomic(tmp_path / "timing.csv", timing)
    tables = tmp_path / "tables"
    aggregate.aggregate(cells, [tmp_path / "timing.csv"], tables, root=tmp_path, num_train=64)

    history = pd.read_csv(tables / "history.csv")
    member = history.set_index(["rule", "batch_size", "seed"]).loc[("linear", 32, blown_seed)]
    runs = pd.read_csv(tables / "runs.csv")
    blown = (runs["rule"] == "linear") & (runs["batch_size"] == 32) & (runs["seed"] == blown_seed)
    k = runs.loc[blown, "diverged_epoch"].item()
    # The premise: it diverged mid-run, after epochs whose numbers were finite; no other run diverged.
    assert 2 <= k < epochs, k
    before = member[member["epoch"].between(1, k - 1)]
    assert np.isfinite(before[["val_loss", "train_loss"]]).all(axis=None)
    assert (runs.loc[~blown, "diverged_epoch"] == -1).all()

    statistics = [c for c in runs.columns if c not in aggregate.KEPT_WHEN_DIVERGED]
    assert {"min_val_loss", "train_loss_auc", "dist_final", "best_epoch", "val_acc_at_best",
            "final_train_loss", "dist_best", "mean_update_norm", "min_passed", "time_to_min_s",
            "grad_competition"} <= set(statistics)  # fmt: skip
    assert runs.loc[blown, statistics].isna().all(axis=None), runs.loc[blown, statistics]
    assert runs.loc[blown, ["lr", "epochs"]].notna().all(axis=None)
    healthy = runs.loc[~blown, ["min_val_loss", "train_loss_auc", "dist_final", "best_epoch"]]
    assert healthy.notna().all(axis=None)

    params = validate({"stats": {"bootstrap": 200}})
    timing = pd.read_csv(tables / "timing.csv")
    got = claims.decide_all(runs, timing, params)
    unblown = runs[~((runs["rule"] == "linear") & (runs["seed"] == blown_seed))]
    expected = claims.decide_all(unblown, timing, params)
    numbers = ["claim_id", "observed", "ci_low", "ci_high", "n_seeds", "verdict", *claims.PART_COLUMNS]
    pd.testing.assert_frame_equal(got[numbers], expected[numbers])
    got = got.set_index("claim_id")
    assert got.loc["C2", "n_seeds"] == seeds  # the constant-LR claims keep seed 4
    assert got.loc["C7", "n_seeds"] == got.loc["C8", "n_seeds"] == seeds - 1
    assert (got.loc["C9", "part1"], got.loc["C9", "part2"]) == ("none", "linear")
    assert (got.loc["C9", "part1_n_seeds"], got.loc["C9", "part2_n_seeds"]) == (seeds, seeds - 1)
    for claim_id in ("C7", "C8", "C9"):
        assert "1 diverged runs (linear/bs32) are left out" in got.loc[claim_id, "summary"]
