"""The speed benchmark: the engine against a plain PyTorch loop, in one process.

Every variant trains the same model on the same data for whole epochs, after one untimed
warm-up epoch; the median of `repeats` epochs is reported per model-epoch (an ensemble of M
members does M model-epochs per epoch). Ratios are taken against the naive loop measured
in the same process moments before, so a shared, noisy machine moves both alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from batchscale import engine, strategies
from batchscale.data import Dataset
from batchscale.devices import synchronize
from batchscale.model_traits import is_random
from batchscale.models import build_model

MATMUL_SIZE = 512  # square matrices timed for the machine's matrix-multiply rate


def epoch_seconds(run_epoch: Callable[[], None], repeats: int, device: torch.device) -> list[float]:
    """Wall times of `repeats` calls of `run_epoch`, after one untimed warm-up call."""
    run_epoch()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run_epoch()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median_seconds(run_epoch: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Median wall time of `run_epoch` over `repeats` calls, after one untimed warm-up call."""
    return statistics.median(epoch_seconds(run_epoch, repeats, device))


# torch.optim's class for each train.optimizer, for the naive loop.
TORCH_OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}


def torch_optimizer(parameters, lr: float, settings: dict) -> torch.optim.Optimizer:
    """The torch.optim optimizer the engine's update is written after (optimizers.py), built from
    TrainSpec's optimizer fields (`settings`: optimizer, momentum, nesterov, betas, eps, weight_decay)."""
    name, decay = settings["optimizer"], settings.get("weight_decay", 0.0)
    if name == "sgd":
        momentum = settings["momentum"]
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, nesterov=settings.get("nesterov", False),
                               weight_decay=decay)  # fmt: skip
    optimizer = getattr(torch.optim, TORCH_OPTIMIZERS[name])
    betas, eps = tuple(settings["betas"]), settings["eps"]
    return optimizer(parameters, lr=lr, betas=betas, eps=eps, weight_decay=decay)


def naive_epoch_fn(model_params: dict, data: Dataset, batch_size: int, lr: float, settings: dict, device):
    """The baseline: one model, a shuffling DataLoader, torch.optim, the textbook loop."""
    torch.manual_seed(0)
    model = build_model(model_params, data.in_features, data.num_classes).to(device)
    opt = torch_optimizer(model.parameters(), lr, settings)
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=batch_size, shuffle=True)

    def run_epoch() -> None:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return run_epoch


def engine_epoch_fn(model_params: dict, data: Dataset, spec: engine.TrainSpec, device: torch.device):
    ensemble = engine.Ensemble(model_params, data, spec, device)
    state = ensemble.fresh_state()
    return lambda: ensemble.train_epoch(state, ensemble.epoch_permutations(state))


def supported_strategies(model: torch.nn.Module) -> list[str]:
    """The strategies that can train this model: packed needs a packed form, vmap no dropout."""
    return [
        name for name in engine.STRATEGIES
        if (name != "packed" or engine.can_pack(model)) and (name != "vmap" or not is_random(model))
    ]  # fmt: skip


def auto_strategy(model_params: dict, data: Dataset, members: int, batch_size: int, device) -> str:
    """The strategy `train.ensemble: auto` picks for this setup, as the bench names it."""
    model = build_model(model_params, data.in_features, data.num_classes)
    name, group = strategies.choose("auto", model, members, batch_size, device, data.x_train[0])
    return strategies.describe(name, group, members)


def flops_per_epoch(model_params: dict, data: Dataset, batch_size: int) -> float:
    """Forward + backward FLOPs of one model over one epoch (torch's FLOP counter)."""
    model = build_model(model_params, data.in_features, data.num_classes)
    counter = FlopCounterMode(display=False)
    x, y = data.x_train[:batch_size], data.y_train[:batch_size]
    with counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() * len(data.x_train) / batch_size


def matmul_flops_per_second(device: torch.device, repeats: int = 20) -> float:
    """The machine's matrix-multiply rate at the current thread count (FLOP/s): its fastest
    multiply of `repeats`. A floor is what the machine can do at best, and on a shared machine
    a median is moved by other tenants' load (seen: the same bench's median rate twice as high
    in one run as in the next; docs/decisions.md, "Where the default study's time goes")."""
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device)
    return 2 * MATMUL_SIZE**3 / min(epoch_seconds(lambda: a @ b, repeats, device))


def engine_variants(
    model_params: dict, model: torch.nn.Module, data: Dataset, batch_size: int, members: int, lr: float,
    settings: dict, device: torch.device,
) -> dict[str, tuple[Callable[[], None], int, str]]:
    """The engine's variants at one batch size: one member, then all members by every strategy
    the model allows (auto_choice says which one `train.ensemble: auto` takes): name ->
    (one epoch, members, strategy)."""
    spec = engine.TrainSpec(batch_size, [0], [lr], 1, **settings)
    variants = {"engine, 1 member": (engine_epoch_fn(model_params, data, spec, device), 1, "loop")}
    if members > 1:
        # Every strategy with all members at once, and auto's packing in groups where it groups.
        auto = auto_strategy(model_params, data, members, batch_size, device)
        strategies = supported_strategies(model) + ([] if auto in engine.STRATEGIES else ["auto"])
        for strategy in strategies:
            spec = engine.TrainSpec(batch_size, list(range(members)), [lr] * members, 1, **settings,
                                    strategy=strategy)  # fmt: skip
            label = auto if strategy == "auto" else strategy
            variants[f"engine, {members} members, {label}"] = (
                engine_epoch_fn(model_params, data, spec, device), members, label,
            )  # fmt: skip
    return variants


def benchmark(
    models: list[dict],
    data: Dataset,
    batch_sizes: list[int],
    members: int,
    repeats: int,
    lr: float,
    momentum: float,
    device: torch.device,
    optimizer: dict | None = None,
) -> pd.DataFrame:
    """ms per model-epoch of each variant, its ratio to the naive loop, and the FLOP floor.
    `optimizer`: TrainSpec's optimizer fields (default: momentum SGD with `momentum`)."""
    settings = optimizer or {"optimizer": "sgd", "momentum": momentum}
    label = TORCH_OPTIMIZERS[settings["optimizer"]]
    rate = matmul_flops_per_second(device)
    rows = []
    for model_params in models:
        model = build_model(model_params, data.in_features, data.num_classes)
        for batch_size in batch_sizes:
            variants = {
                f"naive loop (DataLoader, torch.optim.{label})": (
                    naive_epoch_fn(model_params, data, batch_size, lr, settings, device),
                    1,
                    "",
                ),
                **engine_variants(model_params, model, data, batch_size, members, lr, settings, device),
            }
            auto = auto_strategy(model_params, data, members, batch_size, device)
            floor_ms = 1000 * flops_per_epoch(model_params, data, batch_size) / rate
            baseline = None
            for variant, (run_epoch, m, strategy) in variants.items():
                ms = 1000 * median_seconds(run_epoch, repeats, device) / m
                baseline = baseline or ms
                rows.append(
                    {
                        "model": model_params["name"],
                        "batch_size": batch_size,
                        "variant": variant,
                        "members": m,
                        "ensemble": strategy,
                        "auto_choice": m == members and strategy == auto,
                        "device": str(device),
                        "threads": torch.get_num_threads(),
                        "ms_per_model_epoch": ms,
                        "examples_per_s": len(data.x_train) / (ms / 1000),
                        "speedup_vs_naive": baseline / ms,
                        "flop_floor_ms": floor_ms,
                    }
                )
    table = pd.DataFrame(rows)
    # Measured again after the variants, and the faster rate kept: a slow spell on a shared
    # machine must not make the floor that every ratio is read against look slower than it is.
    rate_after = matmul_flops_per_second(device)
    if rate_after > rate:
        table["flop_floor_ms"] *= rate / rate_after
    return table


def format_table(table: pd.DataFrame) -> str:
    """The fixed-width table `batchscale bench` prints."""
    shown = table[["model", "batch_size", "variant", "ms_per_model_epoch", "examples_per_s",
                   "speedup_vs_naive", "flop_floor_ms"]].copy()  # fmt: skip
    # A star marks the way the study's training jobs run (train.ensemble: auto).
    starred = zip(table["variant"], table["auto_choice"], strict=True)
    shown["variant"] = [variant + (" *" if auto else "") for variant, auto in starred]
    return (
        shown.to_string(index=False, float_format=lambda v: f"{v:,.2f}")
        + "\n* what train.ensemble: auto runs"
    )
