"""The tuned-LR study from its sweep (tuning.csv): the LR chosen per batch size with its
interval, the test loss there beside the fixed rules', how the best LR scales with batch size,
the gap that remains at the tuned LRs, and the critical batch size measured from steps to
target beside the two predictions of it. `analyse` computes it all once; `tuned_lr_table` and
`critical_batch_table` are the two tables `batchscale claims` writes, and `tuned_claims` decides
C7-tuned and C8-tuned from the same object.

The LR is chosen on the validation split (median minimum validation loss over seeds,
`tuning.choose_lr`); everything judged at it is read from other columns (the test split, steps
to target), and every interval re-chooses the LR in each resample of seeds (`tuned_resample`).
An optimum on an edge of the LR grid is a bound, flagged in `bound` and left out of the slope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from batchscale import analysis, tuning
from batchscale.io import read_table, write_csv_atomic
from batchscale.stats import Estimate
from batchscale.tuned_resample import (
    METRIC,
    Choice,
    SeedCube,
    all_seeds,
    choose,
    interval,
    nanmedian,
    per_seed,
    seed_cube,
    seed_draws,
)

CARRIED = ("test_loss", "test_acc", "steps_to_target")
FIXED_RULES = ("none", "linear")
# What an edge optimum says about the best LR: the grid's largest LR won, so the best is at
# least that; its smallest won, so at most that.
AT_LEAST, AT_MOST = "at least", "at most"
ONE_LR = "one LR tried"  # both edges at once: the sweep says nothing about where the best lies

# tuned_lr.csv: one row per batch size. The slope of log(best LR) on log(B) over the interior
# optima, its interval and the number of optima fitted are the same in every row (a property of
# the sweep, repeated so that one table holds the figure's every number).
TUNED_LR_COLUMNS = [
    "batch_size", "lr", "lr_ci_low", "lr_ci_high", "factor", "lrs", "at_lower_edge", "at_upper_edge",
    "bound", "seeds", "min_val_loss", "test_loss", "test_loss_ci_low", "test_loss_ci_high", "test_acc",
    "steps_to_target", "none_test_loss", "linear_test_loss", "linear_fraction", "linear_fraction_ci_low",
    "linear_fraction_ci_high", "fitted_lr", "slope", "slope_ci_low", "slope_ci_high", "slope_points",
]  # fmt: skip
# critical_batch.csv: one row (none without a sweep). The measured critical batch size (inf:
# beyond the grid) with its interval; the batch sizes between which the measured crossing lies,
# [range_low, range_high); McCandlish et al.'s S(B) fitted to the same median steps; the noise
# scale's B_simple; and for each prediction of B_noise the batch size where its model crosses
# the same 20% line (`crossing`), and whether that lies in the measured range (`agrees`).
CRITICAL_COLUMNS = [
    "critical_batch", "ci_low", "ci_high", "seeds", "threshold", "smallest_batch", "largest_batch",
    "range_low", "range_high", "s_min", "b_noise", "fit_points", "b_noise_crossing", "b_noise_agrees",
    "b_simple", "b_simple_rule", "b_simple_batch_size", "b_simple_seeds", "b_simple_crossing",
    "b_simple_agrees",
]  # fmt: skip


@dataclass(frozen=True)
class TunedAnalysis:
    per_batch: pd.DataFrame  # tuned_lr.csv
    critical: pd.DataFrame  # critical_batch.csv
    gap: Estimate  # test loss at the largest batch / at the smallest - 1, each at its tuned LR
    seeds: int  # the seeds resampled: those with a finite validation loss somewhere
    confidence: float


def linear_fraction(none: np.ndarray, linear: np.ndarray, tuned: np.ndarray, sizes: np.ndarray,
                    base_batch_size: int) -> np.ndarray:  # fmt: skip
    """(L_none - L_linear) / (L_none - L_tuned): how much of what tuning gains over the constant
    LR the linear rule gains. NaN at the base batch size (both rules run the base LR there:
    nothing was scaled) and where tuning does not improve on the constant LR (nothing to gain)."""
    gain = none - tuned
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = (none - linear) / gain
    return np.where((gain > 0) & (sizes != base_batch_size), fraction, np.nan)


def relative_gap(test_loss: np.ndarray) -> np.ndarray:
    """Per resample: the largest batch's test loss over the smallest's, minus 1 (NaN when
    either end has no choice)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return test_loss[:, -1] / test_loss[:, 0] - 1


def interior_slope(sizes: np.ndarray, choice: Choice) -> np.ndarray:
    """Per resample: the least-squares slope of log(LR) on log(B) over its interior optima, as
    `tuning.lr_scaling_slope` fits it (NaN with fewer than 2)."""
    weight = choice.interior.astype(float)
    count = weight.sum(axis=1)
    x = np.log(sizes.astype(float))[None, :]
    y = np.log(np.where(choice.interior, choice.lr, 1.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        x_mean = (weight * x).sum(axis=1, keepdims=True) / count[:, None]
        y_mean = (weight * y).sum(axis=1, keepdims=True) / count[:, None]
        sxx = (weight * (x - x_mean) ** 2).sum(axis=1)
        slope = (weight * (x - x_mean) * (y - y_mean)).sum(axis=1) / sxx
    return np.where((count >= 2) & (sxx > 0), slope, np.nan)


def critical_batches(steps: np.ndarray, sizes: np.ndarray, threshold: float) -> np.ndarray:
    """`tuning.critical_batch_from_steps` of each resample's median steps (R x B; NaN: no
    choice there, counted as never reaching the target)."""
    steps = np.where(np.isnan(steps), np.inf, steps)
    sizes = sizes.astype(float)
    perfect = steps[:, :1] * sizes[0] / sizes[None, :]
    with np.errstate(invalid="ignore"):
        beyond = steps > (1 + threshold) * perfect
    first = np.where(beyond.any(axis=1), sizes[beyond.argmax(axis=1)], np.inf)
    return np.where(np.isfinite(steps[:, 0]), first, np.nan)


@dataclass(frozen=True)
class Sample:
    """R resamples of seeds (or the observed seeds, R = 1): each one's choice of LR per batch
    size, and the fixed rules' median test loss per batch size over the same seeds."""

    choice: Choice
    fixed: dict[str, np.ndarray]  # rule -> (R, B)

    @property
    def test_loss(self) -> np.ndarray:
        return self.choice.medians["test_loss"]


def _sample(cube: SeedCube, fixed: dict[str, np.ndarray], rows: np.ndarray) -> Sample:
    medians = {rule: nanmedian(values[rows], axis=1) for rule, values in fixed.items()}
    return Sample(choose(cube, rows), medians)


def _bound(lower: bool, upper: bool) -> str:
    if lower and upper:
        return ONE_LR
    return AT_LEAST if upper else AT_MOST if lower else ""


def _by_batch(name: str, seen: np.ndarray, boot: np.ndarray, confidence: float, n: int,
              grid_valued: bool = False) -> dict[str, list[float]]:  # fmt: skip
    """A per-batch statistic's value (`seen`: 1 x B) and interval (`boot`: R x B) as three columns."""
    est = [interval(seen[0, b], boot[:, b], confidence, n, grid_valued) for b in range(seen.shape[1])]
    return {name: [e.value for e in est], f"{name}_ci_low": [e.ci_low for e in est],
            f"{name}_ci_high": [e.ci_high for e in est]}  # fmt: skip


def _fractions(sample: Sample, sizes: np.ndarray, base_batch_size: int) -> np.ndarray:
    fixed = sample.fixed
    return linear_fraction(fixed["none"], fixed["linear"], sample.test_loss, sizes, base_batch_size)


def _per_batch(cube: SeedCube, seen: Sample, boot: Sample, confidence: float, base: int) -> pd.DataFrame:
    """tuned_lr.csv: the observed choice per batch size with its resampled intervals."""
    n, sizes, chosen = len(cube.seeds), cube.sizes, seen.choice
    edges = zip(chosen.at_lower_edge[0], chosen.at_upper_edge[0], strict=True)
    fractions = _fractions(seen, sizes, base), _fractions(boot, sizes, base)
    table = pd.DataFrame({
        "batch_size": sizes.astype(int),
        **_by_batch("lr", chosen.lr, boot.choice.lr, confidence, n, grid_valued=True),
        "factor": chosen.factor[0], "lrs": cube.tried,
        "at_lower_edge": chosen.at_lower_edge[0], "at_upper_edge": chosen.at_upper_edge[0],
        "bound": [_bound(lower, upper) for lower, upper in edges],
        "seeds": chosen.seeds[0], "min_val_loss": chosen.medians[METRIC][0],
        **_by_batch("test_loss", seen.test_loss, boot.test_loss, confidence, n),
        "test_acc": chosen.medians["test_acc"][0], "steps_to_target": chosen.medians["steps_to_target"][0],
        "none_test_loss": seen.fixed["none"][0], "linear_test_loss": seen.fixed["linear"][0],
        **_by_batch("linear_fraction", *fractions, confidence, n),
    })  # fmt: skip
    table = table[chosen.chosen[0]].reset_index(drop=True)  # as choose_lr: no choice, no row
    slope = interval(interior_slope(sizes, chosen)[0], interior_slope(sizes, boot.choice), confidence, n)
    fit = tuning.lr_scaling_slope(table, base)
    table["fitted_lr"] = fit.lines["fitted"].to_numpy()
    table["slope"], table["slope_ci_low"], table["slope_ci_high"] = slope.value, slope.ci_low, slope.ci_high
    table["slope_points"] = len(fit.interior)
    return table[TUNED_LR_COLUMNS]


def predicted_crossing(b_noise: float, smallest: float, threshold: float = tuning.CRITICAL_EXCESS) -> float:
    """Where McCandlish et al.'s S = S_min (1 + B_noise / B) exceeds perfect scaling from the
    smallest batch B0 by `threshold`: its steps are (B + B_noise) / (B0 + B_noise) times perfect
    scaling, more than 1 + t from B = (1 + t) B0 + t B_noise on. B_noise itself is where the
    steps are twice S_min, a different line: compared as it is, a B_noise of 500 with B0 = 10
    would 'disagree' with the 112 its own model gives on the 20% line."""
    return (1 + threshold) * smallest + threshold * b_noise


def measured_range(est: Estimate, sizes: np.ndarray) -> tuple[float, float]:
    """The batch sizes between which the measured crossing of the 20% line lies, [low, high).
    A measured critical batch b says the median steps were within the line at the grid point
    below b and beyond it at b; over the interval [lo, hi] the crossing lies from the grid point
    below lo up to hi (inf: beyond the grid). NaN without an interval."""
    if math.isnan(est.ci_low) or math.isnan(est.ci_high):
        return math.nan, math.nan
    below = sizes[sizes < est.ci_low]
    return (float(below[-1]) if len(below) else 0.0), float(est.ci_high)


def agrees(crossing: float, low: float, high: float) -> object:
    """Whether a predicted crossing lies in the measured range [low, high) (beyond the grid
    agrees with beyond the grid); NA when either is unknown."""
    if any(math.isnan(v) for v in (crossing, low, high)):
        return pd.NA
    return bool(low <= crossing < high or (math.isinf(crossing) and math.isinf(high)))


def noise_rule(noise: pd.DataFrame, runs: pd.DataFrame) -> str:
    """The rule whose probed runs give B_simple: the tuned runs' when they were probed (the runs
    the measurement rests on), else the fixed rule the steps to target are judged under
    (`analysis.reference_rule`: linear), whose smallest-batch run the tuned LR often is."""
    if "rule" in noise and "tuned" in set(noise["rule"]):
        return "tuned"
    return analysis.reference_rule(runs) if "rule" in runs and len(runs) else "linear"


def _critical(cube: SeedCube, seen: Sample, boot: Sample, noise: pd.DataFrame, runs: pd.DataFrame,
              confidence: float) -> pd.DataFrame:  # fmt: skip
    """critical_batch.csv's row."""
    threshold, sizes = tuning.CRITICAL_EXCESS, cube.sizes
    steps = seen.choice.medians["steps_to_target"]
    measured = critical_batches(boot.choice.medians["steps_to_target"], sizes, threshold)
    est = interval(critical_batches(steps, sizes, threshold)[0], measured, confidence, len(cube.seeds), True)
    chosen = seen.choice.chosen[0]
    fit = tuning.fit_noise_scale_model(pd.Series(steps[0][chosen], index=sizes[chosen]))
    b_noise = fit.b_noise if fit else math.nan
    low, high = measured_range(est, sizes)
    rule = noise_rule(noise, runs)
    simple = analysis.critical_batch_size(noise, rule)
    b_simple = simple.value if simple else math.nan
    crossings = {name: predicted_crossing(value, float(sizes[0]), threshold) for name, value in
                 (("b_noise", b_noise), ("b_simple", b_simple))}  # fmt: skip
    row = {
        "critical_batch": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high, "seeds": est.n,
        "threshold": threshold, "smallest_batch": int(sizes[0]), "largest_batch": int(sizes[-1]),
        "range_low": low, "range_high": high,
        "s_min": fit.s_min if fit else math.nan, "b_noise": b_noise, "fit_points": fit.points if fit else 0,
        "b_noise_crossing": crossings["b_noise"], "b_noise_agrees": agrees(crossings["b_noise"], low, high),
        "b_simple": b_simple, "b_simple_rule": rule if simple else "",
        "b_simple_batch_size": simple.batch_size if simple else pd.NA,
        "b_simple_seeds": simple.seeds if simple else 0, "b_simple_crossing": crossings["b_simple"],
        "b_simple_agrees": agrees(crossings["b_simple"], low, high),
    }  # fmt: skip
    return pd.DataFrame([row], columns=CRITICAL_COLUMNS)


def analyse(
    tuning_runs: pd.DataFrame, runs: pd.DataFrame, noise: pd.DataFrame, params: dict
) -> TunedAnalysis | None:
    """The tuned study of a sweep (tuning.csv), paired by seed with the fixed rules' runs
    (runs.csv: their test loss) and the noise probe (noise.csv: B_simple); None without a sweep."""
    if tuning_runs.empty:
        return None
    settings = params["stats"]
    reps, confidence, seed = settings["bootstrap"], settings["confidence"], settings["seed"]
    cube = seed_cube(tuning_runs, CARRIED)
    n = len(cube.seeds)
    if n == 0:  # every run diverged: nothing to choose from
        nothing = Estimate(math.nan, math.nan, math.nan, 0)
        return TunedAnalysis(empty_tuned_lr(), empty_critical(), nothing, 0, confidence)
    fixed = {rule: per_seed(runs, rule, "test_loss", cube) for rule in FIXED_RULES}
    seen, boot = _sample(cube, fixed, all_seeds(n)), _sample(cube, fixed, seed_draws(n, reps, seed))
    base = params["train"]["base_batch_size"]
    per_batch = _per_batch(cube, seen, boot, confidence, base)
    gap = interval(relative_gap(seen.test_loss)[0], relative_gap(boot.test_loss), confidence, n)
    critical = _critical(cube, seen, boot, noise, runs, confidence)
    return TunedAnalysis(per_batch, critical, gap, n, confidence)


def empty_tuned_lr() -> pd.DataFrame:
    return pd.DataFrame(columns=TUNED_LR_COLUMNS)


def empty_critical() -> pd.DataFrame:
    return pd.DataFrame(columns=CRITICAL_COLUMNS)


def tuned_lr_table(study: TunedAnalysis | None) -> pd.DataFrame:
    """tuned_lr.csv: header only without a sweep, so that the workflow can always declare it."""
    return study.per_batch if study is not None else empty_tuned_lr()


def critical_batch_table(study: TunedAnalysis | None) -> pd.DataFrame:
    """critical_batch.csv: header only without a sweep."""
    return study.critical if study is not None else empty_critical()


TUNED_LR_CSV, CRITICAL_BATCH_CSV = "tuned_lr.csv", "critical_batch.csv"


def from_tables(tables: Path, runs: pd.DataFrame, params: dict) -> TunedAnalysis | None:
    """`analyse` on a tables folder: its tuning.csv (absent or without rows: no sweep, None) and
    noise.csv (absent or empty: no B_simple)."""
    sweep = read_table(Path(tables) / "tuning.csv")
    return analyse(sweep, runs, read_table(Path(tables) / "noise.csv"), params) if len(sweep) else None


def write_tables(study: TunedAnalysis | None, tables: Path) -> None:
    """tuned_lr.csv and critical_batch.csv, always (header only without a sweep), so that the
    workflow can declare them as outputs whatever the grid."""
    write_csv_atomic(Path(tables) / TUNED_LR_CSV, tuned_lr_table(study))
    write_csv_atomic(Path(tables) / CRITICAL_BATCH_CSV, critical_batch_table(study))
