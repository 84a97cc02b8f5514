"""The reference every equivalence test compares an ensemble member with: one model, seeded as
the engine seeds member k, shuffled by the engine's per-seed stream, trained by torch.optim in
train mode; measured in eval mode afterwards (running statistics, no dropout)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from batchscale.data import Dataset
from batchscale.models import build_model

OptimizerFactory = Callable[..., torch.optim.Optimizer]  # (parameters, lr) -> optimizer


def momentum_sgd(momentum: float = 0.9, weight_decay: float = 0.0) -> OptimizerFactory:
    def make(parameters, lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)

    return make


class PlainRun(NamedTuple):
    model: torch.nn.Module  # trained, in eval mode
    running_losses: list[float]  # each epoch's mean loss over its examples as they were seen


def plain_run(
    model_params: dict, data: Dataset, seed: int, lr: float, batch_size: int, epochs: int,
    optimizer: OptimizerFactory | None = None,
) -> PlainRun:  # fmt: skip
    torch.manual_seed(seed)
    model = build_model(model_params, data.in_features, data.num_classes).train()
    opt = (optimizer or momentum_sgd())(model.parameters(), lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(data.x_train)
    running_losses = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        seen_loss = 0.0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            seen_loss += loss.item() * len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
        running_losses.append(seen_loss / n)
    return PlainRun(model.eval(), running_losses)


def eval_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def assert_members_are_plain_sgd_runs(state, spec, model_params: dict, data: Dataset) -> None:
    """Every member of a trained ensemble (`state`, trained by TrainSpec `spec` with momentum SGD)
    against the plain run with its seed and LR: weights, final validation loss, running losses."""
    last = {r["seed"]: r for r in state.history if r["epoch"] == spec.epochs}
    sgd = momentum_sgd(spec.momentum, spec.weight_decay)
    for member, (seed, lr) in enumerate(zip(spec.seeds, spec.lrs, strict=True)):
        run = plain_run(model_params, data, seed, lr, spec.batch_size, spec.epochs, sgd)
        for name, tensor in run.model.named_parameters():
            torch.testing.assert_close(state.params[name][member], tensor.detach(), rtol=1e-5, atol=1e-6)
        assert last[seed]["val_loss"] == pytest.approx(eval_loss(run.model, data.x_val, data.y_val), rel=1e-5)
        ours = [r["train_loss"] for r in state.history if r["seed"] == seed and r["epoch"] > 0]
        assert ours == pytest.approx(run.running_losses, rel=1e-5)
