"""ResNet-8 and ghost batch norm (issue 15): GhostBatchNorm against nn.BatchNorm and against
chunks normalised by hand, the network's shape, and member k of an ensemble trained by vmap and
by the loop against a plain torch.optim.SGD run with seed k, weights and running statistics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference_runs import momentum_sgd, plain_run
from torch import nn

from batchscale.engine import Ensemble, TrainSpec, resolve_strategy, train
from batchscale.models import GhostBatchNorm, ResNet8, build_model, check_model_settings

from conftest import silent, tiny_dataset

SGD = momentum_sgd(0.9, weight_decay=0.01)


def _inputs(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2 + 1


def _with_affine(module: nn.Module, channels: int) -> nn.Module:
    """Weights other than BatchNorm's initial ones, the same for every module given."""
    with torch.no_grad():
        module.weight.copy_(torch.linspace(0.5, 1.5, channels))
        module.bias.copy_(torch.linspace(-0.2, 0.3, channels))
    return module


def _running(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in module.named_buffers()}


@pytest.mark.parametrize(
    ("reference", "shape"),
    [(nn.BatchNorm1d, (10, 3)), (nn.BatchNorm1d, (10, 3, 7)), (nn.BatchNorm2d, (10, 3, 4, 5))],
)
@pytest.mark.parametrize("ghost_batch", [0, 10, 16])
def test_ghost_batch_norm_over_the_whole_batch_is_batch_norm(reference, shape, ghost_batch):
    x = _inputs(shape)
    ours, theirs = _with_affine(GhostBatchNorm(3, ghost_batch), 3), _with_affine(reference(3), 3)
    for step in range(2):  # twice: the running statistics move from where the first step left them
        torch.testing.assert_close(ours(x + step), theirs(x + step), rtol=0, atol=0)
    assert _running(ours).keys() == _running(theirs).keys()
    for name, buffer in _running(theirs).items():
        torch.testing.assert_close(_running(ours)[name], buffer, rtol=0, atol=0)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(10, 3), (10, 3, 7), (10, 3, 4, 5)])
def test_ghost_batches_are_consecutive_chunks_each_updating_the_running_statistics(shape):
    x = _inputs(shape)
    ours = _with_affine(GhostBatchNorm(3, ghost_batch=4), 3)
    out = ours(x)
    running_mean, running_var = torch.zeros(3), torch.ones(3)
    weight, bias = ours.weight, ours.bias
    expected = [  # the last chunk is shorter; each one moves the running statistics in place
        F.batch_norm(chunk, running_mean, running_var, weight, bias, training=True, momentum=0.1)
        for chunk in (x[0:4], x[4:8], x[8:10])
    ]
    torch.testing.assert_close(out, torch.cat(expected), rtol=0, atol=0)
    torch.testing.assert_close(ours.running_mean, running_mean, rtol=0, atol=0)
    torch.testing.assert_close(ours.running_var, running_var, rtol=0, atol=0)
    assert ours.num_batches_tracked.item() == 3
    whole = nn.BatchNorm1d(3) if len(shape) < 4 else nn.BatchNorm2d(3)
    assert not torch.allclose(out, _with_affine(whole, 3)(x))  # chunk statistics are not the batch's
    ours.eval()  # eval mode: the running statistics, one chunk or many
    expected = F.batch_norm(x, running_mean, running_var, ours.weight, ours.bias, training=False)
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=0)


def _layers(model: nn.Module, kind: type[nn.Module], kernel: int | None = None) -> int:
    return sum(
        isinstance(m, kind) and (kernel is None or m.kernel_size[0] == kernel) for m in model.modules()
    )


@pytest.mark.parametrize(
    ("in_features", "shape", "conv"),
    [(40, (40,), nn.Conv1d), (64, (64,), nn.Conv2d), (64, (8, 8), nn.Conv2d)],
)
def test_resnet8_gives_logits_and_has_seven_convolutions_and_a_linear_layer(in_features, shape, conv):
    torch.manual_seed(0)
    model = ResNet8(in_features, num_classes=10, channels=4, ghost_batch=2)
    assert model(_inputs((5, *shape))).shape == (5, 10)
    model.eval()
    assert model(_inputs((1, *shape))).shape == (1, 10)
    # ResNet-8: 7 convolutions of width 3 and the linear head; the shortcut projections of the
    # two stages that change width and stride are 1-wide and not counted, as usual.
    assert (_layers(model, conv, kernel=3), _layers(model, nn.Linear)) == (7, 1)
    assert _layers(model, conv, kernel=1) == 2 and _layers(model, conv) == 9
    assert _layers(model, GhostBatchNorm) == 9
    assert model.head.in_features == 16  # 4 x channels after the global average pooling


def test_build_model_reads_channels_and_ghost_batch():
    model = build_model({"name": "resnet8", "channels": 3, "ghost_batch": 5}, 16, 3)
    assert isinstance(model, ResNet8) and model.stem[0].out_channels == 3
    assert {m.ghost_batch for m in model.modules() if isinstance(m, GhostBatchNorm)} == {5}
    assert build_model({"name": "resnet8", "channels": 3}, 16, 3).stem[1].ghost_batch == 0


def test_ghost_batch_is_refused_for_a_model_without_batch_norm():
    check_model_settings({"name": "resnet8", "ghost_batch": 8})
    check_model_settings({"name": "mlp", "ghost_batch": 0})
    check_model_settings({"name": "mlp"})
    with pytest.raises(ValueError, match=r"^model\.ghost_batch: .*'cnn2d'") as info:
        check_model_settings({"name": "cnn2d", "ghost_batch": 8})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("ghost_batch", [4, 0])
def test_member_k_equals_a_plain_run_with_seed_k_weights_and_running_statistics(strategy, ghost_batch):
    # 64 = an 8 x 8 image (digits'), 2 x 2 in the last stage: a ghost batch of 4 normalises 16 values
    # per channel there. A 4 x 4 image would leave 4 values: BatchNorm over so few magnifies float
    # rounding (the engine's fused update against torch.optim.SGD's) to 5e-3 within 16 steps.
    data = tiny_dataset(features=64)
    model_params = {"name": "resnet8", "channels": 2, "ghost_batch": ghost_batch}
    spec = TrainSpec(
        batch_size=8, seeds=[3, 7], lrs=[0.05, 0.02], epochs=2, momentum=0.9, weight_decay=0.01,
        strategy=strategy,
    )  # fmt: skip
    ensemble = Ensemble(model_params, data, spec, torch.device("cpu"))
    assert ensemble.strategy == strategy
    state = train(ensemble, progress=silent())
    last = {r["seed"]: r for r in state.history if r["epoch"] == spec.epochs}
    for member, (seed, lr) in enumerate(zip(spec.seeds, spec.lrs, strict=True)):
        model = plain_run(model_params, data, seed, lr, spec.batch_size, spec.epochs, SGD).model
        for name, tensor in model.named_parameters():
            torch.testing.assert_close(state.params[name][member], tensor.detach(), rtol=1e-4, atol=1e-5)
        buffers = dict(model.named_buffers())
        assert set(buffers) == set(state.buffers) and any(name.endswith("running_var") for name in buffers)
        for name, buffer in buffers.items():
            torch.testing.assert_close(state.buffers[name][member], buffer, rtol=1e-4, atol=1e-5)
        steps = spec.epochs * len(data.x_train) // spec.batch_size
        assert buffers["stem.1.num_batches_tracked"].item() == steps * (2 if ghost_batch else 1)
        with torch.no_grad():  # the engine measures in eval mode, on the running statistics
            val_loss = F.cross_entropy(model(data.x_val), data.y_val).item()
        assert last[seed]["val_loss"] == pytest.approx(val_loss, rel=1e-4)


def test_auto_trains_resnet8_by_vmap_and_it_has_no_packed_form():
    model = build_model({"name": "resnet8", "channels": 2, "ghost_batch": 4}, 16, 3)
    example = torch.zeros(16)
    assert resolve_strategy("auto", model, 4, 8, torch.device("cpu"), example) == "vmap"
    assert resolve_strategy("auto", model, 1, 8, torch.device("cpu"), example) == "loop"
    with pytest.raises(ValueError, match="no packed form"):
        resolve_strategy("packed", model, 4, 8, torch.device("cpu"), example)
