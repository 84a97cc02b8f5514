"""Packed ensembles: the layers of M same-shaped models run as one wide model.

Members are folded into the channel dimension, so a convolution of every member is one
grouped convolution (groups = M) and a linear layer of every member is one batched matrix
multiply; the members' stacked parameters (M, ...) are used as they are, through views.
Gradients come from plain autograd on the stacked parameters. This is the layout of
Packed-Ensembles (Laurent et al., 2023); on a CPU it runs the default CNN's step about twice
as fast as `torch.func.vmap`, which lowers to the same grouped convolution but in the 3-D
layout oneDNN is slow at and with more per-op overhead (docs/decisions.md, "How the members
train together").

Conv activations are kept as (batch, M * channels, height, width) in channels-last memory
format; linear activations as (M, batch, features).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Params = dict[str, torch.Tensor]


def fold_images(x: torch.Tensor) -> torch.Tensor:
    """(M, batch, channels, height, width) -> (batch, M * channels, height, width), channels-last."""
    members, batch, channels, height, width = x.shape
    folded = x.transpose(0, 1).reshape(batch, members * channels, height, width)
    return folded.contiguous(memory_format=torch.channels_last)


def conv2d(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride, padding) -> torch.Tensor:
    """Every member's Conv2d at once. weight: (M, out, in, kh, kw); bias: (M, out)."""
    members, out_channels = weight.shape[:2]
    return F.conv2d(
        h, weight.reshape(members * out_channels, *weight.shape[2:]), bias.reshape(-1),
        stride=stride, padding=padding, groups=members,
    )  # fmt: skip


def conv1d(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, padding: int
) -> torch.Tensor:
    """Every member's Conv1d at once, as a (1 x k) Conv2d over a height of 1 (the layout
    oneDNN's channels-last kernels are fast at). weight: (M, out, in, k); bias: (M, out)."""
    return conv2d(h, weight.unsqueeze(3), bias, stride=(1, stride), padding=(0, padding))


def unfold_flat(h: torch.Tensor, members: int) -> torch.Tensor:
    """(batch, M * channels, height, width) -> (M, batch, channels * height * width): each
    member's features in the order its own `flatten(1)` gives."""
    return h.reshape(h.shape[0], members, -1).transpose(0, 1)


def linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Every member's Linear at once. h: (M, batch, in); weight: (M, out, in); bias: (M, out)."""
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


def member_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each member on its own batch. logits: (M, batch, classes)."""
    members = logits.shape[0]
    losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
    return losses.view(members, -1).mean(1)


def member_sums(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and number correct of each member on the shared labels y."""
    members = logits.shape[0]
    labels = y.expand(members, -1)
    losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(members, -1)
    return losses.sum(1), (logits.argmax(-1) == labels).sum(1)


def sequential(h: torch.Tensor, layers: torch.nn.Sequential, params: Params, prefix: str) -> torch.Tensor:
    """Run every member through `layers` (Conv1d, Conv2d, Linear and ReLU), whose own weights
    are only read for their shapes and settings; the members' weights are `params[prefix.i.*]`."""
    for index, layer in enumerate(layers):
        name = f"{prefix}.{index}"
        if isinstance(layer, torch.nn.ReLU):
            h = F.relu(h)
        elif isinstance(layer, torch.nn.Conv1d):
            h = conv1d(h, params[f"{name}.weight"], params[f"{name}.bias"], layer.stride[0], layer.padding[0])
        elif isinstance(layer, torch.nn.Conv2d):
            h = conv2d(h, params[f"{name}.weight"], params[f"{name}.bias"], layer.stride, layer.padding)
        elif isinstance(layer, torch.nn.Linear):
            h = linear(h, params[f"{name}.weight"], params[f"{name}.bias"])
        else:
            raise TypeError(f"no packed form of {type(layer).__name__}")
    return h


def conv_net(h: torch.Tensor, model: torch.nn.Module, params: Params, members: int) -> torch.Tensor:
    """The CNNs' body and head for every member: folded images through `model.convs`, each
    member's features flattened, then `model.head`. Returns (M, batch, classes)."""
    h = sequential(h, model.convs, params, "convs")
    return linear(unfold_flat(h, members), params["head.weight"], params["head.bias"])
