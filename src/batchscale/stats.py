"""Uncertainty over seeds: paired bootstrap confidence intervals and the verdict rules.

Seed k starts every cell from the same initial weights and the same shuffling stream, so
cells are paired by seed: a bootstrap resample draws seeds (rows) once and applies the
draw to every cell (column). scipy.stats.bootstrap resamples each sample on its own and
cannot express that pairing across a whole table, hence this small loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
NOT_TESTED = "not tested"
# An equivalence answer (C8-tuned): the interval holds 0 and its upper end lies below the claim's
# bound for "small", so whatever gap there is, is at most that end. A failure to detect a gap
# with a tight interval says how small it is; `inconclusive` would throw that answer away.
NO_GAP = "no gap detectable"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTED, NO_GAP)


@dataclass(frozen=True)
class Estimate:
    """A statistic on the observed seeds with its bootstrap percentile interval."""

    value: float
    ci_low: float
    ci_high: float
    # How many units (rows: seeds, or timing repeats) the statistic was computed on and the
    # bootstrap resampled -- those left after dropping rows the statistic cannot use.
    n: int = 0


def paired_bootstrap(
    table: pd.DataFrame,
    statistic: Callable[[pd.DataFrame], float],
    reps: int,
    confidence: float,
    seed: int,
) -> Estimate:
    """`statistic` of a seeds x cells table, and its CI from resampling seeds (rows) jointly.

    Every row is resampled: drop the rows the statistic cannot use first (`complete_rows`),
    so that the estimate's `n` counts the seeds it rests on."""
    rng = np.random.default_rng(seed)
    value = float(statistic(table))
    n = len(table)
    draws = []
    for _ in range(reps):
        rows = rng.integers(0, n, size=n)
        draws.append(statistic(table.take(rows)))
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    if len(draws) < reps / 2:  # the statistic is mostly undefined: no interval to speak of
        return Estimate(value, float("nan"), float("nan"), n)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return Estimate(value, float(low), float(high), n)


def complete_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows (seeds) with a finite value in every column (cell).

    A seed missing one cell (a diverged run has NaN statistics) cannot be paired across
    the cells, so it is left out of the statistic entirely rather than compared on a subset.
    """
    return table[np.isfinite(table.to_numpy(dtype=float)).all(axis=1)]


def per_seed_spearman(table: pd.DataFrame) -> pd.Series:
    """Spearman's rho between batch size (the columns) and the values, one per seed (row).

    Correlating within a seed keeps the pairing (same initial weights in every cell) and
    gives exactly 1 or -1 for a perfectly monotone effect. Rows with a non-finite value at
    any batch size (`complete_rows`: a diverged member) or no variation have no rho and are
    dropped: the seeds with a rho are the ones the trend rests on.
    """
    table = complete_rows(table)
    sizes = np.asarray(table.columns, dtype=float)
    rhos = {}
    for seed, values in zip(table.index, table.to_numpy(dtype=float), strict=True):
        if len(values) >= 2 and np.ptp(values) > 0:
            rhos[seed] = sps.spearmanr(sizes, values).statistic
    return pd.Series(rhos, dtype=float)


def spearman_vs_batch(table: pd.DataFrame) -> float:
    """Per-seed Spearman's rho (see `per_seed_spearman`), averaged over seeds."""
    rhos = per_seed_spearman(table)
    return float(rhos.mean()) if len(rhos) else float("nan")


def rank_trend(table: pd.DataFrame, reps: int, confidence: float, seed: int) -> Estimate:
    """Mean per-seed rho with its bootstrap CI over seeds (each seed's rho is computed once);
    its `n` counts the seeds with a rho."""
    rhos = per_seed_spearman(table).to_frame("rho")
    if rhos.empty:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    return paired_bootstrap(rhos, lambda t: t["rho"].mean(), reps, confidence, seed)


def sign_verdict(est: Estimate, expected_sign: int, threshold: float = 0.0) -> str:
    """Reproduced when the CI lies wholly on the claimed side of `threshold`,
    not reproduced when it lies wholly on the other side, inconclusive when it straddles."""
    if not (np.isfinite(est.ci_low) and np.isfinite(est.ci_high)):
        return INCONCLUSIVE
    low, high = (est.ci_low - threshold, est.ci_high - threshold)
    if expected_sign < 0:
        low, high = -high, -low
    if low > 0:
        return REPRODUCED
    if high < 0:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def combine(verdicts: list[str]) -> str:
    """A claim with several parts holds only if every part does; any failed part fails it."""
    if any(v == NOT_REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    return INCONCLUSIVE
