"""Learning-rate scaling rules: the learning rate as a pure function of batch size and step.

The base learning rate is quoted per reference batch size (as airbench quotes "LR per
1024 examples"); a rule maps it to the batch size a run uses. `linear_warmup` is Goyal et
al.'s gradual warm-up: the linear rule's LR, reached by a ramp from the base LR.
"""

from __future__ import annotations

import math

RULES = ("none", "linear", "sqrt", "linear_warmup")


def scaled_lr(rule: str, base_lr: float, base_batch_size: int, batch_size: int) -> float:
    """Peak learning rate for `batch_size` under `rule` (Goyal et al.: linear; Hoffer et al.: sqrt)."""
    k = batch_size / base_batch_size
    if rule == "none":
        return base_lr
    if rule in ("linear", "linear_warmup"):
        return base_lr * k
    if rule == "sqrt":
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
