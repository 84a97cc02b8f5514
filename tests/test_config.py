"""Parameter validation: defaults, one-line errors naming the key, the grid."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from batchscale.config import (
    ConfigError,
    cells,
    load,
    parse_run_key,
    prepared_path,
    probe_dirs,
    run_dirs,
    study_dir,
    tuned_cells,
    tuning_lrs,
    validate,
)

from conftest import ROOT, random_arrays


def test_shipped_params_are_valid_and_complete():
    params = load([ROOT / "params.yaml"])
    assert params["grid"]["batch_sizes"] == [32, 64, 128, 256]
    assert params["grid"]["lr_rules"] == ["none", "linear"]
    assert len(params["train"]["seeds"]) >= 5
    assert [(c.rule, c.batch_size) for c in cells(params)][:2] == [("none", 32), ("none", 64)]
    lrs = {(c.rule, c.batch_size): c.lr for c in cells(params)}
    assert lrs[("none", 256)] == 0.01 and lrs[("linear", 256)] == pytest.approx(0.08)


def test_rules_that_agree_share_one_training_run():
    params = validate({"grid": {"batch_sizes": [32, 64], "lr_rules": ["none", "linear", "sqrt"]}})
    by_cell = {(c.rule, c.batch_size): c.run_dir for c in cells(params)}
    assert (
        by_cell[("none", 32)]
        == by_cell[("linear", 32)]
        == by_cell[("sqrt", 32)]
        == "results/mnist1d-mlp/runs/bs32_lr0.01"
    )
    assert len(set(by_cell.values())) == 4  # 3 rules x 2 sizes, the three at B=32 shared
    assert run_dirs(params)[0] == "results/mnist1d-mlp/runs/bs32_lr0.01"


def test_empty_config_gets_every_default():
    params = validate({})
    assert params["data"]["name"] == "mnist1d"
    assert params["train"]["device"] == "auto"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"grid": {"lr_rules": ["cubic"]}}, "grid.lr_rules.0"),
        ({"grid": {"batch_sizes": [32, 32]}}, "grid.batch_sizes"),
        ({"grid": {"batch_sizes": [32, 100000]}}, "grid.batch_sizes"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"base_lr": -0.1}}, "train.base_lr"),
        ({"train": {"base_lr": float("inf")}}, "train.base_lr"),
        ({"train": {"seeds": [1, 1]}}, "train.seeds"),
        ({"data": {"name": "imagenet"}}, "data.name"),
        ({"model": {"name": "resnet"}}, "model.name"),
        ({"train": {"epoch": 5}}, "train.epoch"),
        ({"model": {"name": "cnn2d"}, "data": {"name": "mnist1d"}}, "model.name"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        validate(override)
    message = str(err.value)
    assert message.startswith(f"{key}:"), message
    assert "\n" not in message


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=r"params.yaml: line \d+ YAML syntax error"):
        load([bad])


def test_later_files_override_earlier(tmp_path):
    override = tmp_path / "small.yaml"
    override.write_text(yaml.safe_dump({"train": {"epochs": 3}}))
    params = load([ROOT / "params.yaml", override])
    assert params["train"]["epochs"] == 3
    assert params["train"]["base_lr"] == 0.01


def test_warmup_runs_have_their_own_key_except_at_the_base_batch_size():
    params = validate({"grid": {"batch_sizes": [32, 64], "lr_rules": ["none", "linear_warmup"]}})
    keys = {(c.rule, c.batch_size): c.run_key for c in cells(params)}
    assert keys[("linear_warmup", 32)] == keys[("none", 32)] == "bs32_lr0.01"
    assert keys[("linear_warmup", 64)] == "bs64_lr0.02_wu5"
    assert parse_run_key("bs64_lr0.02_wu5") == (64, (0.02,), 5, False)
    assert parse_run_key("bs32_lr1e-05") == (32, (1e-05,), 0, False)
    assert parse_run_key("bs64_lr0.005_0.01_1e-05") == (64, (0.005, 0.01, 1e-05), 0, False)
    with pytest.raises(ConfigError, match="run key"):
        parse_run_key("bs32_lrfast")


def test_a_users_npz_is_checked_before_any_job(tmp_path):
    with pytest.raises(ConfigError, match=r"^data.path: data.name npz needs"):
        validate({"data": {"name": "npz"}})
    with pytest.raises(ConfigError, match=r"^data.path: .*missing.npz: file not found"):
        validate({"data": {"name": "npz", "path": str(tmp_path / "missing.npz")}})
    own = tmp_path / "mine.npz"
    np.savez(own, **random_arrays(n_train=64))
    params = validate({"data": {"name": "npz", "path": str(own)}, "grid": {"batch_sizes": [16, 32]}})
    assert prepared_path(params) == "data/prepared/user_mine.npz"
    with pytest.raises(ConfigError, match="larger than the training set"):
        validate({"data": {"name": "npz", "path": str(own)}, "grid": {"batch_sizes": [16, 128]}})


def test_each_data_set_and_model_keeps_its_results_in_its_own_folder():
    default = validate({})
    mnist = validate({"data": {"name": "mnist"}, "model": {"name": "cnn2d"}})
    assert study_dir(default) == "results/mnist1d-mlp" and study_dir(mnist) == "results/mnist-cnn2d"
    assert all(d.startswith("results/mnist-cnn2d/runs/") for d in run_dirs(mnist))
    assert not set(run_dirs(default)) & set(run_dirs(mnist)) and not set(probe_dirs(default)) & set(
        probe_dirs(mnist)
    )


def test_a_noise_scale_batch_larger_than_the_probe_subset_is_refused_before_any_job(tmp_path):
    """The noise scale cuts batches of probes.noise_batch_size from the probe subset (the first
    probes.examples training examples): a larger batch leaves no batch at all, and a NaN."""
    shipped = load([ROOT / "params.yaml"])
    assert shipped["probes"]["noise_batch_size"] <= shipped["probes"]["examples"]
    with pytest.raises(ConfigError) as err:
        validate({"probes": {"examples": 50, "noise_batch_size": 100}})
    message = str(err.value)
    assert message.startswith("probes.noise_batch_size:") and "probes.examples" in message, message
    assert "100" in message and "50" in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"^probes.noise_batch_size: .*probes.examples"):
        validate({"probes": {"examples": 99}})  # the default batch, 100, no longer fits
    assert validate({"probes": {"examples": 50, "noise_batch_size": 50}})["probes"]["noise_batch_size"] == 50
    # The subset is never larger than the training set: a user's 64 examples cannot hold a batch of 100.
    own = tmp_path / "mine.npz"
    np.savez(own, **random_arrays(n_train=64))
    with pytest.raises(ConfigError, match=r"^probes.noise_batch_size: .*training set \(64"):
        validate({"data": {"name": "npz", "path": str(own)}, "probes": {"examples": 1000}})
    validate({"data": {"name": "npz", "path": str(own)}, "probes": {"noise_batch_size": 64}})


def test_the_tuned_sweep_shares_the_fixed_rules_runs_and_trains_the_rest_in_one_job_per_batch_size():
    params = validate(
        {"grid": {"batch_sizes": [32, 64, 512], "lr_rules": ["none", "linear", "tuned"],
                  "tuning_factors": [0.125, 0.5, 1, 2]}}
    )  # fmt: skip
    sweep = {(c.batch_size, c.lr): c.run_key for c in tuned_cells(params)}
    assert tuning_lrs(params, 64) == [0.0025, 0.01, 0.02, 0.04]  # the linear LR 0.02 x the factors
    # none's 0.01 and linear's 0.02 at B=64 are their runs; the other two train together.
    assert sweep[(64, 0.01)] == "bs64_lr0.01" and sweep[(64, 0.02)] == "bs64_lr0.02"
    assert sweep[(64, 0.0025)] == sweep[(64, 0.04)] == "bs64_lr0.0025_0.04"
    assert sweep[(32, 0.01)] == "bs32_lr0.01"  # none = linear = factor 1 at the base batch size
    assert sweep[(512, 0.02)] == "bs512_lr0.02_0.08_0.32"  # 0.16 is linear's run; none's 0.01 not tried
    assert {c.rule for c in cells(params)} == {"none", "linear"}  # the fixed rules' grid is unchanged
    dirs = run_dirs(params)
    assert len(dirs) == len(set(dirs)) == 5 + 3  # 5 fixed runs, one sweep job per batch size
    assert parse_run_key("bs512_lr0.02_0.08_0.32").lrs == (0.02, 0.08, 0.32)
    explicit = validate({"grid": {"lr_rules": ["tuned"], "tuning_lrs": [0.1, 0.03]}})
    assert tuning_lrs(explicit, 256) == [0.03, 0.1]
    assert all(c.job_lrs == (0.03, 0.1) for c in tuned_cells(explicit))
    assert tuned_cells(validate({})) == []


@pytest.mark.parametrize(
    ("grid", "key"),
    [
        ({"lr_rules": ["tuned"], "tuning_lrs": [0.1]}, "grid.tuning_lrs"),
        ({"lr_rules": ["tuned"], "tuning_factors": [1]}, "grid.tuning_factors"),
        ({"lr_rules": ["tuned"], "tuning_factors": [0, 1]}, "grid.tuning_factors.0"),
    ],
)
def test_a_tuning_grid_with_nothing_to_choose_from_is_refused(grid, key):
    with pytest.raises(ConfigError) as err:
        validate({"grid": grid})
    assert str(err.value).startswith(f"{key}:"), err.value


def test_the_tuned_rule_on_a_users_data_set_without_a_test_split_is_refused(tmp_path):
    own = tmp_path / "mine.npz"
    np.savez(own, **random_arrays(n_train=64))
    tuned = {"data": {"name": "npz", "path": str(own)}, "grid": {"batch_sizes": [16], "lr_rules": ["tuned"]}}
    with pytest.raises(ConfigError, match=r"^grid.lr_rules: the tuned rule is judged on a test split"):
        validate(tuned)
    test_split = {"x_test": np.ones((8, 12), np.float32), "y_test": np.zeros(8, np.int64)}
    np.savez(own, **random_arrays(n_train=64), **test_split)
    assert validate(tuned)["grid"]["lr_rules"] == ["tuned"]


def test_each_optimizer_but_the_articles_sgd_names_its_study_folder():
    assert study_dir(validate({})) == "results/mnist1d-mlp"
    assert study_dir(validate({"train": {"optimizer": "adam"}})) == "results/mnist1d-mlp-adam"
    assert study_dir(validate({"train": {"optimizer": "adamw"}})) == "results/mnist1d-mlp-adamw"


def test_malladis_rule_shares_the_base_batch_run_and_has_its_own_runs_elsewhere():
    params = validate({
        "train": {"optimizer": "adam", "base_lr": 0.001},
        "grid": {"batch_sizes": [32, 128], "lr_rules": ["sqrt", "malladi"]},
    })  # fmt: skip
    keys = {(c.rule, c.batch_size): c.run_key for c in cells(params)}
    assert keys[("sqrt", 32)] == keys[("malladi", 32)] == "bs32_lr0.001"
    assert keys[("sqrt", 128)] == "bs128_lr0.002" and keys[("malladi", 128)] == "bs128_lr0.002_malladi"
    assert parse_run_key("bs128_lr0.002_malladi") == (128, (0.002,), 0, True)
    assert parse_run_key("bs128_lr0.002").malladi is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"train": {}, "grid": {"lr_rules": ["none", "malladi"]}},
            "grid.lr_rules: malladi is a rule for adam and adamw",
        ),
        (
            {"train": {"optimizer": "adam"}, "grid": {"lr_rules": ["malladi"], "batch_sizes": [32, 512]}},
            "grid.lr_rules: malladi at batch size 512",
        ),
        ({"train": {"optimizer": "rmsprop"}}, "train.optimizer"),
        ({"train": {"optimizer": "adam", "betas": [0.9, 1.0]}}, "train.betas.1"),
        ({"train": {"optimizer": "adam", "betas": [0.9]}}, "train.betas"),
        ({"train": {"optimizer": "adam", "eps": 0}}, "train.eps"),
    ],
)
def test_a_rule_or_setting_the_optimizer_cannot_take_is_refused_in_one_line(override, message):
    with pytest.raises(ConfigError) as caught:
        validate(override)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_a_users_model_names_its_study_folder_by_its_file_and_callable():
    model = {"name": "custom", "factory": "models/my-net.py:make_model"}
    assert study_dir({"data": {"name": "mnist1d"}, "model": model, "train": {"optimizer": "adam"}}) == (
        "results/mnist1d-my_net.make_model-adam"
    )
    model = {"name": "custom", "factory": "mypackage.nets:wide"}
    assert study_dir({"data": {"name": "digits"}, "model": model, "train": {"optimizer": "sgd"}}) == (
        "results/digits-mypackage.nets.wide"
    )
