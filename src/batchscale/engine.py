"""The training engine: all seeds of a cell train together as one ensemble.

The members' gradients come from one packed model, from `torch.func.vmap`, or from a loop
over members (strategies.py; `resolve_strategy` picks, the maths is the same). Every member has its own
initial weights (drawn with `torch.manual_seed(seed)`), its own shuffling generator (seeded
with the same seed) and its own learning rate; the step is momentum SGD written out
explicitly, so member k is the same computation as a plain single-model run with
`torch.optim.SGD` and seed k (tests/test_engine.py checks this); Adam and AdamW likewise
(optimizers.py, tests/test_optimizers.py). Data sit on the device as
tensors and a batch is an index gather, not a DataLoader.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.func import stack_module_state

from batchscale import optimizers, packed
from batchscale.data import Dataset
from batchscale.devices import resolve_device, synchronize
from batchscale.io import load_torch, save_torch_atomic
from batchscale.models import build_model
from batchscale.progress import EpochProgress
from batchscale.scaling import warmup_fraction
from batchscale.strategies import (
    STRATEGIES,
    MemberRandomness,
    can_pack,
    choose,
    example_gradients,
    generator_state,
    is_random,
    make_strategy,
    resolve_strategy,
    widest_activation,
)
from batchscale.strategies import describe as describe_strategy

# Importable from here as before: the CLI, the bench and the tests name them as engine's.
__all__ = ["STRATEGIES", "can_pack", "resolve_device", "resolve_strategy", "widest_activation"]

CHECKPOINT_VERSION = 2  # 2: the optimizer's buffers by name (Adam's two moments)
# Examples whose per-example gradient norms mean_example_grad_norm averages (the batch's first).
COMPETITION_SAMPLE = 16
EVAL_CHUNK = 8192  # examples per forward pass when evaluating, to bound memory
# A checkpoint after the first epoch, then at most one per this many seconds: a kill loses at
# most this much training, and short epochs (a GPU's take milliseconds) are not dominated by
# writing the state (docs/decisions.md, "Checkpoints after the first epoch").
CHECKPOINT_SECONDS = 10.0


@dataclass(frozen=True)
class TrainSpec:
    """What one ensemble job trains: one batch size, one learning rate per member."""

    batch_size: int
    seeds: list[int]
    lrs: list[float]
    epochs: int
    momentum: float
    weight_decay: float = 0.0
    warmup_epochs: int = 0
    warmup_start_lr: float = 0.0  # the ramp starts here (Goyal et al.: the base LR)
    strategy: str = "auto"  # packed | vmap | loop | auto (resolve_strategy)
    optimizer: str = "sgd"  # sgd | adam | adamw (optimizers.py)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    @property
    def optimizer_spec(self) -> optimizers.OptimizerSpec:
        return optimizers.OptimizerSpec(
            self.optimizer, self.momentum, self.nesterov, tuple(self.betas), self.eps, self.weight_decay
        )

    def steps_per_epoch(self, num_train: int) -> int:
        return math.ceil(num_train / self.batch_size)


@dataclass
class EnsembleState:
    """Everything needed to continue training exactly where it stopped."""

    epoch: int
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    optimizer: dict[str, dict[str, torch.Tensor]]  # the optimizer's buffers, by name then parameter
    init: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor]
    best_val: torch.Tensor
    best_epoch: torch.Tensor
    diverged_epoch: torch.Tensor
    generator_states: list[torch.Tensor]
    history: list[dict] = field(default_factory=list)
    best_buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # BatchNorm's, at the best epoch
    # Each member's train-mode random stream (Dropout's masks); empty for a model without one.
    random_states: list[torch.Tensor] = field(default_factory=list)


class EpochResult(NamedTuple):
    """What `train_epoch` measured on the way, one value per member, on the device."""

    train_loss: torch.Tensor  # mean loss over the epoch's examples as they were seen
    first_grad_norm: torch.Tensor  # |gradient| of the first batch, at the epoch's starting weights

    def grad_competition(self, mean_example_grad_norm: torch.Tensor) -> torch.Tensor:
        """|mean of per-example gradients| / mean |per-example gradient| on the epoch's first
        batch, at the weights the epoch starts from: 1 when the examples' gradients agree,
        1/sqrt(B) when they are orthogonal (C10's "gradients compete inside a batch"). The
        numerator is the first step's own batch gradient, so it costs nothing extra."""
        return self.first_grad_norm / mean_example_grad_norm


def _per_member_norm(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    """L2 norm of (a - b) over all parameters, one value per member."""
    total = None
    for name, tensor in a.items():
        sq = (tensor - b[name]).flatten(1).pow(2).sum(1)
        total = sq if total is None else total + sq
    return total.sqrt()


_member_view = optimizers.member_view


class Ensemble:
    """A stack of independently seeded copies of one model, trained in lock step."""

    def __init__(self, model_params: dict, data: Dataset, spec: TrainSpec, device: torch.device):
        self.spec = spec
        self.device = device
        self.data = data.to(device)
        models, random_states = [], []
        for seed in spec.seeds:
            torch.manual_seed(seed)
            models.append(build_model(model_params, data.in_features, data.num_classes))
            # Where a plain run with this seed goes on drawing its dropout masks.
            random_states.append(generator_state(device))
        params, buffers = stack_module_state(models)
        self.initial_params = {k: v.detach().to(device) for k, v in params.items()}
        self.initial_buffers = {k: v.detach().to(device) for k, v in buffers.items()}
        # functional_call needs only the module's structure: keep weightless copies, one in
        # train mode (BatchNorm on the batch's statistics, Dropout on) for the training steps,
        # one in eval mode (running statistics, no dropout) for every measurement.
        self.base: nn.Module = copy.deepcopy(models[0]).to("meta").train()
        self.eval_base: nn.Module = copy.deepcopy(models[0]).to("meta").eval()
        self.initial_random_states = random_states if is_random(models[0]) else []
        # Each member's dropout stream; train_epoch points it at the state's streams, which it
        # advances in place and which are checkpointed with the state.
        self._randomness = MemberRandomness([], device)
        self.peak_lrs = torch.tensor(spec.lrs, dtype=torch.float32, device=device)
        example = data.x_train[0]
        # Chosen once: how the members train, and how they are evaluated (evaluation passes
        # whole data sets, a far larger batch than training's).
        members, eval_batch = len(models), min(len(data.x_val), EVAL_CHUNK)
        self.strategy, self.packed_group = choose(spec.strategy, models[0], members, spec.batch_size, device,
                                                  example)  # fmt: skip
        self.eval_strategy, eval_group = choose(spec.strategy, models[0], members, eval_batch, device,
                                                example)  # fmt: skip
        randomness = self._randomness if self.initial_random_states else None
        self._training = make_strategy(self.strategy, self.base, members, randomness, self.packed_group)
        self._evaluation = make_strategy(self.eval_strategy, self.eval_base, members, group=eval_group)

    @property
    def members(self) -> int:
        return len(self.spec.seeds)

    @property
    def strategy_label(self) -> str:
        """How the members train, as summary.json and jobs.csv name it."""
        return describe_strategy(self.strategy, self.packed_group, self.members)

    def member_grads(self, params, buffers, x, y) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every member's gradient of its mean loss on its own batch (x[m], y[m]), stacked like
        `params`, and the (members,) losses."""
        return self._training.gradients(params, buffers, x, y)

    def fresh_state(self) -> EnsembleState:
        generators = [torch.Generator().manual_seed(seed) for seed in self.spec.seeds]
        m = self.members
        return EnsembleState(
            epoch=0,
            params={k: v.clone() for k, v in self.initial_params.items()},
            buffers={k: v.clone() for k, v in self.initial_buffers.items()},
            optimizer=optimizers.initial_state(self.spec.optimizer_spec, self.initial_params),
            init={k: v.clone() for k, v in self.initial_params.items()},
            best={k: v.clone() for k, v in self.initial_params.items()},
            best_val=torch.full((m,), math.inf, device=self.device),
            best_epoch=torch.zeros(m, dtype=torch.long, device=self.device),
            diverged_epoch=torch.full((m,), -1, dtype=torch.long, device=self.device),
            generator_states=[g.get_state() for g in generators],
            best_buffers={k: v.clone() for k, v in self.initial_buffers.items()},
            random_states=[s.clone() for s in self.initial_random_states],
        )

    @torch.no_grad()
    def evaluate(self, state: EnsembleState, x: torch.Tensor, y: torch.Tensor):
        """Mean loss and accuracy of every member on (x, y): two (members,) tensors."""
        loss_sum = torch.zeros(self.members, device=self.device)
        correct = torch.zeros(self.members, device=self.device)
        for start in range(0, len(x), EVAL_CHUNK):
            xs, ys = x[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK]
            logits = self._evaluation.logits(state.params, state.buffers, xs)
            chunk_loss, chunk_correct = packed.member_sums(logits, ys)
            loss_sum += chunk_loss
            correct += chunk_correct
        return loss_sum / len(x), correct / len(x)

    def epoch_permutations(self, state: EnsembleState) -> torch.Tensor:
        """One shuffle of the training set per member, from that member's own generator."""
        num_train = len(self.data.x_train)
        perms = []
        for i, gen_state in enumerate(state.generator_states):
            gen = torch.Generator()
            gen.set_state(gen_state)
            perms.append(torch.randperm(num_train, generator=gen))
            state.generator_states[i] = gen.get_state()
        return torch.stack(perms).to(self.device)

    def _scheduled_lrs(self, step: int, warmup_steps: int) -> torch.Tensor:
        """Every member's LR at global step `step`: the warm-up ramp, then the peak."""
        fraction = warmup_fraction(step, warmup_steps)
        if fraction == 1.0:
            return self.peak_lrs
        start = self.spec.warmup_start_lr
        return start + (self.peak_lrs - start) * fraction

    @torch.no_grad()
    def mean_example_grad_norm(self, state: EnsembleState, perms: torch.Tensor) -> torch.Tensor:
        """Each member's mean per-example gradient norm over the first COMPETITION_SAMPLE
        examples of the epoch's first batch, at the weights the epoch starts from: the
        denominator of gradient competition (`EpochResult.grad_competition`).

        The mean of per-example norms does not grow with B, so a sample estimates it:
        per-example gradients of every example would cost about 0.1 s per epoch at B=256 and
        1 GB of memory at B=4000, more than the training step itself.
        """
        sample = perms[:, : min(self.spec.batch_size, COMPETITION_SAMPLE)]
        x, y = self.data.x_train[sample], self.data.y_train[sample]
        # Eval mode: one example has no batch statistics, and the measurement draws no masks.
        grads = example_gradients(self.eval_base, state.params, state.buffers, x, y)
        flat = torch.cat([g.flatten(2) for g in grads.values()], dim=2)  # members, examples, weights
        return flat.norm(dim=2).mean(1)

    @torch.no_grad()
    def train_epoch(self, state: EnsembleState, perms: torch.Tensor) -> EpochResult:
        """One pass over the training set for every member, in the order `perms` gives
        (one row per member, from `epoch_permutations`), in place on `state`.

        Returns each member's training loss averaged over the epoch's examples as they were
        seen (the running loss that training curves usually show) and the norm of its first
        step's gradient, both kept on the device.
        """
        spec = self.spec
        x, y = self.data.x_train, self.data.y_train
        steps = spec.steps_per_epoch(len(x))
        warmup_steps = spec.warmup_epochs * steps
        active = (state.diverged_epoch < 0).float()
        # A diverged member is frozen where it stopped: its NaN gradients must not reach its
        # weights through the momentum (0 x NaN is NaN), so its update is masked out.
        frozen = bool((active == 0).any())
        loss_sum = torch.zeros(self.members, device=self.device)
        names = list(state.params)
        params = [state.params[n] for n in names]
        buffers = {which: [tensors[n] for n in names] for which, tensors in state.optimizer.items()}
        optimizer = spec.optimizer_spec
        self._randomness.states = state.random_states
        for step in range(steps):
            idx = perms[:, step * spec.batch_size : (step + 1) * spec.batch_size]
            grads, losses = self.member_grads(state.params, state.buffers, x[idx], y[idx])
            loss_sum += losses * idx.shape[1]
            if step == 0:
                first_grad_norm = torch.cat([g.flatten(1) for g in grads.values()], dim=1).norm(dim=1)
            global_step = state.epoch * steps + step
            lrs = active * self._scheduled_lrs(global_step, warmup_steps)
            # Every parameter of every member in a few fused multi-tensor ops (optimizers.py).
            updates = optimizers.updates(
                optimizer, params, [grads[n] for n in names], buffers, lrs, global_step + 1
            )
            if frozen:
                updates = [
                    torch.where(_member_view(active, p) > 0, u, torch.zeros_like(u))
                    for p, u in zip(params, updates, strict=True)
                ]
            torch._foreach_sub_(params, updates)
        state.epoch += 1
        return EpochResult(loss_sum / len(x), first_grad_norm)

    def record_epoch(
        self,
        state: EnsembleState,
        seconds: float,
        before: dict | None,
        train_loss: torch.Tensor | None,
        competition: torch.Tensor | None,
    ) -> list[dict]:
        """Measure every member after an epoch, update its best weights and divergence mark,
        and append its history row; returns the epoch's rows.

        `train_loss` is the epoch's running loss; at initialisation (None) the training set
        is evaluated instead. `competition` was measured at the start of the epoch.
        """
        measured = self._measure(state, before, train_loss, competition)
        self._update_marks(state, measured["train_loss"], measured["val_loss"])
        measured["diverged"] = state.diverged_epoch >= 0
        rows = self._history_rows(state, seconds, measured)
        state.history.extend(rows)
        return rows

    def _measure(self, state, before, train_loss, competition) -> dict[str, torch.Tensor | None]:
        """The history's per-member measurements of the current weights, on the device."""
        if train_loss is None:
            train_loss, _ = self.evaluate(state, self.data.x_train, self.data.y_train)
        val_loss, val_acc = self.evaluate(state, self.data.x_val, self.data.y_val)
        return {
            "train_loss": train_loss,
            "grad_competition": competition,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "dist_from_init": _per_member_norm(state.params, state.init),
            "update_norm": _per_member_norm(state.params, before) if before is not None else None,
        }

    def _update_marks(self, state: EnsembleState, train_loss: torch.Tensor, val_loss: torch.Tensor) -> None:
        """Mark members that diverged this epoch; keep the weights of each one's best epoch."""
        # Diverged: a loss that is not finite, or 100x that of guessing uniformly (log C) --
        # such a run is blowing up even while its floats still hold numbers.
        limit = 100 * math.log(self.data.num_classes)
        finite = (
            torch.isfinite(train_loss) & torch.isfinite(val_loss) & (train_loss < limit) & (val_loss < limit)
        )
        newly_diverged = (~finite) & (state.diverged_epoch < 0)
        state.diverged_epoch[newly_diverged] = state.epoch
        improved = finite & (val_loss < state.best_val)
        state.best_val = torch.where(improved, val_loss, state.best_val)
        state.best_epoch = torch.where(improved, state.epoch, state.best_epoch)
        for name, param in state.params.items():
            state.best[name] = torch.where(_member_view(improved, param), param, state.best[name])
        for name, buffer in state.buffers.items():
            kept = state.best_buffers[name]
            state.best_buffers[name] = torch.where(_member_view(improved, buffer), buffer, kept)

    def _history_rows(self, state: EnsembleState, seconds: float, measured: dict) -> list[dict]:
        """One history row per member, with one host transfer per epoch (metrics stay on the
        device until here)."""
        steps = self.spec.steps_per_epoch(len(self.data.x_train))
        last_step = max(state.epoch * steps - 1, 0)
        fraction = warmup_fraction(last_step, self.spec.warmup_epochs * steps)
        host = {k: (v.tolist() if v is not None else [math.nan] * self.members) for k, v in measured.items()}
        rows = []
        start = self.spec.warmup_start_lr
        for m, seed in enumerate(self.spec.seeds):
            # The LR of the epoch's last step, from the Python floats (not the float32 copy).
            row = {
                "seed": seed,
                "epoch": state.epoch,
                "lr": start + (self.spec.lrs[m] - start) * fraction,
                "epoch_seconds": seconds,
            }
            row.update({k: host[k][m] for k in measured})
            rows.append(row)
        return rows

    def test_rows(self, state: EnsembleState) -> list[dict]:
        """Every member's loss and accuracy on the test split at its best-validation weights (the
        epoch early stopping on validation would keep) and at its final weights; NaN without a
        test split. Nothing during training looks at the test split."""
        if self.data.has_test_split:
            x, y = self.data.x_test, self.data.y_test
            measured = {
                which: self.evaluate(dataclasses.replace(state, params=params, buffers=buffers), x, y)
                for which, params, buffers in (
                    ("best", state.best, state.best_buffers), ("final", state.params, state.buffers)
                )
            }
            host = {which: (loss.tolist(), acc.tolist()) for which, (loss, acc) in measured.items()}
        else:
            host = {which: ([math.nan] * self.members,) * 2 for which in ("best", "final")}
        return [
            {"seed": seed, "lr": self.spec.lrs[m], "weights": which,
             "test_loss": host[which][0][m], "test_acc": host[which][1][m]}
            for m, seed in enumerate(self.spec.seeds)
            for which in ("best", "final")
        ]  # fmt: skip


def _state_to_dict(state: EnsembleState, identity: str) -> dict:
    return {"version": CHECKPOINT_VERSION, "identity": identity, **state.__dict__}


def load_checkpoint(path: Path, identity: str, device: torch.device) -> EnsembleState | None:
    """The saved state if `path` holds a checkpoint of this very run, else None."""
    if not path.exists():
        return None
    saved = load_torch(path)
    if saved.get("version") != CHECKPOINT_VERSION or saved.get("identity") != identity:
        return None
    fields = {k: v for k, v in saved.items() if k not in ("version", "identity")}

    def to_device(value):
        if isinstance(value, dict):
            return {k: to_device(v) for k, v in value.items()}
        if isinstance(value, torch.Tensor):
            return value.to(device)
        return value

    fields = {k: (to_device(v) if k != "generator_states" else v) for k, v in fields.items()}
    return EnsembleState(**fields)


def train(
    ensemble: Ensemble,
    checkpoint: Path | None = None,
    identity: str = "",
    progress: EpochProgress | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> EnsembleState:
    """Train every member for `spec.epochs`, checkpointing atomically after the first epoch
    and then whenever `checkpoint_seconds` have passed since the last checkpoint.

    A run that finds its own checkpoint continues from it and ends with the same numbers
    as one that was never interrupted. Progress goes to `progress` (default: a bar on a
    terminal, one line per epoch in a log).
    """
    with progress or EpochProgress(ensemble.spec.epochs, desc=f"B={ensemble.spec.batch_size}") as progress:
        return _train(ensemble, checkpoint, identity, progress, checkpoint_seconds)


def _train(
    ensemble: Ensemble,
    checkpoint: Path | None,
    identity: str,
    progress: EpochProgress,
    checkpoint_seconds: float,
):
    state = load_checkpoint(checkpoint, identity, ensemble.device) if checkpoint else None
    if state is None:
        state = ensemble.fresh_state()
        ensemble.record_epoch(state, math.nan, None, None, None)
    else:
        progress.note(f"resuming from {checkpoint} at epoch {state.epoch}")
        progress.epoch(state.epoch, _mean_best_val(state), f"epoch {state.epoch} (from the checkpoint)")
    last_saved = None
    while state.epoch < ensemble.spec.epochs:
        before = {k: v.clone() for k, v in state.params.items()}
        perms = ensemble.epoch_permutations(state)
        example_grad_norm = ensemble.mean_example_grad_norm(state, perms)
        synchronize(ensemble.device)
        start = time.perf_counter()
        result = ensemble.train_epoch(state, perms)
        synchronize(ensemble.device)
        seconds = time.perf_counter() - start
        competition = result.grad_competition(example_grad_norm)
        rows = ensemble.record_epoch(state, seconds, before, result.train_loss, competition)
        line = _progress_line(rows, state, ensemble.spec.epochs, seconds)
        progress.epoch(state.epoch, _mean_best_val(state), line)
        if checkpoint and (last_saved is None or time.perf_counter() - last_saved >= checkpoint_seconds):
            save_torch_atomic(checkpoint, _state_to_dict(state, identity))
            last_saved = time.perf_counter()
    return state


def _mean_best_val(state: EnsembleState) -> float:
    """The members' mean best validation loss so far (nan when every member diverged)."""
    best = state.best_val[torch.isfinite(state.best_val)]
    return best.mean().item() if len(best) else math.nan


def _progress_line(rows: list[dict], state: EnsembleState, epochs: int, seconds: float) -> str:
    finite = [r for r in rows if not r["diverged"]]
    # With every member diverged there is no mean: nan, not a reassuring 0.0000.
    mean = lambda key: sum(r[key] for r in finite) / len(finite) if finite else math.nan  # noqa: E731
    best_text = f"{_mean_best_val(state):.4f}"
    return (
        f"epoch {state.epoch:4d}/{epochs}  train {mean('train_loss'):.4f}  "
        f"val {mean('val_loss'):.4f}  acc {mean('val_acc'):.3f}  best val {best_text}  "
        f"diverged {len(rows) - len(finite)}  {seconds:6.2f}s"
    )
