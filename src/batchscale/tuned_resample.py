"""The selection-aware bootstrap of the tuned-LR study, vectorised: every resample's choice of
LR at every batch size, and the medians at the chosen LRs, for all resamples at once.

`tuning.selection_aware_bootstrap` runs pandas' choice once per resample (a few milliseconds
each: seconds per statistic at 2000 resamples, and the study needs several). Here the tuning
sweep is a seeds x batch sizes x LRs array, a resample is a row of seed indices, and each
resample's choice is an argmin over its medians. The choice is `tuning.choose_lr`'s (lowest
median, NaN seeds skipped, ties to the smaller LR, an LR whose every seed is NaN never chosen
but still tried) and the seeds are drawn by the same generator calls as `stats.paired_bootstrap`,
so the intervals are the same numbers (tests/test_tuned_resample.py checks them against
`tuning.selection_aware_bootstrap`), in a fraction of a second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from batchscale.stats import Estimate

METRIC = "min_val_loss"
# A run that never reached the target counts as infinitely many steps (as in
# `tuning.critical_batch_bootstrap`), not as a missing seed.
COUNTED_AS_INFINITE = ("steps_to_target",)


@dataclass(frozen=True)
class SeedCube:
    """A tuning sweep as arrays: `values[name]` is seeds x batch sizes x LR slots, the LRs of a
    batch size in ascending order in its first `tried[b]` slots (NaN after: batch sizes may try
    different numbers of LRs). A cell that was not run is NaN."""

    sizes: np.ndarray  # (B,) ascending
    seeds: np.ndarray  # (n,) the seeds with a finite metric somewhere
    lrs: np.ndarray  # (B, L)
    factors: np.ndarray  # (B, L): LR / the linear rule's LR at that batch size
    tried: np.ndarray  # (B,) LRs tried per batch size
    values: dict[str, np.ndarray]


def seed_cube(tuning: pd.DataFrame, columns: Sequence[str], metric: str = METRIC) -> SeedCube:
    """The sweep (one row per batch size, LR and seed) as a `SeedCube` of `metric` and
    `columns`; the seeds NaN at every cell of `metric` are left out (they change no choice)."""
    keys = ["batch_size", "lr", "seed"]
    if tuning.duplicated(keys).any():
        raise ValueError("several runs share batch_size, lr and seed")
    sizes = np.sort(tuning["batch_size"].unique())
    finite = tuning[metric].notna()
    seeds = np.sort(tuning.loc[finite, "seed"].unique())
    grids = [np.sort(tuning.loc[tuning["batch_size"] == b, "lr"].unique()) for b in sizes]
    slots = max((len(g) for g in grids), default=0)
    lrs = np.full((len(sizes), slots), np.nan)
    for i, grid in enumerate(grids):
        lrs[i, : len(grid)] = grid
    rows = tuning[tuning["seed"].isin(seeds)]
    b_index = np.searchsorted(sizes, rows["batch_size"].to_numpy())
    lr_index = np.array([np.searchsorted(grids[b], lr) for b, lr in zip(b_index, rows["lr"], strict=True)],
                        dtype=int)  # fmt: skip
    s_index = np.searchsorted(seeds, rows["seed"].to_numpy())
    values = {}
    for name in dict.fromkeys([metric, *columns]):
        # A column the sweep lacks (older tables) is NaN: nothing is judged on it.
        column = rows[name].astype(float) if name in rows else pd.Series(np.nan, index=rows.index)
        if name in COUNTED_AS_INFINITE and name in rows:
            column = column.fillna(math.inf)
        cube = np.full((len(seeds), len(sizes), slots), np.nan)
        cube[s_index, b_index, lr_index] = column.to_numpy()
        values[name] = cube
    factors = np.full_like(lrs, np.nan)
    if "factor" in tuning:
        first = tuning.groupby(["batch_size", "lr"])["factor"].first()
        for (b, lr), factor in first.items():
            i = int(np.searchsorted(sizes, b))
            factors[i, int(np.searchsorted(grids[i], lr))] = factor
    tried = np.array([len(g) for g in grids], dtype=int)
    return SeedCube(sizes, seeds, lrs, factors, tried, values)


def seed_draws(n: int, reps: int, seed: int) -> np.ndarray:
    """reps x n seed indices, drawn with replacement by the calls `stats.paired_bootstrap` makes,
    so that both draw the same resamples for the same seed."""
    rng = np.random.default_rng(seed)
    return np.array([rng.integers(0, n, size=n) for _ in range(reps)], dtype=int).reshape(reps, n)


def all_seeds(n: int) -> np.ndarray:
    """The observed sample as one 'resample': every seed once."""
    return np.arange(n)[None, :]


def nanmedian(values: np.ndarray, axis: int) -> np.ndarray:
    """The median along `axis` skipping NaN (inf counts as a value), NaN where nothing is left:
    pandas' median, without numpy's masked-array path for short axes or its all-NaN warning."""
    ordered = np.sort(values, axis=axis)  # NaN sorts last
    count = np.sum(~np.isnan(values), axis=axis, keepdims=True)
    low = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0), axis=axis)
    high = np.take_along_axis(ordered, np.maximum(count // 2, 0), axis=axis)
    with np.errstate(invalid="ignore"):  # inf + inf
        middle = np.where(low == high, low, (low + high) / 2)
    return np.squeeze(np.where(count > 0, middle, np.nan), axis=axis)


@dataclass(frozen=True)
class Choice:
    """Each resample's choice (rows r) at each batch size (columns b). A batch size with no
    finite median at any LR has no choice: `chosen` False, LR and medians NaN."""

    chosen: np.ndarray  # (R, B) bool
    lr: np.ndarray  # (R, B)
    factor: np.ndarray  # (R, B)
    at_lower_edge: np.ndarray  # (R, B) bool: the smallest LR tried
    at_upper_edge: np.ndarray  # (R, B) bool: the largest LR tried
    seeds: np.ndarray  # (R, B) seeds with a finite metric at the chosen LR
    medians: dict[str, np.ndarray]  # (R, B) each cube value's median at the chosen LR

    @property
    def interior(self) -> np.ndarray:
        return self.chosen & ~self.at_lower_edge & ~self.at_upper_edge


def choose(cube: SeedCube, rows: np.ndarray, metric: str = METRIC) -> Choice:
    """The LR of each batch size with the lowest median `metric` over the seeds of each
    resample (`rows`: R x n seed indices), and every value's median there."""
    medians = {name: nanmedian(values[rows], axis=1) for name, values in cube.values.items()}  # (R, B, L)
    score = medians[metric]
    chosen = np.isfinite(score).any(axis=2)
    index = np.where(np.isnan(score), np.inf, score).argmin(axis=2)  # the first minimum: the smaller LR

    def at_choice(table: np.ndarray) -> np.ndarray:
        picked = np.take_along_axis(table, index[..., None], axis=2)[..., 0]
        return np.where(chosen, picked, np.nan)

    grid = np.broadcast_to(cube.lrs, score.shape)
    finite_seeds = (~np.isnan(cube.values[metric][rows])).sum(axis=1)  # (R, B, L)
    return Choice(
        chosen=chosen,
        lr=at_choice(grid),
        factor=at_choice(np.broadcast_to(cube.factors, score.shape)),
        at_lower_edge=chosen & (index == 0),
        at_upper_edge=chosen & (index == cube.tried[None, :] - 1),
        seeds=np.where(chosen, np.take_along_axis(finite_seeds, index[..., None], axis=2)[..., 0], 0),
        medians={name: at_choice(table) for name, table in medians.items()},
    )


def per_seed(runs: pd.DataFrame, rule: str, column: str, cube: SeedCube) -> np.ndarray:
    """n x B: a fixed rule's `column` in runs.csv, by the cube's seeds and batch sizes (NaN
    where that rule did not run, or runs.csv lacks the column), paired with the sweep by seed."""
    if runs.empty or column not in runs or "rule" not in runs:
        return np.full((len(cube.seeds), len(cube.sizes)), np.nan)
    cell = runs[runs["rule"] == rule]
    table = cell.pivot_table(index="seed", columns="batch_size", values=column, aggfunc="first")
    return table.reindex(index=cube.seeds, columns=cube.sizes).to_numpy(dtype=float)


def interval(
    value: float, draws: np.ndarray, confidence: float, n: int, grid_valued: bool = False
) -> Estimate:
    """`value` with the percentile interval of its resampled `draws`, as `stats.paired_bootstrap`
    makes it (finite draws, linear quantiles) or, `grid_valued`, as
    `tuning.grid_valued_bootstrap` (drawn values only, inf counted, only NaN dropped). No
    interval when fewer than half the draws are defined."""
    draws = np.asarray(draws, dtype=float)
    kept = draws[~np.isnan(draws)] if grid_valued else draws[np.isfinite(draws)]
    if len(kept) < len(draws) / 2 or len(kept) == 0:
        return Estimate(float(value), math.nan, math.nan, n)
    alpha = (1 - confidence) / 2
    method = "inverted_cdf" if grid_valued else "linear"
    low, high = np.quantile(kept, [alpha, 1 - alpha], method=method)
    return Estimate(float(value), float(low), float(high), n)
