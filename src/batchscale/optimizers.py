"""The optimizers' update rules, every member of an ensemble at once, each with its own LR.

Each optimizer is written out as `torch.optim` computes it (the same formulas in the same
order), in a few fused multi-tensor (`torch._foreach_*`) operations over every parameter of
every member: member k's weights follow exactly what `torch.optim.SGD` / `Adam` / `AdamW`
with member k's LR would give (tests/test_optimizers.py). `torch.optim` itself cannot do
this: one optimizer takes one LR per parameter group, and a member is a slice of a stacked
parameter, not a group of its own.

An optimizer here returns the step's *updates* (what to subtract from the weights) rather
than applying them, so the engine can hold a diverged member's weights where they stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

OPTIMIZERS = ("sgd", "adam", "adamw")

Tensors = list[torch.Tensor]


@dataclass(frozen=True)
class OptimizerSpec:
    """One job's optimizer and its hyper-parameters (those the optimizer does not use are ignored)."""

    name: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def state_names(self) -> tuple[str, ...]:
        """The per-parameter buffers the optimizer keeps between steps (checkpointed)."""
        if self.name == "sgd":
            return ("momentum",) if self.momentum else ()
        return ("exp_avg", "exp_avg_sq")


def member_view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (members,) vector so it broadcasts over a stacked parameter (members, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def initial_state(spec: OptimizerSpec, params: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Zeroed buffers, one dict per buffer name: as torch.optim starts (its SGD's first
    momentum buffer, a copy of the first gradient, equals 0 x momentum + gradient)."""
    return {name: {k: torch.zeros_like(v) for k, v in params.items()} for name in spec.state_names()}


def updates(
    spec: OptimizerSpec,
    params: Tensors,
    grads: Tensors,
    state: dict[str, Tensors],
    lrs: torch.Tensor,
    step: int,
) -> Tensors:
    """This step's update of every parameter (`params -= updates`), advancing `state` in place.

    `lrs` holds each member's LR for this step; `step` counts steps from 1 (Adam's bias
    correction)."""
    if spec.name == "sgd":
        return _sgd(spec, params, grads, state, lrs)
    if spec.name in ("adam", "adamw"):
        return _adam(spec, params, grads, state, lrs, step)
    choices = ", ".join(OPTIMIZERS)
    raise ValueError(f"train.optimizer: unknown optimizer {spec.name!r} (choose from {choices})")


def _lr_views(lrs: torch.Tensor, params: Tensors) -> Tensors:
    return [member_view(lrs, p) for p in params]


def _sgd(spec, params, grads, state, lrs) -> Tensors:
    # torch.optim.SGD (dampening 0): g += wd * p; buf = momentum * buf + g;
    # nesterov: g += momentum * buf, else g = buf; p -= lr * g.
    if spec.weight_decay:
        grads = torch._foreach_add(grads, params, alpha=spec.weight_decay)
    if spec.momentum:
        buffers = state["momentum"]
        torch._foreach_mul_(buffers, spec.momentum)
        torch._foreach_add_(buffers, grads)
        grads = torch._foreach_add(grads, buffers, alpha=spec.momentum) if spec.nesterov else buffers
    return torch._foreach_mul(grads, _lr_views(lrs, params))


def _adam(spec, params, grads, state, lrs, step) -> Tensors:
    # torch.optim.Adam / AdamW (not amsgrad): Adam adds wd * p to the gradient, AdamW decays
    # the weights by lr * wd apart from the gradient (Loshchilov & Hutter); then
    # m = lerp(m, g, 1 - beta1); v = beta2 * v + (1 - beta2) g^2;
    # p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
    beta1, beta2 = spec.betas
    if spec.weight_decay and spec.name == "adam":
        grads = torch._foreach_add(grads, params, alpha=spec.weight_decay)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    denominators = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_div_(denominators, bias_correction2_sqrt)
    torch._foreach_add_(denominators, spec.eps)
    steps = torch._foreach_div(exp_avg, denominators)
    torch._foreach_mul_(steps, _lr_views(lrs / bias_correction1, params))
    if spec.weight_decay and spec.name == "adamw":
        decay = torch._foreach_mul(params, _lr_views(lrs * spec.weight_decay, params))
        torch._foreach_add_(steps, decay)
    return steps


def describe(train: dict) -> str:
    """The optimizer of a `train` section in words, with the settings it uses (the report's setup)."""
    name, decay = train.get("optimizer", "sgd"), train["weight_decay"]
    if name == "sgd":
        nesterov = "Nesterov " if train.get("nesterov") else ""
        return f"SGD with {nesterov}momentum {train['momentum']}, weight decay {decay}"
    beta1, beta2 = train["betas"]
    kind = "decoupled weight decay" if name == "adamw" else "weight decay (L2)"
    label = {"adam": "Adam", "adamw": "AdamW"}[name]
    return f"{label} with betas ({beta1}, {beta2}), eps {train['eps']:g}, {kind} {decay}"
