"""A user's own model: `model: {name: custom, factory: "<file.py or package.module>:<callable>"}`.

The callable is called as `callable(in_features, num_classes, **model.kwargs)` and returns a
torch `nn.Module` mapping (batch, *input shape) to (batch, num_classes) logits. A file is
imported from its path (relative to the working directory, the project root) with
`importlib.util.spec_from_file_location`, a dotted name with `importlib.import_module`: this is
code the user chose to run, and nothing is ever unpickled. `check` builds the model and runs it
on two examples before any job starts (config.check_consistency); the jobs build it with
`build`, the same function. Every error is a FactoryError, one line naming model.factory.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch
from torch import nn

CUSTOM = "custom"
# Examples of the data's shape the model must map to logits before any job starts.
CHECK_EXAMPLES = 2


class FactoryError(ValueError):
    """A model factory that cannot be used; the message is one line naming model.factory."""


class FactoryRef(NamedTuple):
    """Where a factory is: a file path or a dotted module name, and the callable's name in it."""

    source: str
    callable_name: str
    is_file: bool


def one_line(exc: BaseException) -> str:
    """An exception as `Type: message` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _dotted(name: str) -> bool:
    return all(part.isidentifier() for part in name.split("."))


def parse(factory: str) -> FactoryRef:
    """`path/to/file.py:callable` or `package.module:callable`, split; FactoryError otherwise."""
    if not factory:
        raise FactoryError(
            "model.factory: model.name custom needs a factory, e.g. models/example.py:make_model"
        )
    source, _, name = factory.rpartition(":")
    is_file = source.endswith(".py")
    if not source or not name.isidentifier() or not (is_file or _dotted(source)):
        raise FactoryError(
            f"model.factory: {factory!r} is not of the form path/to/file.py:callable or "
            "package.module:callable"
        )
    return FactoryRef(source, name, is_file)


@cache
def _exec_file(resolved: str, sha256: str) -> ModuleType:
    """The module a file defines, run once per content (a changed file is imported anew)."""
    name = f"batchscale_user_model_{sha256[:16]}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would (dataclasses and typing look it up)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_source(ref: FactoryRef) -> ModuleType:
    """The factory's module; FactoryError if the file is missing or importing it raises."""
    path = Path(ref.source)
    if ref.is_file and not path.is_file():
        raise FactoryError(f"model.factory: {ref.source}: file not found")
    # Importing draws nothing from torch's global RNG that seeds each member's weights.
    with torch.random.fork_rng(devices=[]):
        try:
            if ref.is_file:
                return _exec_file(str(path.resolve()), file_sha256(path))
            return importlib.import_module(ref.source)
        except (Exception, SystemExit) as exc:
            raise FactoryError(f"model.factory: importing {ref.source} failed ({one_line(exc)})") from None


def load_factory(ref: FactoryRef):
    """The callable the factory names."""
    made = getattr(import_source(ref), ref.callable_name, None)
    if not callable(made):
        raise FactoryError(f"model.factory: {ref.source} has no callable {ref.callable_name!r}")
    return made


def build(model_params: dict, in_features: int, num_classes: int) -> nn.Module:
    """The user's model: `callable(in_features, num_classes, **model.kwargs)` (weights drawn from
    torch's global RNG, as the built-in models draw theirs)."""
    ref = parse(model_params["factory"])
    make = load_factory(ref)
    call = f"{ref.callable_name}({in_features}, {num_classes}, **model.kwargs)"
    try:
        model = make(in_features, num_classes, **model_params.get("kwargs", {}))
    except Exception as exc:
        raise FactoryError(f"model.factory: {call} raised {one_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise FactoryError(f"model.factory: {call} returned {type(model).__name__}, not a torch nn.Module")
    return model


def check_trainable(model: nn.Module) -> None:
    """Parameters to train (buffers, e.g. BatchNorm's running statistics, are each member's own)."""
    if not any(p.requires_grad for p in model.parameters()):
        raise FactoryError("model.factory: the model has no trainable parameters")


def check_forward(model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Two examples of the data's shape (fixed random values) give (2, num_classes) logits."""
    batch = (CHECK_EXAMPLES, *input_shape)
    x = torch.randn(batch, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise FactoryError(
            f"model.factory: the model's forward on input of shape {batch} raised {one_line(exc)}"
        ) from None
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != (CHECK_EXAMPLES, num_classes):
        raise FactoryError(
            f"model.factory: the model maps input of shape {batch} to {got}, not to logits of shape "
            f"{(CHECK_EXAMPLES, num_classes)}"
        )


def check(model_params: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the user's model for data of this shape and run it once; the model, or FactoryError.
    Torch's global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        model = build(model_params, math.prod(input_shape), num_classes)
        check_trainable(model)
        check_forward(model, input_shape, num_classes)
    return model


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def source_file(ref: FactoryRef) -> Path | None:
    """The file the factory's code is in: the file named, or where a module is found."""
    if ref.is_file:
        return Path(ref.source)
    spec = importlib.util.find_spec(ref.source)
    return Path(spec.origin) if spec is not None and spec.has_location else None


def dependency_files(model_params: dict) -> list[str]:
    """The model file a job that builds the model depends on, as named ([] for a module, or a
    built-in model)."""
    if model_params["name"] != CUSTOM:
        return []
    ref = parse(model_params["factory"])
    return [ref.source] if ref.is_file else []


def identity(model_params: dict) -> dict:
    """The model section as a run's identity holds it: for a user's factory, with the SHA-256 of
    its source, so that a checkpoint of an edited model is never resumed."""
    if model_params["name"] != CUSTOM:
        return model_params
    path = source_file(parse(model_params["factory"]))
    return model_params if path is None else {**model_params, "factory_sha256": file_sha256(path)}
