"""The tuned-LR study's analysis: every batch size at its best learning rate, the uncertainty
that choosing it adds, how the best LR scales with batch size, and the critical batch size
measured from steps to target.

Plain functions of tidy tables like runs.csv (one row per batch size, LR and seed, with columns
such as `lr`, `min_val_loss`, `steps_to_target`, `test_loss`), as in `analysis`: the claims,
figures and report import them, never the reverse.

The LR is chosen on a validation statistic and judged on others (a test split, steps to target).
A bootstrap that keeps the LR chosen once on all seeds treats that choice as known, and its
interval is too narrow; `selection_aware_bootstrap` chooses again in every resample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from batchscale import stats
from batchscale.stats import Estimate

# Zhang et al. (2024): the critical batch size is where the steps to target exceed perfect
# scaling from the smallest batch size by more than this fraction.
CRITICAL_EXCESS = 0.2

BY_BATCH = ("batch_size",)


def choose_lr(
    runs: pd.DataFrame,
    metric: str = "min_val_loss",
    by: Sequence[str] = BY_BATCH,
    carry: Sequence[str] = (),
) -> pd.DataFrame:
    """Per group of `by` (a batch size): the LR with the lowest median `metric` over seeds.

    One row per group: the `by` columns; `lr`; `metric`, its median at the chosen LR; each
    `carry` column's median at that LR (e.g. `test_loss`: judged at the LR chosen on
    validation); `seeds`, the seeds with a `metric` there; `lrs`, the LRs tried; and
    `at_lower_edge` / `at_upper_edge`, True when the chosen LR is the smallest / largest tried,
    so that the best LR is only bounded: at most / at least the chosen one.

    NaN seeds (a diverged run) are left out of a median; an LR whose every seed is NaN is never
    chosen but counts as tried (it brackets the optimum). A group with no finite `metric` at
    any LR has no row. Ties go to the smaller LR: the same choice every time, and the one
    further from divergence. To count a run that never reached a target as infinitely many
    steps rather than leave it out, fill its NaN with inf first.
    """
    return chosen_from_wide(seeds_by_cell(runs, [metric, *carry], by), metric, by)


def seeds_by_cell(runs: pd.DataFrame, values: Sequence[str], by: Sequence[str] = BY_BATCH) -> pd.DataFrame:
    """Seeds (rows) x cells (columns: value name, *by, lr), as `stats.paired_bootstrap`
    resamples: a drawn seed brings its runs at every LR and batch size. Only the cells that
    were run are columns (the LR grid may differ between batch sizes)."""
    keys = [*by, "lr"]
    if runs.duplicated([*keys, "seed"]).any():
        raise ValueError(f"several runs share {', '.join(keys)} and seed: put what tells them apart in `by`")
    return runs.pivot(index="seed", columns=keys, values=list(values)).astype(float)


def chosen_from_wide(wide: pd.DataFrame, metric: str, by: Sequence[str] = BY_BATCH) -> pd.DataFrame:
    """`choose_lr` on a `seeds_by_cell` table (or a resample of its rows)."""
    by = list(by)
    values = list(dict.fromkeys(wide.columns.get_level_values(0))) if len(wide.columns) else [metric]
    columns = [*by, "lr", *values, "seeds", "lrs", "at_lower_edge", "at_upper_edge"]
    if wide.empty:
        return pd.DataFrame(columns=columns)
    cells = wide.median().unstack(0)  # rows (*by, lr); pandas' median skips NaN
    cells["seeds"] = wide[metric].notna().sum()
    cells = cells.reset_index()
    tried = cells.groupby(by)["lr"]
    cells["lrs"] = tried.transform("size")
    cells["at_lower_edge"] = cells["lr"] == tried.transform("min")
    cells["at_upper_edge"] = cells["lr"] == tried.transform("max")
    # Sorted by median, then LR: the first row of a group is its lowest median, ties to the smaller LR.
    best = cells.dropna(subset=[metric]).sort_values([*by, metric, "lr"]).groupby(by).head(1)
    return best[columns].reset_index(drop=True)


def at_chosen_lr(runs: pd.DataFrame, chosen: pd.DataFrame, by: Sequence[str] = BY_BATCH) -> pd.DataFrame:
    """The runs (every seed) at each group's chosen LR, e.g. for their steps to target."""
    return runs.merge(chosen[[*by, "lr"]], on=[*by, "lr"])


def selection_aware_bootstrap(
    runs: pd.DataFrame,
    statistic: Callable[[pd.DataFrame], float],
    reps: int,
    confidence: float,
    seed: int,
    metric: str = "min_val_loss",
    by: Sequence[str] = BY_BATCH,
    carry: Sequence[str] = (),
    bootstrap: Callable[..., Estimate] = stats.paired_bootstrap,
) -> Estimate:
    """`statistic` of the chosen table (`choose_lr(runs, metric, by, carry)`), with a bootstrap
    interval over seeds that chooses the LR again in every resample.

    A resample draws seeds with replacement and takes each drawn seed's runs at every LR and
    batch size (paired); the LRs are chosen on it as on all seeds. The interval so includes the
    chance that another LR wins, which an interval at the LR chosen once leaves out. Judge on a
    `carry` column (a test loss), not on `metric` itself: the lowest of several medians is
    biased low and a resample's lowest is lower still, so that interval lies too low (six LRs
    of equal true loss, 8 seeds: it held the truth in 5 of 60 simulated studies). `n` counts the
    seeds with a finite `metric`. `bootstrap` resamples the seeds x cells table:
    `grid_valued_bootstrap` for a statistic that is a batch size.
    """
    wide = seeds_by_cell(runs, [metric, *carry], by)
    if not wide.empty:
        wide = wide[wide[metric].notna().any(axis=1)]  # a seed that is NaN everywhere changes nothing
    if wide.empty:
        return Estimate(math.nan, math.nan, math.nan, 0)
    return bootstrap(wide, lambda t: statistic(chosen_from_wide(t, metric, by)), reps, confidence, seed)


def grid_valued_bootstrap(
    table: pd.DataFrame, statistic: Callable[[pd.DataFrame], float], reps: int, confidence: float, seed: int
) -> Estimate:
    """`stats.paired_bootstrap` for a statistic whose values are points of the grid or inf (a
    batch size; inf: beyond the grid): the interval's ends are drawn values, never a batch size
    interpolated between two, and inf draws count (only NaN, undefined, are dropped)."""
    n = len(table)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(table.take(rng.integers(0, n, size=n))) for _ in range(reps)], dtype=float)
    draws = draws[~np.isnan(draws)]
    value = float(statistic(table))
    if len(draws) < reps / 2:  # mostly undefined, as in stats.paired_bootstrap
        return Estimate(value, math.nan, math.nan, n)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha], method="inverted_cdf")
    return Estimate(value, float(low), float(high), n)


def gap_at_best_lr(chosen: pd.DataFrame, column: str) -> float:
    """`column` at the largest batch size minus at the smallest, each at its own chosen LR: the
    gap that remains when every batch size gets its best LR. NaN with fewer than 2 batch sizes."""
    by_size = chosen.set_index("batch_size").sort_index()[column]
    return float(by_size.iloc[-1] - by_size.iloc[0]) if len(by_size) >= 2 else math.nan


@dataclass(frozen=True)
class LRScaling:
    """How the best LR grows with batch size: best LR ∝ B^slope."""

    slope: float  # fitted over the interior optima; NaN with fewer than 2 of them
    interior: tuple[int, ...]  # the batch sizes fitted
    # Per batch size: best_lr, interior, and the lines fitted, linear (slope 1) and square_root
    # (slope 1/2), the two rules' predictions through the base batch size's LR.
    lines: pd.DataFrame


def lr_scaling_slope(chosen: pd.DataFrame, base_batch_size: int) -> LRScaling:
    """The slope of log(best LR) against log(batch size), fitted by least squares over the
    batch sizes whose chosen LR is interior: an optimum on an edge of the LR grid is only a
    bound, not a point to fit. The rules' lines go through the chosen LR at `base_batch_size`
    (the fitted line's value there when the table lacks it)."""
    table = chosen.set_index("batch_size").sort_index()
    if table.index.duplicated().any():
        raise ValueError("one chosen LR per batch size expected: choose_lr(..., by=('batch_size',))")
    interior = ~(table["at_lower_edge"].astype(bool) | table["at_upper_edge"].astype(bool))
    sizes, lrs = table.index.to_numpy(dtype=float), table["lr"].to_numpy(dtype=float)
    slope, intercept = math.nan, math.nan
    if interior.sum() >= 2:
        slope, intercept = np.polyfit(np.log(sizes[interior]), np.log(lrs[interior]), 1)
    base_lr = table["lr"].get(base_batch_size, math.exp(intercept) * base_batch_size**slope)
    ratio = sizes / base_batch_size
    lines = pd.DataFrame(
        {
            "best_lr": lrs,
            "interior": interior.to_numpy(),
            "fitted": np.exp(intercept) * sizes**slope,
            "linear": base_lr * ratio,
            "square_root": base_lr * np.sqrt(ratio),
        },
        index=table.index,
    )
    return LRScaling(float(slope), tuple(int(b) for b in table.index[interior]), lines)


def critical_batch_from_steps(steps: pd.Series, threshold: float = CRITICAL_EXCESS) -> float:
    """The measured critical batch size (Zhang et al. 2024): the smallest batch size whose
    steps to target (`steps`: medians indexed by batch size) exceed perfect scaling from the
    smallest batch size, its steps x B0 / B, by more than `threshold`. NaN or inf steps (never
    reached) exceed it.

    inf when no batch size does: the critical batch size is beyond the grid (report it so). NaN
    when it is undefined: no batch sizes, or the smallest never reached the target. A number
    rather than None, so that a bootstrap can order it: beyond the grid is above every batch.
    """
    steps = steps.astype(float).fillna(math.inf).sort_index()
    if steps.empty or not math.isfinite(steps.iloc[0]):
        return math.nan
    sizes = steps.index.to_numpy(dtype=float)
    perfect = steps.iloc[0] * sizes[0] / sizes
    beyond = sizes[steps.to_numpy() > (1 + threshold) * perfect]
    return float(beyond[0]) if len(beyond) else math.inf


def critical_batch_bootstrap(
    steps_by_seed: pd.DataFrame, reps: int, confidence: float, seed: int, threshold: float = CRITICAL_EXCESS
) -> Estimate:
    """`critical_batch_from_steps` of the median steps over seeds, with its bootstrap interval
    over seeds (`steps_by_seed`: seeds x batch sizes, paired). A run that never reached the
    target (NaN) counts as infinitely many steps, not as a missing seed. An end of the interval
    at inf reads "beyond the grid"."""
    table = steps_by_seed.astype(float).fillna(math.inf)
    return grid_valued_bootstrap(
        table, lambda t: critical_batch_from_steps(t.median(), threshold), reps, confidence, seed
    )


@dataclass(frozen=True)
class NoiseScaleFit:
    """McCandlish et al.'s S(B) = S_min (1 + B_noise / B) fitted to steps to target."""

    s_min: float  # the fewest steps, approached at large batch
    b_noise: float  # the predicted critical batch size; inf when the steps scale perfectly throughout
    points: int  # batch sizes fitted


def fit_noise_scale_model(steps: pd.Series) -> NoiseScaleFit | None:
    """S_min and B_noise fitted to steps to target (`steps`: medians indexed by batch size).

    The model is linear in 1/B, S = S_min + S_min B_noise / B, so it is fitted by least squares
    on (1/B, S): closed form, no starting guess, nothing to converge, exact on exact data. The
    residuals are relative (weights 1/S): the steps fall several-fold across the grid and are
    known to one epoch's steps, most coarsely where they are most, so absolute residuals would
    let the smallest batch sizes decide the fit alone. Never-reached points (NaN, inf) are left
    out; None with fewer than 2 points. A fitted S_min <= 0 means the steps fall as 1/B or
    faster over the whole grid: B_noise is beyond it (inf).
    """
    points = steps.astype(float)
    points = points[np.isfinite(points.to_numpy())]
    if len(points) < 2:
        return None
    values = points.to_numpy()
    slope, s_min = np.polyfit(1 / points.index.to_numpy(dtype=float), values, 1, w=1 / values)
    b_noise = slope / s_min if s_min > 0 else math.inf
    return NoiseScaleFit(float(s_min), float(b_noise), len(points))
