"""Models with buffers and train-mode randomness in the ensemble: BatchNorm's running statistics
and Dropout's masks are each member's own, and member k computes what a plain single-model
PyTorch loop with seed k computes (weights, running statistics, masks)."""

from __future__ import annotations

import pytest
import torch
from reference_runs import eval_loss, plain_run

from batchscale.engine import Ensemble, TrainSpec, load_checkpoint, train

from conftest import silent, tiny_dataset

FACTORY = """
from torch import nn

def batchnorm(in_features, num_classes):
    return nn.Sequential(
        nn.Linear(in_features, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, num_classes)
    )

def dropout(in_features, num_classes):
    return nn.Sequential(nn.Linear(in_features, 12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, num_classes))

def both(in_features, num_classes):
    return nn.Sequential(
        nn.Linear(in_features, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, num_classes)
    )
"""


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "layers.py"
    path.write_text(FACTORY)
    return path


def custom(path, name: str) -> dict:
    return {"name": "custom", "factory": f"{path}:{name}", "kwargs": {}}


def assert_member_is_plain_run(state, member: int, model: torch.nn.Module):
    for name, tensor in model.named_parameters():
        torch.testing.assert_close(state.params[name][member], tensor.detach(), rtol=1e-5, atol=1e-6)
    for name, tensor in model.named_buffers():
        torch.testing.assert_close(state.buffers[name][member], tensor, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("layers", "strategy"),
    [("batchnorm", "vmap"), ("batchnorm", "loop"), ("batchnorm", "auto"),
     ("dropout", "loop"), ("dropout", "auto"), ("both", "loop")],
)  # fmt: skip
def test_member_k_with_batchnorm_or_dropout_equals_plain_run_with_seed_k(model_file, layers, strategy):
    data = tiny_dataset(features=16)
    model_params = custom(model_file, layers)
    spec = TrainSpec(batch_size=24, seeds=[3, 7], lrs=[0.05, 0.02], epochs=3, momentum=0.9, strategy=strategy)
    ensemble = Ensemble(model_params, data, spec, torch.device("cpu"))
    state = train(ensemble, progress=silent())
    last = {r["seed"]: r for r in state.history if r["epoch"] == spec.epochs}
    for member, (seed, lr) in enumerate(zip(spec.seeds, spec.lrs, strict=True)):
        model = plain_run(model_params, data, seed, lr, spec.batch_size, spec.epochs).model
        assert_member_is_plain_run(state, member, model)
        val_loss = eval_loss(model, data.x_val, data.y_val)
        # Measured in eval mode: on the running statistics, without dropout.
        assert last[seed]["val_loss"] == pytest.approx(val_loss, rel=1e-5)


def test_auto_loops_over_members_with_dropout_and_vmaps_batchnorm(model_file):
    data = tiny_dataset(features=16)
    spec = TrainSpec(batch_size=24, seeds=[0, 1], lrs=[0.05] * 2, epochs=1, momentum=0.9)
    assert Ensemble(custom(model_file, "dropout"), data, spec, torch.device("cpu")).strategy == "loop"
    batchnorm = Ensemble(custom(model_file, "batchnorm"), data, spec, torch.device("cpu"))
    assert batchnorm.strategy == "vmap"
    explicit = TrainSpec(**{**spec.__dict__, "strategy": "vmap"})
    with pytest.raises(ValueError, match="train.ensemble: vmap cannot give each member its own dropout"):
        Ensemble(custom(model_file, "dropout"), data, explicit, torch.device("cpu"))


def test_a_resumed_run_draws_the_same_masks_and_keeps_its_running_statistics(model_file, tmp_path):
    data = tiny_dataset(features=16)
    model_params = custom(model_file, "both")
    spec = TrainSpec(batch_size=16, seeds=[0, 1], lrs=[0.05, 0.02], epochs=4, momentum=0.9)
    whole = train(Ensemble(model_params, data, spec, torch.device("cpu")), progress=silent())
    half = TrainSpec(**{**spec.__dict__, "epochs": 2})
    checkpoint = tmp_path / "checkpoint.pt"
    train(Ensemble(model_params, data, half, torch.device("cpu")), checkpoint, "run", silent(), 0.0)
    assert len(load_checkpoint(checkpoint, "run", torch.device("cpu")).random_states) == 2
    resumed = train(Ensemble(model_params, data, spec, torch.device("cpu")), checkpoint, "run", silent(), 0.0)
    for saved, again in ((whole.params, resumed.params), (whole.buffers, resumed.buffers),
                         (whole.best_buffers, resumed.best_buffers)):  # fmt: skip
        for name, tensor in saved.items():
            torch.testing.assert_close(again[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("validation", ["held out", "the training set"])
def test_the_best_weights_keep_the_running_statistics_of_their_epoch(model_file, validation):
    """Random labels: the held-out loss may never improve (best epoch 0, the initial statistics);
    validating on the training set it improves (a later epoch's statistics)."""
    from batchscale.data import Dataset

    data = tiny_dataset(features=16)
    if validation == "the training set":
        data = Dataset(data.x_train, data.y_train, data.x_train, data.y_train, num_classes=data.num_classes)
    spec = TrainSpec(batch_size=16, seeds=[0, 1], lrs=[0.05, 0.01], epochs=3, momentum=0.9)
    ensemble = Ensemble(custom(model_file, "batchnorm"), data, spec, torch.device("cpu"))
    state = ensemble.fresh_state()
    ensemble.record_epoch(state, 0.0, None, None, None)
    snapshots = {0: {k: v.clone() for k, v in state.buffers.items()}}
    for _ in range(spec.epochs):
        ensemble.train_epoch(state, ensemble.epoch_permutations(state))
        ensemble.record_epoch(state, 0.0, None, None, None)
        snapshots[state.epoch] = {k: v.clone() for k, v in state.buffers.items()}
    if validation == "the training set":
        assert (state.best_epoch >= 1).all()
    for member, best in enumerate(state.best_epoch.tolist()):
        for name, tensor in snapshots[best].items():
            torch.testing.assert_close(state.best_buffers[name][member], tensor[member], rtol=0, atol=0)
