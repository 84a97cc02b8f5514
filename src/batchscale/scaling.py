"""Learning-rate scaling rules: the learning rate as a pure function of batch size.

The base learning rate is quoted per reference batch size (as airbench quotes "LR per
1024 examples"); a rule maps it to the batch size a run uses.
"""

from __future__ import annotations

import math

RULES = ("none", "linear", "sqrt")


def scaled_lr(rule: str, base_lr: float, base_batch_size: int, batch_size: int) -> float:
    """Peak learning rate for `batch_size` under `rule` (Goyal et al.: linear; Hoffer et al.: sqrt)."""
    k = batch_size / base_batch_size
    if rule == "none":
        return base_lr
    if rule == "linear":
        return base_lr * k
    if rule == "sqrt":
        return base_lr * math.sqrt(k)
    raise ValueError(f"grid.lr_rules: unknown rule {rule!r} (choose from {', '.join(RULES)})")
