"""Learning-rate scaling rules: the learning rate as a pure function of batch size and step.

The base learning rate is quoted per reference batch size (as airbench quotes "LR per
1024 examples"); a rule maps it to the batch size a run uses. `linear_warmup` is Goyal et
al.'s gradual warm-up: the linear rule's LR, reached by a ramp from the base LR. `malladi` is
Malladi et al. 2022's square-root rule for Adam, derived from its SDE: besides the LR it moves
Adam's betas and eps, so it only makes sense for Adam and AdamW.
"""

from __future__ import annotations

import math

RULES = ("none", "linear", "sqrt", "linear_warmup", "malladi")
# Rules written for some optimizers only, with the optimizers they are written for.
RULE_OPTIMIZERS = {"malladi": ("adam", "adamw")}


def scaled_lr(rule: str, base_lr: float, base_batch_size: int, batch_size: int) -> float:
    """Peak learning rate for `batch_size` under `rule` (Goyal et al.: linear; Hoffer et al.: sqrt)."""
    k = batch_size / base_batch_size
    if rule == "none":
        return base_lr
    if rule in ("linear", "linear_warmup"):
        return base_lr * k
    if rule in ("sqrt", "malladi"):
        return base_lr * math.sqrt(k)
    raise ValueError(f"grid.lr_rules: unknown rule {rule!r} (choose from {', '.join(RULES)})")


def warmup_fraction(step: int, warmup_steps: int) -> float:
    """How far along the warm-up ramp global step `step` is: step / warmup_steps, capped at 1.

    With the LR at step t = start + (peak - start) * fraction, step 0 uses the start LR and
    the peak is reached after `warmup_steps` steps (Goyal et al.: "increase by a constant
    amount at each iteration such that it reaches k*eta after 5 epochs").
    """
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)


def malladi_betas_eps(
    betas: tuple[float, float], eps: float, base_batch_size: int, batch_size: int
) -> tuple[tuple[float, float], float]:
    """Adam's (beta1, beta2) and eps at `batch_size` under Malladi et al.'s rule (2022, "On the
    SDEs and scaling rules for adaptive gradient algorithms"), k = batch_size / base_batch_size:
    1 - beta scales by k and eps by 1 / sqrt(k) (the LR by sqrt(k): `scaled_lr`). Rounded to 12
    significant digits, so that k = 1 gives the betas back exactly.

    Raises ValueError when 1 - beta would exceed 1 (a negative beta): the rule holds for k up to
    1 / (1 - beta1)."""
    k = batch_size / base_batch_size
    scaled = tuple(float(f"{1 - (1 - beta) * k:.12g}") for beta in betas)
    if min(scaled) < 0:
        worst = min(betas)
        raise ValueError(
            f"malladi at batch size {batch_size} needs 1 - beta = {k:g} x {1 - worst:g} > 1 "
            f"(beta {worst}); it holds up to batch size {math.floor(base_batch_size / (1 - worst))}"
        )
    return (scaled[0], scaled[1]), float(f"{eps / math.sqrt(k):.12g}")
