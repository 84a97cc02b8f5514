"""Where tensors live: picking the device, and waiting for it before reading a clock."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """`auto` means CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock reading covers it (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
