"""Analysis of the tidy tables that more than one claim, figure or report section reads:
which rule is the reference, where steps to target stop scaling, the predicted critical
batch size, the parallel speed-up per timing round, and the runs cut off by the epoch budget.

Plain functions of DataFrames (as google-research batch_science's measurement_utils): the
claims, figures and report import them, never the reverse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Where the measured steps to target leave perfect scaling. In McCandlish et al.'s model the
# steps are S = S_min (1 + B_noise / B), so relative to perfect scaling from the smallest batch
# B0 they are (B + B_noise) / (B0 + B_noise) times too many: 2 at B = B_noise + 2 B0. A batch
# size whose median steps exceed twice the perfect-scaling count is therefore past the
# critical batch size, which makes the two directly comparable.
DEPARTURE_FACTOR = 2.0


def reference_rule(runs: pd.DataFrame) -> str:
    """The rule steps to target are judged under: linear when the grid has it (as the target
    itself, `aggregate.target_val_loss`), else the first rule of the table."""
    return "linear" if "linear" in set(runs["rule"]) else str(runs["rule"].iloc[0])


def has_steps_to_target(runs: pd.DataFrame) -> bool:
    """Whether the tables have steps to target at all (older tables do not)."""
    return "steps_to_target" in runs and "target_val_loss" in runs


@dataclass(frozen=True)
class CriticalBatch:
    """McCandlish et al.'s predicted critical batch size and where it was measured."""

    value: float  # median B_simple over seeds
    batch_size: int  # at the best weights of this batch size's runs...
    rule: str  # ...under this rule
    seeds: int


def critical_batch_size(noise: pd.DataFrame, rule: str = "linear") -> CriticalBatch | None:
    """The predicted critical batch size: the median B_simple at the best weights of the
    smallest-batch runs under `rule`. None when there is no such estimate."""
    if noise.empty or not {"rule", "weights", "b_simple", "batch_size"} <= set(noise.columns):
        return None
    best = noise[(noise["rule"] == rule) & (noise["weights"] == "best")].dropna(subset=["b_simple"])
    if best.empty:
        return None
    smallest = best["batch_size"].min()
    estimates = best.loc[best["batch_size"] == smallest, "b_simple"]
    return CriticalBatch(float(estimates.median()), int(smallest), rule, len(estimates))


@dataclass(frozen=True)
class Departure:
    """Where `rule`'s median steps to target leave perfect scaling (steps ∝ 1/B through the
    smallest batch size's median) by more than `factor`."""

    rule: str
    factor: float
    last_within: int  # every batch size up to this one is within the factor
    first_beyond: int | None  # the next batch size, beyond it (None: the whole grid is within)
    ratio: float  # median steps / perfect scaling at first_beyond (at last_within when None)


def scaling_departure(
    runs: pd.DataFrame, rule: str = "linear", factor: float = DEPARTURE_FACTOR
) -> Departure | None:
    """The largest batch size up to which `rule`'s median steps to target stay within `factor`
    times the perfect-scaling count, and the first beyond it. A run that never reached the
    target counts as infinitely many steps. None without two batch sizes to compare or when
    the smallest batch's median is not finite."""
    if not has_steps_to_target(runs):
        return None
    cell = runs[runs["rule"] == rule]
    steps = cell.assign(steps=cell["steps_to_target"].fillna(math.inf))
    medians = steps.groupby("batch_size")["steps"].median().sort_index()
    if len(medians) < 2 or not math.isfinite(medians.iloc[0]):
        return None
    smallest = medians.index[0]
    ratios = medians / (medians.iloc[0] * smallest / medians.index.to_series())
    beyond = ratios[ratios > factor]
    if beyond.empty:
        return Departure(rule, factor, int(ratios.index[-1]), None, float(ratios.iloc[-1]))
    first = beyond.index[0]
    last = ratios.index[ratios.index < first][-1]
    return Departure(rule, factor, int(last), int(first), float(ratios[first]))


def diverged(runs: pd.DataFrame) -> pd.Series:
    """Which rows of a runs table diverged (diverged_epoch >= 0); none when it has no such column."""
    if "diverged_epoch" not in runs:
        return pd.Series(False, index=runs.index)
    return runs["diverged_epoch"] >= 0


def cut_off(runs: pd.DataFrame) -> pd.Series:
    """Which runs had not passed their minimum by the last epoch: their epoch of the minimum is a
    lower bound. A diverged run has no minimum to pass and is never cut off."""
    passed = runs["min_passed"].astype("boolean").fillna(False).astype(bool)
    return ~passed & ~diverged(runs)


def unpassed_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Cells with runs whose validation loss had not passed its minimum by the last epoch.

    Diverged runs are left out, as in `claims` (they have no minimum to pass; diverged_note
    lists them); `runs` counts the seeds that did not diverge.
    """
    runs = runs[~diverged(runs)]
    runs = runs.assign(unpassed=cut_off(runs))
    table = runs.groupby(["rule", "batch_size"], as_index=False).agg(
        unpassed=("unpassed", "sum"), runs=("seed", "nunique"), epochs=("epochs", "max")
    )
    return table[table["unpassed"] > 0].reset_index(drop=True)


def speedup_by_repeat(timing: pd.DataFrame) -> pd.DataFrame:
    """The parallel speed-up (C11) of every timing round: seconds per epoch at 1 thread over
    seconds at the most threads timed, repeat r at 1 thread paired with repeat r at the most
    threads (rows: repeats, columns: batch sizes).

    The one definition of the speed-up: the claim's bootstrap resamples these rows, and the
    figure shows them with their median per batch size (not a ratio of median times). Only
    the repeats with a finite speed-up at every batch size are kept: the others cannot be
    paired across batch sizes (as `stats.complete_rows` leaves them out of a trend).
    """
    most = timing["threads"].max()
    times = timing.pivot_table(index=["repeat", "batch_size"], columns="threads", values="epoch_seconds")
    speedup = (times[1] / times[most]).unstack("batch_size")
    return speedup[np.isfinite(speedup.to_numpy(dtype=float)).all(axis=1)]


def warmup_ramp_epochs(runs: pd.DataFrame, history: pd.DataFrame, train: dict) -> int | None:
    """The warm-up epochs the rules figure shades: only when linear_warmup ran and its largest
    batch size ramps at all (at the base batch size its LR is the base LR: no ramp)."""
    largest = int(history["batch_size"].max())
    ramps = "linear_warmup" in set(runs["rule"]) and largest != train["base_batch_size"]
    return train["warmup_epochs"] if ramps else None


def landscape_batch_sizes(contour: pd.DataFrame, runs: pd.DataFrame) -> tuple[int, int]:
    """The two batch sizes the loss-landscape step compared: as contour.csv labels them, else the
    grid's ends under the constant-LR rule (under any rule when there is none)."""
    if "batch_size" in contour and contour["batch_size"].notna().any():
        source = contour
    else:
        source = runs[runs["rule"] == "none"]
        source = source if len(source) else runs
    return int(source["batch_size"].min()), int(source["batch_size"].max())


# A rule "closes the gap" when the remaining relative gap between the largest and the smallest
# batch is small: its CI wholly within +-SMALL_GAP, C8's bound for "small" (claim_specs.SMALL_GAP).
CLOSED_GAP = 0.10


@dataclass(frozen=True)
class RuleGap:
    """One rule's relative gap in minimum validation loss, largest / smallest batch - 1 (means
    over the seeds finite at both), with its paired bootstrap CI over seeds."""

    rule: str
    small: int
    large: int
    value: float
    ci_low: float
    ci_high: float
    seeds: int  # seeds the gap rests on: those not diverged at either batch size
    left_out: int  # seeds left out because a run of theirs diverged

    @property
    def closed(self) -> bool:
        return -CLOSED_GAP < self.ci_low and self.ci_high < CLOSED_GAP

    @property
    def outcome(self) -> str:
        """closed (CI within +-CLOSED_GAP), reversed (the largest batch better: CI below 0), remains
        (CI above 0), else undecided."""
        if self.closed:
            return "closed"
        if self.ci_high < 0:
            return "reversed"
        if self.ci_low > 0:
            return "remains"
        return "undecided"


def rule_gaps(runs: pd.DataFrame, reps: int, confidence: float, seed: int) -> list[RuleGap]:
    """Every rule's gap between the smallest and the largest batch size of the grid, in the
    order of scaling.RULES: which rule closes the small-vs-large-batch gap."""
    from batchscale import stats

    small, large = int(runs["batch_size"].min()), int(runs["batch_size"].max())
    gaps = []
    from batchscale.scaling import RULES

    present = set(runs["rule"])
    for rule in [r for r in RULES if r in present] + sorted(present - set(RULES)):
        cells = runs[(runs["rule"] == rule) & runs["batch_size"].isin([small, large])]
        table = cells.pivot(index="seed", columns="batch_size", values="min_val_loss")
        if table.shape[1] < 2:
            continue
        complete = stats.complete_rows(table)
        if len(complete) < 2:
            continue
        estimate = stats.paired_bootstrap(
            complete, lambda t: float(t[large].mean() / t[small].mean() - 1), reps, confidence, seed
        )
        gaps.append(RuleGap(rule, small, large, estimate.value, estimate.ci_low, estimate.ci_high,
                            len(complete), len(table) - len(complete)))  # fmt: skip
    return gaps
