"""Shared fixtures: a copy of the project to run the real workflow in, and a tiny data set."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "config" / "tiny.yaml"


def project_files() -> list[str]:
    """Files a fresh clone would have (tracked, plus new files git does not ignore)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return [line for line in out.stdout.splitlines() if (ROOT / line).exists() or (ROOT / line).is_symlink()]


def copy_project(dest: Path) -> Path:
    for rel in project_files():
        src, dst = ROOT / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    return dest


def tool_env() -> dict[str, str]:
    """The environment with this interpreter's scripts (snakemake, dvc, batchscale) on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    # DVC experiments commit to git: give the throwaway repositories an identity.
    for role in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{role}_NAME", "batchscale tests")
        env.setdefault(f"GIT_{role}_EMAIL", "tests@batchscale.invalid")
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh copy of the project, as a clone would have it."""
    return copy_project(tmp_path / "project")


@pytest.fixture
def tiny_params() -> dict:
    """params.yaml with config/tiny.yaml layered on top (what the tiny run uses)."""
    from batchscale.config import deep_merge

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    return deep_merge(base, yaml.safe_load(TINY.read_text()))


# Small models for the engine-level tests (test_engine, test_strategies, test_timing, test_cuda).
MODELS = [{"name": "mlp", "hidden": [16, 8]}, {"name": "cnn1d", "channels": 4}]


def silent():
    """A progress reporter that writes nowhere."""
    import io

    from batchscale.progress import EpochProgress

    return EpochProgress(1, stream=io.StringIO(), interactive=False)


def tiny_dataset(seed: int = 0, features: int = 12):
    """random_arrays as the engine's Dataset (tensors, 3 classes)."""
    import torch

    from batchscale.data import Dataset

    arrays = {k: torch.from_numpy(v) for k, v in random_arrays(seed=seed, features=features).items()}
    return Dataset(**arrays, num_classes=3)


def random_arrays(n_train: int = 64, n_val: int = 32, features: int = 12, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.normal(size=(n_train, features)).astype(np.float32),
        "y_train": rng.integers(0, classes, size=n_train).astype(np.int64),
        "x_val": rng.normal(size=(n_val, features)).astype(np.float32),
        "y_val": rng.integers(0, classes, size=n_val).astype(np.int64),
    }


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> Path:
    """One real run of the tiny study (`snakemake --configfile config/tiny.yaml`) in a fresh
    project copy, shared by the tests that only read what it made (report, figures, tables):
    the workflow runs once per test session, not once per test."""
    project = copy_project(tmp_path_factory.mktemp("tiny-study") / "project")
    run(["snakemake", "--cores", "4", "--configfile", "config/tiny.yaml"], project)
    return project
