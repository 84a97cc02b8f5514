"""A small synthetic study, as the package's own aggregate and claims turn it into tables: run
folders with plausible histories, probes and timings whose direction is known. The report and
figure tests render and draw from it without training anything."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from batchscale import aggregate, claims, tuned_analysis
from batchscale.config import cells, validate
from batchscale.io import write_csv_atomic
from batchscale.scaling import scaled_lr

SIZES = (32, 128)
SEEDS = (0, 1, 2)
EPOCHS = 8
WARMUP_EPOCHS = 3
NUM_TRAIN = 480  # as data.json says: steps per epoch for steps to target


def small_params() -> dict:
    return validate(
        {
            "data": {"num_samples": 600},
            "model": {"hidden": [16]},
            "train": {"epochs": EPOCHS, "seeds": list(SEEDS), "warmup_epochs": WARMUP_EPOCHS},
            "grid": {"batch_sizes": list(SIZES), "lr_rules": ["none", "linear", "linear_warmup"]},
            "timing": {"warmup_epochs": 0, "repeats": 3},
            "stats": {"bootstrap": 100},
        }
    )


def fake_history(rule: str, batch_size: int, params: dict, warmup_epochs: int = 0) -> pd.DataFrame:
    """Plausible curves: loss falls faster with a larger LR per example; B=32 overfits late.

    With `warmup_epochs` the LR ramps from the base LR to the rule's over those epochs, and the
    loss falls more slowly meanwhile; B=128 at the constant LR never reaches the target."""
    train = params["train"]
    base = train["base_lr"]
    peak = scaled_lr(rule, base, train["base_batch_size"], batch_size)
    lrs = [
        base + (peak - base) * min(1.0, e / warmup_epochs) if warmup_epochs else peak
        for e in range(EPOCHS + 1)
    ]
    rates = [0.35 * (lr / base) * (train["base_batch_size"] / batch_size) ** 0.5 for lr in lrs]
    progress = np.concatenate([[0.0], np.cumsum(rates[1:])])  # epoch 0: the initial weights
    rows = []
    for seed in SEEDS:
        rng = np.random.default_rng(1000 * seed + batch_size + len(rule))
        for epoch in range(EPOCHS + 1):
            lr, rate = lrs[epoch], rates[epoch]
            train_loss = 0.3 + 2.0 * np.exp(-progress[epoch]) + 0.01 * rng.random()
            overfit = 0.01 * max(0, epoch - 4) ** 2 if batch_size == SIZES[0] else 0.0
            rows.append(
                {
                    "rule": rule, "batch_size": batch_size, "seed": seed, "epoch": epoch,
                    "epoch_seconds": np.nan if epoch == 0 else 0.01 * 32 / batch_size,
                    "train_loss": train_loss, "train_acc": 1 - train_loss / 2.5,
                    "val_loss": train_loss + 0.05 + overfit, "val_acc": 1 - train_loss / 2.4,
                    "dist_from_init": progress[epoch], "update_norm": np.nan if epoch == 0 else rate,
                    "lr": lr, "diverged": False,
                    "grad_competition": np.nan if epoch == 0 else 0.05 + 0.9 / batch_size**0.5,
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


def sharpness_of(lr: float, batch_size: int) -> float:
    """A run's fake sharpness: sharper with a larger batch at the same LR (Keskar's picture)."""
    return (batch_size / SIZES[0]) ** 0.5 * (0.01 / lr) ** 0.25


def fake_sharpness(lr: float, batch_size: int) -> pd.DataFrame:
    rows = []
    for seed in SEEDS:
        sharp = sharpness_of(lr, batch_size) * (1 + 0.1 * seed)
        for weights, factor in (("best", 1.0), ("final", 1.2)):
            rows.append(
                {
                    "seed": seed, "weights": weights, "train_loss": 0.3,
                    "top_eigenvalue": 5.0 * sharp * factor, "eig_iterations": 12,
                    "eig_converged": seed != 2, "eps_sharpness": 0.4 * sharp * factor,
                }
            )  # fmt: skip
    # A dominant negative eigenvalue (a saddle) happens on real runs: the figure must show it.
    rows[-1]["top_eigenvalue"] = -0.3
    return pd.DataFrame(rows)


def fake_slices(lr: float, batch_size: int) -> pd.DataFrame:
    alphas = np.linspace(-1, 1, 7)
    return pd.DataFrame(
        [
            {"seed": seed, "alpha": a, "train_loss": 0.3 + 0.01 * seed + sharpness_of(lr, batch_size) * a**2}
            for seed in SEEDS
            for a in alphas
        ]
    )


def fake_noise(batch_size: int) -> pd.DataFrame:
    """What the noise probe writes: B_simple about 300 at init (the same in every cell), about 100
    at the best weights of B=32, growing with the batch size; one |G|^2 estimate not positive."""
    rows = []
    for seed in SEEDS:
        for weights, b_simple in (("init", 300.0), ("best", 100.0), ("final", 120.0)):
            scale = 1 + 0.1 * seed
            if weights != "init":
                scale *= (batch_size / SIZES[0]) ** 0.5
            rows.append(
                {"seed": seed, "weights": weights, "trace_sigma": 0.01 * b_simple * scale, "grad_sq": 0.01,
                 "b_simple": b_simple * scale}
            )  # fmt: skip
    if batch_size == SIZES[-1]:
        rows[-1].update(grad_sq=-0.001, b_simple=np.nan)
    return pd.DataFrame(rows)


def write_landscape(folder: Path) -> None:
    """What `batchscale landscape` writes: the interpolation line and the two 2-D slices."""
    alphas = np.linspace(-0.5, 1.5, 9)
    interpolation = pd.DataFrame(
        [
            {"seed": seed, "alpha": a, "train_loss": 0.3 + a**2 * (1 - a) ** 2 + 0.1 * a + 0.01 * seed,
             "val_loss": 0.35 + a**2 * (1 - a) ** 2 + 0.12 * a}
            for seed in SEEDS
            for a in alphas
        ]
    )  # fmt: skip
    grid = np.linspace(-1, 1, 5)
    contour = pd.DataFrame(
        [
            {"seed": 0, "alpha": a, "beta": b, "batch_size": size,
             "train_loss": 0.3 + sharpness_of(0.01, size) * (a**2 + 0.5 * b**2)}
            for size in SIZES
            for a in grid
            for b in grid
        ]
    )  # fmt: skip
    write_csv_atomic(folder / "interpolation.csv", interpolation)
    write_csv_atomic(folder / "contour.csv", contour)


def write_tables(
    root: Path, params: dict, probes: bool = True, steps: bool = True, tuned: bool = False
) -> tuple[Path, Path]:
    """Run (and probe) folders and timings -> the package's own aggregate and claims -> tables,
    claims.csv. `probes=False`: as when the probe and landscape steps did not run; `steps=False`:
    as tables aggregated before steps to target were counted; `tuned=True`: with a tuned-LR
    sweep (tuning.csv, `synthetic_world`) and the fixed rules' test losses in runs.csv (give
    `with_tuned(params)` for the figures and report to show it)."""
    timing_files = []
    # The fake runs are the fixed rules'; a tuned sweep is written as its table below.
    rules = [rule for rule in params["grid"]["lr_rules"] if rule != "tuned"]
    fixed = {**params, "grid": {**params["grid"], "lr_rules": rules}}
    grid = cells(fixed)
    for cell in grid:  # rules that share a run (same LR at a batch size) write the same file
        history = fake_history(cell.rule, cell.batch_size, params, cell.warmup_epochs)
        write_csv_atomic(root / cell.run_dir / "history.csv", history)
        if probes:
            probe_dir = root / cell.probe_dir
            write_csv_atomic(probe_dir / "sharpness.csv", fake_sharpness(cell.lr, cell.batch_size))
            write_csv_atomic(probe_dir / "slices.csv", fake_slices(cell.lr, cell.batch_size))
            write_csv_atomic(probe_dir / "noise.csv", fake_noise(cell.batch_size))
    landscape = root / "results" / "landscape" if probes else None
    if landscape:
        write_landscape(landscape)
    for b in SIZES:
        # All threads help more at the larger batch (C11's picture).
        rows = [
            {
                "batch_size": b,
                "threads": t,
                "device": "cpu",
                "repeat": r,
                "epoch_seconds": 0.3 / b / t ** (b / 256) + 1e-4 * r,
            }
            for t in (1, 4)
            for r in range(3)
        ]
        timing_files.append(root / "timing" / f"bs{b}.csv")
        write_csv_atomic(timing_files[-1], pd.DataFrame(rows))
    tables = root / "reports" / "tables"
    aggregate.aggregate(
        grid, timing_files, tables, root=root, landscape_dir=landscape, num_train=NUM_TRAIN if steps else None
    )
    runs, timing = pd.read_csv(tables / "runs.csv"), pd.read_csv(tables / "timing.csv")
    if tuned:
        runs = write_sweep(tables, runs, params)
    study = tuned_analysis.from_tables(tables, runs, params)
    tuned_analysis.write_tables(study, tables)  # as `batchscale claims`: header only without a sweep
    settings = claims.Settings.from_params(params)
    write_csv_atomic(tables / "article_comparison.csv", claims.article_comparison(runs, settings))
    claims_csv = root / "reports" / "claims.csv"
    write_csv_atomic(claims_csv, claims.decide_all(runs, timing, params, study))
    return tables, claims_csv


def synthetic_world(params: dict) -> TunedWorld:
    """The small study's tuned world: its batch sizes and seeds, the best LR growing as sqrt(B)
    from the base LR (interior at both batch sizes), a slightly higher loss at the larger batch."""
    train = params["train"]
    return TunedWorld(
        sizes=SIZES, seeds=SEEDS, base_lr=train["base_lr"], base_batch_size=train["base_batch_size"],
        best_lr=lambda b: train["base_lr"] * (b / train["base_batch_size"]) ** 0.5,
        floor=lambda b: 0.5 + 0.01 * np.log2(b / SIZES[0]), epochs=EPOCHS,
    )  # fmt: skip


def write_sweep(tables: Path, runs: pd.DataFrame, params: dict) -> pd.DataFrame:
    """tuning.csv from `synthetic_world`, and its test losses into runs.csv for the fixed rules
    when aggregate has none (the fake histories have no test split: the same world at each
    run's LR instead); returns runs.csv."""
    world = synthetic_world(params)
    if "test_loss" not in runs or runs["test_loss"].isna().all():
        measured = [world.run(r.batch_size, r.lr, r.seed) for r in runs.itertuples()]
        for column in ("test_loss", "test_acc", "final_test_loss"):
            runs[column] = [row[column] for row in measured]
        write_csv_atomic(tables / "runs.csv", runs)
    write_csv_atomic(tables / "tuning.csv", world.sweep())
    return runs


# --- a tuned-LR sweep whose answers are known --------------------------------------------------

TUNING_FACTORS = (0.125, 0.25, 0.5, 1.0, 2.0)  # the default grid.tuning_factors


@dataclass(frozen=True)
class TunedWorld:
    """A study whose every run's losses and steps follow known functions: at batch size B the
    true loss is `floor(B)` at the best LR `best_lr(B)` and rises by `curvature` per squared
    octave away from it, plus a seed's own offset (the same in every cell: its initial weights)
    and an independent draw per run and split; the steps to target at the best LR are McCandlish
    et al.'s S_min (1 + B_noise / B), more elsewhere. The fixed rules' runs are the same function at
    their LRs, so a sweep and runs.csv agree where they share a run."""

    sizes: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
    seeds: tuple[int, ...] = tuple(range(8))
    best_lr: Callable[[int], float] = lambda b: 0.01 * (b / 32) ** 0.5
    floor: Callable[[int], float] = lambda b: 0.5
    curvature: float = 0.02
    seed_sd: float = 0.01
    run_sd: float = 0.002
    s_min: float = 1000.0
    b_noise: float = 200.0
    base_lr: float = 0.01
    base_batch_size: int = 32
    lrs: Callable[[int], Sequence[float]] | None = None  # default: the linear LR x TUNING_FACTORS
    diverge_above: float = math.inf  # an LR at least this large diverges in every seed
    epochs: int = 20

    def linear_lr(self, b: int) -> float:
        return self.base_lr * b / self.base_batch_size

    def grid(self, b: int) -> list[float]:
        return list(self.lrs(b)) if self.lrs else [self.linear_lr(b) * f for f in TUNING_FACTORS]

    def true_loss(self, b: int, lr: float) -> float:
        return self.floor(b) + self.curvature * math.log2(lr / self.best_lr(b)) ** 2

    def noise(self, b: int, lr: float, seed: int) -> np.ndarray:
        """The seed's offset plus two independent draws (validation, test) for this run, the same
        whichever table asks (keyed by the run)."""
        offset = np.random.default_rng([7, seed]).normal(0, self.seed_sd)
        own = np.random.default_rng([11, b, round(lr * 1e9), seed]).normal(0, self.run_sd, size=3)
        return offset + own

    def run(self, b: int, lr: float, seed: int) -> dict:
        """One row of tuning.csv (or the measured columns of runs.csv)."""
        loss = self.true_loss(b, lr)
        val, test, final = loss + self.noise(b, lr, seed)
        steps = self.s_min * (1 + self.b_noise / b) * (1 + math.log2(lr / self.best_lr(b)) ** 2)
        steps_per_epoch = math.ceil(NUM_TRAIN / b)
        row = {
            "batch_size": b, "lr": lr, "factor": lr / self.linear_lr(b), "seed": seed, "epochs": self.epochs,
            "diverged_epoch": -1, "min_val_loss": val, "best_epoch": self.epochs // 2, "min_passed": True,
            "test_loss": test, "test_acc": 1 - test / 2, "final_test_loss": final + 0.01,
            "target_val_loss": 0.6, "epochs_to_target": steps / steps_per_epoch, "steps_to_target": steps,
        }  # fmt: skip
        if lr >= self.diverge_above:
            kept = ("batch_size", "lr", "factor", "seed", "epochs", "target_val_loss")
            row = {k: (v if k in kept else math.nan) for k, v in row.items()} | {"diverged_epoch": 2}
        return row

    def sweep(self) -> pd.DataFrame:
        """tuning.csv: every seed at every LR of every batch size's grid."""
        rows = [self.run(b, lr, s) for b in self.sizes for lr in self.grid(b) for s in self.seeds]
        return pd.DataFrame(rows, columns=TUNING_COLUMNS)

    def fixed_runs(self, rules: Sequence[str] = ("none", "linear")) -> pd.DataFrame:
        """runs.csv's rows for the fixed rules, with their test losses."""
        lr_of = {"none": lambda b: self.base_lr, "linear": self.linear_lr}
        rows = [{"rule": rule, **self.run(b, lr_of[rule](b), s)} for rule in rules for b in self.sizes
                for s in self.seeds]  # fmt: skip
        return pd.DataFrame(rows).drop(columns=["factor"])


TUNING_COLUMNS = [
    "batch_size", "lr", "factor", "seed", "epochs", "diverged_epoch", "min_val_loss", "best_epoch",
    "min_passed", "test_loss", "test_acc", "final_test_loss", "target_val_loss", "epochs_to_target",
    "steps_to_target",
]  # fmt: skip


def with_tuned(params: dict) -> dict:
    """`params` with the tuned rule in the grid (added after validation, so that the fake study
    does not depend on the training side knowing the rule)."""
    return {**params, "grid": {**params["grid"], "lr_rules": [*params["grid"]["lr_rules"], "tuned"]}}
