"""Atomic file output: every file appears complete under its final name, or not at all."""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from batchscale.errors import UnsafeFileError  # noqa: F401  (raised here; importable from here)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path | str, obj: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def write_csv_atomic(path: Path | str, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def save_torch_atomic(path: Path | str, obj: object) -> None:
    import torch  # here, not at the top: steps that write only tables never load torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: Path | str) -> object:
    """torch.load restricted to tensors and plain containers (no arbitrary pickle)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message spans lines and suggests weights_only=False, which would run the code.
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f"it would import {found.group(1)}" if found else "it holds more than tensors"
        raise UnsafeFileError(f"{path}: refused to load: {what} (only tensors are allowed)") from None


def read_table(path: Path) -> pd.DataFrame:
    """A table that may be empty (its probe did not run) or absent (tables from before the
    probes existed): an empty frame then, so the report says so instead of failing."""
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()
