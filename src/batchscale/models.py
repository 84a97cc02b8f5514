"""The small networks the study trains, built from the `model` section of params."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from batchscale import model_factory, packed


class MLP(nn.Module):
    """Fully connected ReLU network: input -> hidden layers -> class logits."""

    def __init__(self, in_features: int, num_classes: int, hidden: list[int]):
        super().__init__()
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for width_in, width_out in itertools.pairwise(widths):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))

    def forward_packed(self, params: packed.Params, x: torch.Tensor) -> torch.Tensor:
        """Every member at once (see packed.py): x (M, batch, ...) -> (M, batch, classes)."""
        return packed.sequential(x.flatten(2), self.net, params, "net")


class CNN1d(nn.Module):
    """1-D convolutional network for sequence inputs (MNIST-1D's reference CNN shape)."""

    def __init__(self, in_features: int, num_classes: int, channels: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv1d(1, channels, kernel_size=5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, 1, in_features)).numel()
        self.head = nn.Linear(flat, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(x.unsqueeze(-2)).flatten(1))

    def forward_packed(self, params: packed.Params, x: torch.Tensor) -> torch.Tensor:
        """Every member at once: x (M, batch, length) -> (M, batch, classes)."""
        members, batch, length = x.shape
        images = packed.fold_images(x.view(members, batch, 1, 1, length))
        return packed.conv_net(images, self, params, members)


class CNN2d(nn.Module):
    """Small 2-D convolutional network for square images given as (side, side) or side**2 values."""

    def __init__(self, in_features: int, num_classes: int, channels: int):
        super().__init__()
        self.side = math.isqrt(in_features)
        if self.side**2 != in_features:
            raise ValueError(f"model.name: cnn2d needs square images, got {in_features} input values")
        self.convs = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, 1, self.side, self.side)).numel()
        self.head = nn.Linear(flat, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.reshape(x.shape[0], 1, self.side, self.side)
        return self.head(self.convs(images).flatten(1))

    def forward_packed(self, params: packed.Params, x: torch.Tensor) -> torch.Tensor:
        """Every member at once: x (M, batch, side**2 or side x side) -> (M, batch, classes)."""
        members, batch = x.shape[:2]
        images = packed.fold_images(x.reshape(members, batch, 1, self.side, self.side))
        return packed.conv_net(images, self, params, members)


def build_model(model_params: dict, in_features: int, num_classes: int) -> nn.Module:
    """Instantiate the network named by `model.name` (weights drawn from torch's global RNG);
    `custom` is the user's own, built by `model.factory` (model_factory.py)."""
    name = model_params["name"]
    if name == model_factory.CUSTOM:
        return model_factory.build(model_params, in_features, num_classes)
    if name == "mlp":
        return MLP(in_features, num_classes, list(model_params["hidden"]))
    if name == "cnn1d":
        return CNN1d(in_features, num_classes, int(model_params["channels"]))
    if name == "cnn2d":
        return CNN2d(in_features, num_classes, int(model_params["channels"]))
    raise ValueError(f"model.name: unknown model {name!r} (choose mlp, cnn1d, cnn2d or custom)")
