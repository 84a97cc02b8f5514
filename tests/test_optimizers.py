"""Every optimizer of the engine, member by member, against torch.optim with that member's seed."""

from __future__ import annotations

import pytest
import torch
from reference_runs import plain_run

from batchscale.engine import Ensemble, TrainSpec, load_checkpoint, train

from conftest import MODELS, silent, tiny_dataset

# (train.optimizer, the TrainSpec settings, the torch.optim reference's class and settings)
CASES = {
    "sgd-nesterov": (
        dict(optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=0.01),
        lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=0.01),
    ),
    "sgd-plain": (
        dict(optimizer="sgd", momentum=0.0),
        lambda params, lr: torch.optim.SGD(params, lr=lr),
    ),
    "adam": (
        dict(optimizer="adam", momentum=0.9, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01),
        lambda params, lr: torch.optim.Adam(params, lr=lr, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01),
    ),
    "adamw": (
        dict(optimizer="adamw", momentum=0.9, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
        lambda params, lr: torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
    ),
}


@pytest.mark.parametrize("strategy", ["packed", "vmap", "loop"])
@pytest.mark.parametrize("case", list(CASES))
def test_member_k_equals_torch_optim_with_seed_k(case, strategy):
    settings, make_optimizer = CASES[case]
    data = tiny_dataset(features=16)
    model_params = MODELS[1]
    # Per-member LRs, and a short last batch (64 = 2 x 24 + 16).
    spec = TrainSpec(batch_size=24, seeds=[3, 7], lrs=[0.01, 0.003], epochs=3, strategy=strategy, **settings)
    ensemble = Ensemble(model_params, data, spec, torch.device("cpu"))
    state = train(ensemble, progress=silent())
    for member, (seed, lr) in enumerate(zip(spec.seeds, spec.lrs, strict=True)):
        reference = plain_run(model_params, data, seed, lr, spec.batch_size, spec.epochs, make_optimizer)
        for name, tensor in reference.model.named_parameters():
            torch.testing.assert_close(state.params[name][member], tensor.detach(), rtol=1e-5, atol=1e-6)


def test_adam_resumes_from_its_checkpoint_with_the_same_numbers(tmp_path):
    """Adam's moments and its step count (the bias correction) survive a checkpoint."""
    data = tiny_dataset(features=16)
    spec = TrainSpec(batch_size=16, seeds=[0, 1], lrs=[0.01, 0.02], epochs=4, momentum=0.9, optimizer="adam")
    whole = train(Ensemble(MODELS[1], data, spec, torch.device("cpu")), progress=silent())

    half = TrainSpec(**{**spec.__dict__, "epochs": 2})
    checkpoint = tmp_path / "checkpoint.pt"
    train(Ensemble(MODELS[1], data, half, torch.device("cpu")), checkpoint, "run", silent(), 0.0)
    saved = load_checkpoint(checkpoint, "run", torch.device("cpu"))
    assert set(saved.optimizer) == {"exp_avg", "exp_avg_sq"} and saved.epoch == 2
    resumed = train(Ensemble(MODELS[1], data, spec, torch.device("cpu")), checkpoint, "run", silent(), 0.0)
    for name, tensor in whole.params.items():
        torch.testing.assert_close(resumed.params[name], tensor, rtol=0, atol=0)


def test_a_diverged_adam_member_is_frozen_and_the_other_trains_on():
    data = tiny_dataset(features=16)
    spec = TrainSpec(batch_size=16, seeds=[0, 1], lrs=[0.01, 1e8], epochs=3, momentum=0.9, optimizer="adam")
    state = train(Ensemble(MODELS[1], data, spec, torch.device("cpu")), progress=silent())
    assert state.diverged_epoch.tolist()[0] == -1 and state.diverged_epoch.tolist()[1] >= 1
    assert all(torch.isfinite(p[0]).all() for p in state.params.values())


def test_a_malladi_job_trains_with_the_betas_and_eps_the_rule_gives(tmp_path):
    """`batchscale train --malladi` (a run key ending _malladi) at B = 2 x base: 1 - beta doubles,
    eps shrinks by sqrt(2); the job's summary records what it trained with."""
    import json

    import numpy as np

    from conftest import random_arrays, run

    np.savez(tmp_path / "mine.npz", **random_arrays(n_train=128))
    params = json.dumps({
        "data": {"name": "npz", "path": "mine.npz"}, "model": {"name": "mlp", "hidden": [8]},
        "train": {"optimizer": "adam", "base_lr": 0.001, "base_batch_size": 32, "epochs": 1, "seeds": [0]},
    })  # fmt: skip
    run(["batchscale", "prepare", "--params", params, "--out", "prepared.npz"], tmp_path)
    run(["batchscale", "train", "--params", params, "--batch-size", "64", "--lr", "0.0014142135623730952",
         "--malladi", "--data", "prepared.npz", "--out-dir", "run"], tmp_path)  # fmt: skip
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    expected = {"name": "adam", "betas": [0.8, 0.998], "eps": pytest.approx(1e-8 / 2**0.5)}
    assert summary["optimizer"] == expected
