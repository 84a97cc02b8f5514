"""What a model's structure says about how its ensemble members can train together: whether it
has a packed form, whether it draws random numbers in train mode. Read by the strategies (which
choose) and by the configuration check (which refuses a choice before any job starts)."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.dropout import _DropoutNd


def is_random(model: nn.Module) -> bool:
    """Whether the model draws random numbers in train mode (Dropout and its kin)."""
    return any(isinstance(module, _DropoutNd) for module in model.modules())


def can_pack(model: nn.Module) -> bool:
    """Whether the model has a packed form (models.py) and neither buffers it would have to carry
    nor random masks to draw per member."""
    return hasattr(model, "forward_packed") and not list(model.buffers()) and not is_random(model)
