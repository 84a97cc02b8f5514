"""The small networks the study trains, built from the `model` section of params."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

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


class GhostBatchNorm(_BatchNorm):
    """BatchNorm over virtual batches (Hoffer et al. 2017): in train mode with `ghost_batch` > 0,
    the batch is cut into consecutive chunks of `ghost_batch` examples (the last may be shorter),
    each normalised by its own statistics, and the running statistics are updated once per chunk,
    in order. With ghost_batch 0, or at least the batch's size, and in eval mode it is exactly
    nn.BatchNorm1d/2d (inputs (N, C), (N, C, L) or (N, C, H, W)). The chunks have a static size, so
    it runs under torch.func.functional_call + vmap with each member's own (stacked) buffers."""

    def __init__(self, num_features: int, ghost_batch: int = 0, **kwargs):
        super().__init__(num_features, **kwargs)
        self.ghost_batch = int(ghost_batch)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"GhostBatchNorm expects a 2-D, 3-D or 4-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0 < self.ghost_batch < x.shape[0]:
            return super().forward(x)
        return torch.cat([super(GhostBatchNorm, self).forward(chunk) for chunk in x.split(self.ghost_batch)])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch={self.ghost_batch}"


class BasicBlock(nn.Module):
    """Two 3-wide convolutions with BatchNorm and ReLU, added to the input (He et al. 2016); the
    shortcut is a 1-wide convolution + BatchNorm where the stride or the width changes."""

    def __init__(self, conv: type[nn.Module], width_in: int, width_out: int, stride: int, ghost_batch: int):
        super().__init__()
        self.conv1 = conv(width_in, width_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = GhostBatchNorm(width_out, ghost_batch)
        self.conv2 = conv(width_out, width_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = GhostBatchNorm(width_out, ghost_batch)
        self.shortcut = nn.Sequential()
        if stride != 1 or width_in != width_out:
            self.shortcut = nn.Sequential(
                conv(width_in, width_out, kernel_size=1, stride=stride, bias=False),
                GhostBatchNorm(width_out, ghost_batch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet8(nn.Module):
    """ResNet-8 (as in Shallue et al. 2019): a 3-wide convolution + BatchNorm + ReLU, three stages
    of one basic block each (widths channels, 2 and 4 x channels, strides 1, 2, 2), global average
    pooling and a linear head: 7 convolutions + 1 linear layer (the two 1-wide shortcut projections
    are not counted, as usual). 2-D convolutions on square images (side**2 or side x side values),
    1-D ones on sequences. BatchNorm over virtual batches of `ghost_batch` (GhostBatchNorm)."""

    def __init__(self, in_features: int, num_classes: int, channels: int, ghost_batch: int = 0):
        super().__init__()
        side = math.isqrt(in_features)
        self.shape = (1, side, side) if side**2 == in_features else (1, in_features)
        conv = nn.Conv2d if len(self.shape) == 3 else nn.Conv1d
        widths = [channels, 2 * channels, 4 * channels]
        self.stem = nn.Sequential(
            conv(1, channels, kernel_size=3, padding=1, bias=False),
            GhostBatchNorm(channels, ghost_batch),
            nn.ReLU(),
        )
        stages = zip([channels, *widths[:-1]], widths, (1, 2, 2), strict=True)
        self.stages = nn.Sequential(*(BasicBlock(conv, *stage, ghost_batch) for stage in stages))
        self.head = nn.Linear(widths[-1], num_classes)
        for module in self.modules():  # torchvision's ResNet initialisation
            if isinstance(module, nn.Conv1d | nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(x.reshape(x.shape[0], *self.shape)))
        return self.head(features.flatten(2).mean(2))  # global average pooling


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
    if name == "resnet8":
        ghost_batch = int(model_params.get("ghost_batch", 0))
        return ResNet8(in_features, num_classes, int(model_params["channels"]), ghost_batch)
    raise ValueError(f"model.name: unknown model {name!r} (choose mlp, cnn1d, cnn2d, resnet8 or custom)")


def check_model_settings(model_params: dict) -> None:
    """Settings of the model section that only some models read; ValueError naming the key."""
    ghost_batch = model_params.get("ghost_batch", 0)
    if ghost_batch > 0 and model_params["name"] != "resnet8":
        raise ValueError(
            f"model.ghost_batch: set to {ghost_batch}, but model.name is {model_params['name']!r}: only "
            "resnet8 has BatchNorm to split into ghost batches (use 0)"
        )
