"""The ensemble engine against plain single-model PyTorch, and exact resume."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from reference_runs import assert_members_are_plain_sgd_runs, eval_loss, momentum_sgd, plain_run

from batchscale import strategies
from batchscale.data import Dataset
from batchscale.engine import Ensemble, TrainSpec, train
from batchscale.models import build_model
from batchscale.progress import EpochProgress
from batchscale.scaling import warmup_fraction

from conftest import MODELS, silent, tiny_dataset


class Killed(Exception):
    pass


class RecordedProgress(EpochProgress):
    """Keeps every progress line; raises Killed when epoch `die_at` ends, before its checkpoint
    is written, as a kill in the middle of that epoch would."""

    def __init__(self, die_at: int | None = None):
        super().__init__(1, stream=io.StringIO(), interactive=False)
        self.lines: list[str] = []
        self.die_at = die_at

    def note(self, message: str) -> None:
        self.lines.append(message)

    def epoch(self, epoch: int, best_val: float, line: str) -> None:
        if epoch == self.die_at:
            raise Killed
        self.lines.append(line)


def plain_sgd_run(
    model_params,
    data: Dataset,
    seed: int,
    lr: float,
    batch_size: int,
    epochs: int,
    momentum: float,
    weight_decay: float = 0.0,
):
    """The reference (reference_runs.plain_run) with torch.optim.SGD: its weights, its validation
    loss and its running training losses."""
    run = plain_run(model_params, data, seed, lr, batch_size, epochs, momentum_sgd(momentum, weight_decay))
    val_loss = eval_loss(run.model, data.x_val, data.y_val)
    return dict(run.model.named_parameters()), val_loss, run.running_losses


STRATEGIES = pytest.mark.parametrize("strategy", ["packed", "vmap", "loop"])


@STRATEGIES
@pytest.mark.parametrize("model_params", [*MODELS, {"name": "cnn2d", "channels": 3}], ids=lambda m: m["name"])
def test_member_k_equals_plain_run_with_seed_k(model_params, strategy):
    data = tiny_dataset(features=16)  # 16 = a 4 x 4 image for cnn2d
    # Different LRs per member, and a batch size that leaves a short last batch (64 = 2*24 + 16).
    spec = TrainSpec(
        batch_size=24,
        seeds=[3, 7],
        lrs=[0.05, 0.02],
        epochs=3,
        momentum=0.9,
        weight_decay=0.01,
        strategy=strategy,
    )
    ensemble = Ensemble(model_params, data, spec, torch.device("cpu"))
    assert_members_are_plain_sgd_runs(train(ensemble, progress=silent()), spec, model_params, data)


def test_members_packed_in_groups_that_fit_the_cache_equal_plain_runs(monkeypatch):
    """Where all members' activations outgrow the cache, `auto` packs as many as fit at a time:
    five members, two fit, so groups of 2, 2 and 1; member k is still the plain run with seed k."""
    model_params, data = MODELS[1], tiny_dataset(features=16)
    model = build_model(model_params, data.in_features, data.num_classes)
    member_bytes = 24 * strategies.widest_activation(model, data.x_train[0]) * 4
    monkeypatch.setattr(strategies, "PACKED_CACHE_BYTES", 2 * member_bytes)
    spec = TrainSpec(batch_size=24, seeds=[1, 2, 3, 4, 5], lrs=[0.05, 0.04, 0.03, 0.02, 0.01], epochs=3,
                     momentum=0.9, strategy="auto")  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the cache of one core
    try:
        ensemble = Ensemble(model_params, data, spec, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    assert (ensemble.strategy, ensemble.packed_group, ensemble.strategy_label) == (
        "packed", 2, "packed in groups of 2"
    )
    assert_members_are_plain_sgd_runs(train(ensemble, progress=silent()), spec, model_params, data)


@STRATEGIES
def test_a_tuned_sweep_job_every_seed_at_every_lr_equals_plain_runs(strategy):
    """A job of the tuned sweep trains each seed at several LRs (members LR by LR, as
    `batchscale train --lr a b` lays them out): member (seed, lr) is the plain run with that seed
    and LR, and its test-split loss at the final weights is the plain model's."""
    base = tiny_dataset(features=16)
    rng = torch.Generator().manual_seed(5)
    data = Dataset(
        base.x_train, base.y_train, base.x_val, base.y_val, num_classes=3,
        x_test=torch.randn(20, 16, generator=rng), y_test=torch.randint(0, 3, (20,), generator=rng),
    )  # fmt: skip
    seeds, lrs = [3, 7], [0.05, 0.01]
    spec = TrainSpec(
        batch_size=24, seeds=[s for _ in lrs for s in seeds], lrs=[lr for lr in lrs for _ in seeds],
        epochs=2, momentum=0.9, strategy=strategy,
    )  # fmt: skip
    model_params = MODELS[1]
    ensemble = Ensemble(model_params, data, spec, torch.device("cpu"))
    state = train(ensemble, progress=silent())
    tests = {(r["seed"], r["lr"], r["weights"]): r for r in ensemble.test_rows(state)}
    assert len(tests) == 2 * len(spec.seeds)
    for member, (seed, lr) in enumerate(zip(spec.seeds, spec.lrs, strict=True)):
        params, _, _ = plain_sgd_run(model_params, data, seed, lr, spec.batch_size, spec.epochs, 0.9)
        for name, tensor in params.items():
            torch.testing.assert_close(state.params[name][member], tensor.detach(), rtol=1e-5, atol=1e-6)
        torch.manual_seed(seed)
        plain = build_model(model_params, data.in_features, data.num_classes)
        plain.load_state_dict({name: t.detach() for name, t in params.items()})
        with torch.no_grad():
            expected = F.cross_entropy(plain(data.x_test), data.y_test).item()
        assert tests[seed, lr, "final"]["test_loss"] == pytest.approx(expected, rel=1e-5)
    rows = [r for r in state.history if r["epoch"] == spec.epochs]
    assert sorted((r["seed"], r["lr"]) for r in rows) == sorted(zip(spec.seeds, spec.lrs, strict=True))


def test_without_a_test_split_the_test_losses_are_nan():
    data = tiny_dataset()
    spec = TrainSpec(batch_size=16, seeds=[0, 1], lrs=[0.05] * 2, epochs=1, momentum=0.9)
    ensemble = Ensemble(MODELS[0], data, spec, torch.device("cpu"))
    rows = ensemble.test_rows(train(ensemble, progress=silent()))
    assert len(rows) == 4 and all(math.isnan(r["test_loss"]) for r in rows)


def test_members_differ_and_history_is_complete():
    data = tiny_dataset()
    spec = TrainSpec(batch_size=16, seeds=[0, 1, 2], lrs=[0.05] * 3, epochs=2, momentum=0.9)
    state = train(Ensemble(MODELS[0], data, spec, torch.device("cpu")), progress=silent())
    assert len(state.history) == 3 * (spec.epochs + 1)  # epoch 0 (at init) .. epochs
    assert not torch.equal(state.params["net.0.weight"][0], state.params["net.0.weight"][1])
    first = [r for r in state.history if r["epoch"] == 1]
    for row in first:
        assert row["update_norm"] == pytest.approx(row["dist_from_init"])  # one epoch from init
        assert row["lr"] == 0.05


def _without_timing(history) -> pd.DataFrame:
    return pd.DataFrame(history).drop(columns="epoch_seconds")


def test_resume_after_interruption_gives_identical_history(tmp_path):
    data = tiny_dataset()
    spec = TrainSpec(batch_size=16, seeds=[0, 1], lrs=[0.05, 0.1], epochs=4, momentum=0.9)
    reference = train(Ensemble(MODELS[0], data, spec, torch.device("cpu")), progress=silent())

    checkpoint = tmp_path / "checkpoint.pt"
    dying = RecordedProgress(die_at=3)
    with pytest.raises(Killed):  # checkpoint_seconds=0: a checkpoint after every epoch
        train(
            Ensemble(MODELS[0], data, spec, torch.device("cpu")),
            checkpoint,
            "run-a",
            dying,
            checkpoint_seconds=0,
        )
    progress = RecordedProgress()
    resumed = train(Ensemble(MODELS[0], data, spec, torch.device("cpu")), checkpoint, "run-a", progress)
    assert progress.lines[0].startswith("resuming") and "epoch 2" in progress.lines[0]
    pd.testing.assert_frame_equal(_without_timing(resumed.history), _without_timing(reference.history))


def test_checkpoints_come_after_the_first_epoch_then_at_most_every_checkpoint_seconds(tmp_path, monkeypatch):
    from batchscale import engine

    saved_at = []
    monkeypatch.setattr(engine, "save_torch_atomic", lambda path, state: saved_at.append(state["epoch"]))
    data = tiny_dataset()
    spec = TrainSpec(batch_size=16, seeds=[0], lrs=[0.05], epochs=5, momentum=0.9)
    train(Ensemble(MODELS[0], data, spec, torch.device("cpu")), tmp_path / "c.pt", "a", silent())
    assert saved_at == [1]  # tiny epochs: 10 s never pass
    saved_at.clear()
    train(
        Ensemble(MODELS[0], data, spec, torch.device("cpu")),
        tmp_path / "c.pt",
        "a",
        silent(),
        checkpoint_seconds=0,
    )
    assert saved_at == [1, 2, 3, 4, 5]


def test_checkpoint_of_another_run_is_not_resumed(tmp_path):
    data = tiny_dataset()
    spec = TrainSpec(batch_size=16, seeds=[0], lrs=[0.05], epochs=1, momentum=0.0)
    checkpoint = tmp_path / "checkpoint.pt"
    train(Ensemble(MODELS[0], data, spec, torch.device("cpu")), checkpoint, "run-a", silent())
    progress = RecordedProgress()
    train(Ensemble(MODELS[0], data, spec, torch.device("cpu")), checkpoint, "run-b", progress)
    assert not any(line.startswith("resuming") for line in progress.lines)


def test_progress_is_a_bar_on_a_terminal_and_one_line_per_epoch_in_a_log():
    data = tiny_dataset()
    spec = TrainSpec(batch_size=16, seeds=[0, 1], lrs=[0.05, 0.05], epochs=3, momentum=0.9)

    log = io.StringIO()  # not a terminal: what Snakemake's log file or a SLURM job gets
    train(Ensemble(MODELS[0], data, spec, torch.device("cpu")), progress=EpochProgress(3, stream=log))
    lines = log.getvalue().splitlines()
    assert [line.split()[:2] for line in lines] == [["epoch", "1/3"], ["epoch", "2/3"], ["epoch", "3/3"]]
    assert "\r" not in log.getvalue() and all("best val" in line for line in lines)

    terminal = io.StringIO()
    bar = EpochProgress(3, desc="B=16", stream=terminal, interactive=True)
    train(Ensemble(MODELS[0], data, spec, torch.device("cpu")), progress=bar)
    drawn = terminal.getvalue()
    assert "\r" in drawn and "B=16" in drawn and "3/3" in drawn and "best val" in drawn


def test_divergent_member_is_recorded_and_others_finish():
    data = tiny_dataset()
    spec = TrainSpec(batch_size=16, seeds=[0, 1], lrs=[0.05, 1e6], epochs=3, momentum=0.9)
    state = train(Ensemble(MODELS[0], data, spec, torch.device("cpu")), progress=silent())
    assert state.diverged_epoch.tolist()[0] == -1
    assert state.diverged_epoch.tolist()[1] >= 1
    healthy = [r for r in state.history if r["seed"] == 0]
    assert all(math.isfinite(r["val_loss"]) for r in healthy)


def test_lr_warmup_ramps_linearly_then_holds():
    assert [warmup_fraction(s, 4) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert warmup_fraction(0, 0) == 1.0


def test_warmup_run_matches_plain_sgd_with_the_same_ramp():
    """Member k with a warm-up equals torch.optim.SGD whose LR follows the same ramp."""
    data = tiny_dataset()
    spec = TrainSpec(
        batch_size=16, seeds=[5], lrs=[0.08], epochs=2, momentum=0.9, warmup_epochs=1, warmup_start_lr=0.01
    )
    state = train(Ensemble(MODELS[0], data, spec, torch.device("cpu")), progress=silent())
    torch.manual_seed(5)
    model = build_model(MODELS[0], data.in_features, data.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(5)
    steps_per_epoch, step = 4, 0  # 64 examples / 16
    for _ in range(spec.epochs):
        perm = torch.randperm(64, generator=gen)
        for start in range(0, 64, 16):
            for group in opt.param_groups:
                group["lr"] = 0.01 + (0.08 - 0.01) * warmup_fraction(step, steps_per_epoch)
            idx = perm[start : start + 16]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    for name, tensor in model.named_parameters():
        torch.testing.assert_close(state.params[name][0], tensor.detach(), rtol=1e-5, atol=1e-6)
    lrs = [r["lr"] for r in state.history if r["epoch"] > 0]
    assert lrs[0] == pytest.approx(0.01 + 0.07 * 3 / 4) and lrs[1] == pytest.approx(0.08)


def first_epoch_competition(model_params: dict, data: Dataset, batch_size: int, strategy: str = "auto"):
    """Gradient competition as training records it for epoch 1, with what it was measured on:
    the initial weights and the first epoch's shuffles."""
    spec = TrainSpec(batch_size=batch_size, seeds=[0, 1], lrs=[0.05, 0.05], epochs=1, momentum=0.9,
                     strategy=strategy)  # fmt: skip
    ensemble = Ensemble(model_params, data, spec, torch.device("cpu"))
    perms = ensemble.epoch_permutations(ensemble.fresh_state())
    state = train(ensemble, progress=silent())
    ratio = [row["grad_competition"] for row in state.history if row["epoch"] == 1]
    return ensemble, state.init, perms, ratio


def test_gradient_competition_is_one_for_identical_examples_and_matches_the_probe():
    from batchscale import probes

    data = tiny_dataset()
    ensemble, init, perms, ratio = first_epoch_competition(MODELS[0], data, batch_size=8)
    for member in range(2):
        idx = perms[member, :8]
        expected = probes.gradient_competition(
            ensemble.base, probes.member_params(init, member), {}, data.x_train[idx], data.y_train[idx]
        )
        assert ratio[member] == pytest.approx(expected, rel=1e-5)
    same = Dataset(
        x_train=data.x_train[:1].repeat(64, 1), y_train=data.y_train[:1].repeat(64),
        x_val=data.x_val, y_val=data.y_val, num_classes=3,
    )  # fmt: skip
    _, _, _, ratio = first_epoch_competition(MODELS[0], same, batch_size=8)
    assert ratio == pytest.approx([1.0, 1.0], rel=1e-5)


@STRATEGIES
def test_gradient_competition_of_a_large_batch_samples_only_the_per_example_norms(monkeypatch, strategy):
    """Above COMPETITION_SAMPLE examples, the numerator is still the whole batch's gradient
    (the first step's own); only the mean per-example norm comes from the batch's first examples."""
    from batchscale import engine, probes

    monkeypatch.setattr(engine, "COMPETITION_SAMPLE", 5)
    data = tiny_dataset()
    ensemble, init, perms, ratio = first_epoch_competition(MODELS[1], data, batch_size=32, strategy=strategy)
    for member in range(2):
        idx = perms[member, :32]
        per_example = probes.per_example_gradients(
            ensemble.base, probes.member_params(init, member), {}, data.x_train[idx], data.y_train[idx]
        )
        expected = per_example.mean(0).norm() / per_example[:5].norm(dim=1).mean()
        assert ratio[member] == pytest.approx(expected.item(), rel=1e-4)


@STRATEGIES
def test_a_diverged_member_is_frozen_where_it_stopped(strategy):
    data = tiny_dataset()
    spec = TrainSpec(batch_size=16, seeds=[0, 1], lrs=[0.05, 0.05], epochs=4, momentum=0.9, strategy=strategy)
    ensemble = Ensemble(MODELS[0], data, spec, torch.device("cpu"))
    state = ensemble.fresh_state()
    # Member 1 has diverged, and its weights are so large that its logits overflow: its
    # gradients are NaN while its weights are still finite numbers. They must stay as they are.
    state.diverged_epoch[1] = 0
    state.params["net.0.weight"][1] = 3e38  # near float32 max: the first layer overflows to inf
    frozen = {k: v[1].clone() for k, v in state.params.items()}
    healthy = {k: v[0].clone() for k, v in state.params.items()}
    ensemble.train_epoch(state, ensemble.epoch_permutations(state))
    for name, tensor in frozen.items():
        torch.testing.assert_close(state.params[name][1], tensor)
    assert not torch.equal(state.params["net.0.weight"][0], healthy["net.0.weight"])  # member 0 trains


def test_a_model_without_a_packed_form_trains_by_vmap_and_refuses_packed():
    from batchscale.engine import resolve_strategy

    model = torch.nn.Sequential(torch.nn.Linear(12, 3))
    example = torch.zeros(12)
    assert resolve_strategy("auto", model, 8, 32, torch.device("cpu"), example) == "vmap"
    with pytest.raises(ValueError, match="train.ensemble"):
        resolve_strategy("packed", model, 8, 32, torch.device("cpu"), example)
