"""A user's own model (`model: {name: custom, factory: file.py:callable}`): every refusal before
any job, the example factory trained member by member like plain PyTorch, and the real workflow
with a model file of its own (rerun when the file changes)."""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest
import torch
from reference_runs import assert_members_are_plain_sgd_runs

from batchscale import config, model_factory
from batchscale.config import ConfigError, validate
from batchscale.engine import Ensemble, TrainSpec, train
from batchscale.models import build_model

from conftest import ROOT, random_arrays, run, silent, tiny_dataset

EXAMPLE = f"{ROOT}/models/example.py:make_model"
# A factory that builds what its kwargs say, so one file serves every refusal of a model.
FACTORY = """
import torch
from torch import nn

def make(in_features, num_classes, extra_in=0, extra_out=0, batchnorm=False, returns=None,
         frozen=False):
    if returns is not None:
        return returns
    layers = [nn.Flatten(), nn.Linear(in_features + extra_in, num_classes + extra_out)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(num_classes))
    model = nn.Sequential(*layers)
    for p in model.parameters():
        p.requires_grad_(not frozen)
    return model

def raises(in_features, num_classes):
    raise RuntimeError("no model\\ntoday")

def draws(in_features, num_classes):
    torch.rand(3)  # advances the global RNG while the check builds it
    return make(in_features, num_classes)

not_callable = 3
"""


def custom(factory: str, **kwargs) -> dict:
    return {"name": "custom", "factory": factory, "kwargs": kwargs}


@pytest.fixture
def factory_file(tmp_path) -> str:
    path = tmp_path / "mine.py"
    path.write_text(FACTORY)
    return str(path)


def refusal(params: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate(params)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def refused_model(model: dict, key: str = "model.factory", data: dict | None = None) -> str:
    message = refusal({"model": model, "data": data or {"name": "mnist1d"}})
    assert message.startswith(f"{key}:"), message
    return message


def test_the_example_factory_passes_and_the_model_section_gets_its_defaults():
    params = validate({"model": custom(EXAMPLE, width=8), "data": {"name": "mnist"}})
    defaults = {"hidden": [100, 100], "channels": 32, "ghost_batch": 0}
    assert params["model"] == {**custom(EXAMPLE, width=8), **defaults}
    assert validate({})["model"]["factory"] == "" and validate({})["model"]["kwargs"] == {}


@pytest.mark.parametrize(
    ("factory", "words"),
    [
        ("", "needs a factory"),
        ("models/example.py", "is not of the form"),
        ("models/example.py:", "is not of the form"),
        ("models/example.py:make-model", "is not of the form"),
        ("not a module:make", "is not of the form"),
        ("models/example:make_model", "is not of the form"),
        ("models/nowhere.py:make_model", "models/nowhere.py: file not found"),
        (
            "batchscale_no_such_module:make",
            "ModuleNotFoundError: No module named 'batchscale_no_such_module'",
        ),
    ],
)
def test_a_factory_that_names_nothing_usable_is_refused(factory, words):
    assert words in refused_model(custom(factory))


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("def make(:\n", "failed (SyntaxError: "),
        ("raise ValueError('broken\\nmodel file')\n", "failed (ValueError: broken model file)"),
        ("import sys\nsys.exit(3)\n", "failed (SystemExit: 3)"),
    ],
)
def test_a_file_whose_import_fails_is_refused_with_the_exception(tmp_path, source, words):
    path = tmp_path / "broken.py"
    path.write_text(source)
    message = refused_model(custom(f"{path}:make"))
    assert f"importing {path}" in message and words in message


@pytest.mark.parametrize(
    ("name", "kwargs", "words"),
    [
        ("missing", {}, "has no callable 'missing'"),
        ("not_callable", {}, "has no callable 'not_callable'"),
        ("raises", {}, "raises(40, 10, **model.kwargs) raised RuntimeError: no model today"),
        ("make", {"unknown": 1}, "raised TypeError:"),
        ("make", {"returns": 42}, "returned int, not a torch nn.Module"),
        ("make", {"frozen": True}, "no trainable parameters"),
        ("make", {"extra_in": 1}, "forward on input of shape (2, 40) raised RuntimeError:"),
        ("make", {"extra_out": 1}, "maps input of shape (2, 40) to (2, 11), not to logits of shape (2, 10)"),
    ],
)
def test_a_factory_whose_model_does_not_work_is_refused(factory_file, name, kwargs, words):
    assert words in refused_model(custom(f"{factory_file}:{name}", **kwargs))


def test_the_forward_check_uses_the_shape_and_classes_of_the_data(tmp_path, factory_file):
    """mnist's examples are 28 x 28 images; a user's npz gives its own shape, and its labels the
    number of classes (here 3)."""
    assert "input of shape (2, 28, 28)" in refused_model(
        custom(f"{factory_file}:make", extra_in=1), data={"name": "mnist"}
    )
    arrays = random_arrays(features=12, classes=3)
    arrays = {k: v.reshape(len(v), 3, 4) if k.startswith("x") else v for k, v in arrays.items()}
    np.savez(tmp_path / "mine.npz", **arrays)
    data = {"name": "npz", "path": str(tmp_path / "mine.npz")}
    validate({"model": custom(f"{factory_file}:make"), "data": data})
    message = refused_model(custom(f"{factory_file}:make", extra_out=7), data=data)
    assert "(2, 3, 4) to (2, 10), not to logits of shape (2, 3)" in message


def test_a_file_path_is_relative_to_the_working_directory(tmp_path, monkeypatch, factory_file):
    monkeypatch.chdir(tmp_path)
    validate({"model": custom("mine.py:make"), "data": {"name": "digits"}})
    monkeypatch.chdir(ROOT)
    assert "mine.py: file not found" in refused_model(custom("mine.py:make"))


def test_a_factory_or_kwargs_without_model_name_custom_is_refused():
    message = refused_model({"name": "mlp", "factory": EXAMPLE})
    assert "model.name is 'mlp'" in message
    assert "model.name is 'cnn1d'" in refused_model({"name": "cnn1d", "kwargs": {"width": 3}}, "model.kwargs")


def test_packed_training_of_a_model_without_a_packed_form_is_refused_before_any_job():
    data = {"name": "mnist1d"}
    message = refusal({"model": custom(EXAMPLE), "data": data, "train": {"ensemble": "packed"}})
    assert message.startswith("train.ensemble:") and "model.factory" in message
    for strategy in ("auto", "vmap", "loop"):
        validate({"model": custom(EXAMPLE), "data": data, "train": {"ensemble": strategy}})
    validate({"model": {"name": "mlp"}, "data": data, "train": {"ensemble": "packed"}})  # built-ins pack


def test_checking_leaves_the_rng_that_seeds_the_members_as_it_was(factory_file):
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    validate({"model": custom(f"{factory_file}:draws")})
    assert torch.equal(torch.rand(2), expected)


def test_a_changed_model_file_changes_the_run_identity_and_the_dependencies(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(FACTORY)
    model = custom(f"{path}:make")
    before = model_factory.identity(model)
    path.write_text(FACTORY + "\n# edited\n")
    after = model_factory.identity(model)
    assert before != after and before["factory_sha256"] != after["factory_sha256"]
    assert model_factory.dependency_files(model) == [str(path)]
    built_in = validate({})["model"]
    assert model_factory.identity(built_in) is built_in and model_factory.dependency_files(built_in) == []
    module = custom("torch.nn:Linear")
    assert model_factory.dependency_files(module) == []
    assert model_factory.identity(module)["factory_sha256"] == model_factory.file_sha256(
        model_factory.source_file(model_factory.parse("torch.nn:Linear"))
    )


def test_an_edited_file_is_imported_anew(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(FACTORY)
    model = custom(f"{path}:make")
    assert build_model(model, 12, 3)[1].out_features == 3
    path.write_text(FACTORY.replace("num_classes + extra_out", "num_classes + 1"))
    assert build_model(model, 12, 3)[1].out_features == 4


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_member_k_of_a_custom_model_equals_plain_run_with_seed_k(strategy):
    """The example factory through the engine: member k is the plain torch.optim.SGD run with
    seed k (the reference of test_engine.py), for both strategies that train any module."""
    data = tiny_dataset(features=12)
    model_params = validate({"model": custom(EXAMPLE, width=8)})["model"]
    spec = TrainSpec(
        batch_size=24, seeds=[3, 7], lrs=[0.05, 0.02], epochs=3, momentum=0.9, weight_decay=0.01,
        strategy=strategy,
    )  # fmt: skip
    state = train(Ensemble(model_params, data, spec, torch.device("cpu")), progress=silent())
    assert_members_are_plain_sgd_runs(state, spec, model_params, data)


def test_auto_trains_a_custom_model_with_vmap():
    spec = TrainSpec(batch_size=16, seeds=[0, 1], lrs=[0.1, 0.1], epochs=1, momentum=0.9)
    ensemble = Ensemble(custom(EXAMPLE, width=4), tiny_dataset(), spec, torch.device("cpu"))
    assert ensemble.strategy == "vmap"


# The real workflow: the tiny study's DAG with the fewest runs that still make a report.
MODEL_FILE = "models/mine.py"
# BatchNorm and Dropout: each member's running statistics and masks, the probes in eval mode.
MINE = """
from torch import nn

def make(in_features, num_classes, width):
    return nn.Sequential(
        nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.Tanh(), nn.Dropout(0.1),
        nn.Linear(width, num_classes),
    )
"""
STUDY = f"""
model: {{name: custom, factory: "{MODEL_FILE}:make", kwargs: {{width: 8}}}}
train: {{epochs: 2, seeds: [0, 1]}}
grid: {{batch_sizes: [32, 128], lr_rules: [none]}}
stats: {{min_seeds: 2}}
"""
# One --configfile with both files: a second --configfile option would replace the first.
CONFIG = ["--configfile", "config/tiny.yaml", "mine.yaml"]


def planned(proc) -> dict[str, int]:
    """Jobs per rule in a dry run's job-stats table."""
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout + proc.stderr, re.M)}


@pytest.mark.slow
def test_a_users_model_file_trains_end_to_end_and_its_edit_reruns_the_jobs(project):
    (project / MODEL_FILE).write_text(textwrap.dedent(MINE))
    (project / "mine.yaml").write_text(STUDY)
    run(["snakemake", "--cores", "2", *CONFIG], project)
    assert "data:image/png;base64," in (project / "reports/report.html").read_text()
    summary = next((project / "results/mnist1d-mine.make/runs").glob("*/summary.json")).read_text()
    assert '"ensemble": "loop"' in summary and '"factory": "models/mine.py:make"' in summary
    assert planned(run(["snakemake", "-n", *CONFIG], project)) == {}  # nothing to do

    (project / MODEL_FILE).write_text(textwrap.dedent(MINE).replace("nn.Tanh()", "nn.ReLU()"))
    again = planned(run(["snakemake", "-n", *CONFIG], project))
    # Every job that builds the model: each training run, its probes, the landscape, the timing
    # and the benchmark's thread layouts (and what is made from them).
    assert again["train"] == 2 and again["probe"] == 2 and again["landscape"] == 1, again
    assert again["time_epochs"] == 1 and again["bench"] == 1, again


@pytest.mark.slow
def test_a_bad_factory_stops_the_cli_and_snakemake_before_anything_is_written(project):
    (project / "bad.yaml").write_text('model: {name: custom, factory: "models/missing.py:make"}\n')
    check = run(
        ["batchscale", "check", "--params", "params.yaml", "--params", "bad.yaml"], project, check=False
    )
    assert check.returncode == 2
    assert check.stderr.strip().splitlines() == [
        "batchscale check: error: model.factory: models/missing.py: file not found"
    ]
    proc = run(["snakemake", "--cores", "1", "--configfile", "bad.yaml"], project, check=False)
    assert proc.returncode != 0 and "model.factory: models/missing.py: file not found" in proc.stderr
    assert not (project / "results").exists() and not (project / "data/prepared").exists()


@pytest.mark.parametrize("name", ["mnist1d", "mnist", "digits"])
def test_the_check_sees_the_shapes_the_engine_gets(name):
    """config's input shape and class count are what the data step hands the model."""
    from batchscale import data

    settings = validate({"data": {"name": name, "num_samples": 200, "test_samples": 10}})["data"]
    arrays = data.make_arrays(settings)
    assert config.input_shape(settings) == arrays["x_train"].shape[1:]
    assert config.num_classes(settings) == int(arrays["y_train"].max()) + 1


def test_a_model_with_batchnorm_is_accepted_and_dropout_is_refused_for_vmap(tmp_path, factory_file):
    data = {"name": "mnist1d"}
    validate({"model": custom(f"{factory_file}:make", batchnorm=True), "data": data})
    path = tmp_path / "dropout.py"
    path.write_text(
        "from torch import nn\n"
        "def make(in_features, num_classes):\n"
        "    return nn.Sequential(nn.Dropout(0.5), nn.Linear(in_features, num_classes))\n"
    )
    validate({"model": custom(f"{path}:make"), "data": data, "train": {"ensemble": "loop"}})
    message = refusal({"model": custom(f"{path}:make"), "data": data, "train": {"ensemble": "vmap"}})
    assert message.startswith("train.ensemble: vmap cannot give each member its own dropout masks")
