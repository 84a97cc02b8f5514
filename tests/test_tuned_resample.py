"""The vectorised selection-aware bootstrap gives the numbers of the pandas one it replaces:
the same choice of LR on awkward sweeps, the same resamples and the same intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from batchscale import tuned_analysis, tuning
from batchscale.tuned_resample import all_seeds, choose, interval, nanmedian, seed_cube, seed_draws

from synthetic_study import TunedWorld


def awkward_sweep(seed: int = 0) -> pd.DataFrame:
    """Three batch sizes with different LR grids (3, 4 and 5 LRs), noisy losses, one seed NaN
    everywhere, a few NaN runs, an LR whose every seed diverged, and an exact tie."""
    rng = np.random.default_rng(seed)
    grids = {32: [0.01, 0.02, 0.04], 64: [0.01, 0.02, 0.04, 0.08], 128: [0.02, 0.04, 0.08, 0.16, 0.32]}
    rows = []
    for b, lrs in grids.items():
        for lr in lrs:
            for s in range(7):
                val = 1.0 + 0.05 * math.log2(lr / 0.02) ** 2 + 0.1 * rng.normal()
                steps = 1000 * 32 / b * (1 + rng.random())
                rows.append({"batch_size": b, "lr": lr, "factor": lr / (0.01 * b / 32), "seed": s,
                             "min_val_loss": val, "test_loss": val + 0.05 * rng.normal(),
                             "test_acc": 0.9 - 0.1 * rng.random(), "steps_to_target": steps})  # fmt: skip
    sweep = pd.DataFrame(rows)
    tie = (sweep["batch_size"] == 32) & sweep["lr"].isin([0.01, 0.02])
    sweep.loc[tie, "min_val_loss"] = 0.5  # equal medians: the smaller LR wins
    sweep.loc[rng.random(len(sweep)) < 0.1, "min_val_loss"] = math.nan
    sweep.loc[(sweep["batch_size"] == 128) & (sweep["lr"] == 0.32), "min_val_loss"] = math.nan
    sweep.loc[rng.random(len(sweep)) < 0.1, "steps_to_target"] = math.nan  # never reached
    sweep.loc[sweep["seed"] == 6, ["min_val_loss", "test_loss", "test_acc"]] = math.nan  # diverged everywhere
    return sweep


@pytest.mark.parametrize("seed", range(4))
def test_the_observed_choice_is_choose_lrs(seed):
    sweep = awkward_sweep(seed)
    cube = seed_cube(sweep, ["test_loss", "test_acc"])
    choice = choose(cube, all_seeds(len(cube.seeds)))
    expected = tuning.choose_lr(sweep, carry=("test_loss", "test_acc")).set_index("batch_size")
    assert list(cube.sizes[choice.chosen[0]]) == list(expected.index)
    assert cube.seeds.tolist() == list(range(6))  # seed 6 is NaN everywhere: left out, as in the bootstrap
    for name in ("lr", "at_lower_edge", "at_upper_edge", "seeds"):
        got = getattr(choice, name)[0]
        assert np.array_equal(got, expected[name].to_numpy()), name
    for name in ("min_val_loss", "test_loss", "test_acc"):
        assert np.allclose(choice.medians[name][0], expected[name].to_numpy(), equal_nan=True), name
    assert expected.loc[32, "lr"] == 0.01  # the tie
    assert not expected.loc[128, "at_upper_edge"]  # 0.32 diverged everywhere, and still brackets


def test_a_batch_size_with_nothing_finite_has_no_choice():
    sweep = awkward_sweep()
    sweep.loc[sweep["batch_size"] == 64, "min_val_loss"] = math.nan
    choice = choose(seed_cube(sweep, ["test_loss"]), all_seeds(6))
    assert choice.chosen[0].tolist() == [True, False, True]
    assert math.isnan(choice.lr[0, 1]) and math.isnan(choice.medians["test_loss"][0, 1])
    assert list(tuning.choose_lr(sweep)["batch_size"]) == [32, 128]


def test_the_resamples_are_the_bootstraps():
    """The same seeds in every resample as stats.paired_bootstrap draws: the interval of the test
    loss at a batch size's chosen LR and of the chosen LR itself are the pandas bootstrap's."""
    sweep = awkward_sweep(1)
    cube = seed_cube(sweep, ["test_loss"])
    n, reps = len(cube.seeds), 300
    boot = choose(cube, seed_draws(n, reps, seed=5))
    seen = choose(cube, all_seeds(n))
    for b, size in enumerate(cube.sizes):
        statistic = lambda chosen, s=size: chosen.set_index("batch_size")["test_loss"].get(s, math.nan)  # noqa: E731
        slow = tuning.selection_aware_bootstrap(sweep, statistic, reps, 0.9, 5, carry=("test_loss",))
        fast = interval(seen.medians["test_loss"][0, b], boot.medians["test_loss"][:, b], 0.9, n)
        assert (fast.value, fast.ci_low, fast.ci_high, fast.n) == pytest.approx(
            (slow.value, slow.ci_low, slow.ci_high, slow.n)
        )
        lr = lambda chosen, s=size: chosen.set_index("batch_size")["lr"].get(s, math.nan)  # noqa: E731
        grid = tuning.selection_aware_bootstrap(
            sweep, lr, reps, 0.9, 5, bootstrap=tuning.grid_valued_bootstrap
        )
        assert interval(seen.lr[0, b], boot.lr[:, b], 0.9, n, grid_valued=True) == grid


def test_the_gap_slope_and_critical_batch_of_every_resample_are_the_pandas_ones():
    sweep = awkward_sweep(2)
    cube = seed_cube(sweep, ["test_loss", "steps_to_target"])
    rows = seed_draws(len(cube.seeds), 40, seed=1)
    boot = choose(cube, rows)
    slopes = tuned_analysis.interior_slope(cube.sizes, boot)
    gaps = tuned_analysis.relative_gap(boot.medians["test_loss"])
    critical = tuned_analysis.critical_batches(boot.medians["steps_to_target"], cube.sizes, 0.2)
    wide = tuning.seeds_by_cell(
        sweep[sweep["seed"].isin(cube.seeds)], ["min_val_loss", "test_loss", "steps_to_target"]
    )
    wide["steps_to_target"] = wide["steps_to_target"].fillna(math.inf)
    for r, draw in enumerate(rows):
        chosen = tuning.chosen_from_wide(wide.take(draw), "min_val_loss")
        assert slopes[r] == pytest.approx(tuning.lr_scaling_slope(chosen, 32).slope, nan_ok=True)
        ends = chosen.set_index("batch_size")["test_loss"]
        assert gaps[r] == pytest.approx(ends.loc[128] / ends.loc[32] - 1)
        steps = chosen.set_index("batch_size")["steps_to_target"]
        assert critical[r] == tuning.critical_batch_from_steps(steps) or (
            math.isnan(critical[r]) and math.isnan(tuning.critical_batch_from_steps(steps))
        )


def test_nanmedian_is_pandas_median():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(50, 7, 3))
    values[rng.random(values.shape) < 0.3] = math.nan
    values[rng.random(values.shape) < 0.1] = math.inf
    values[0, :, 0] = math.nan  # nothing left: NaN
    expected = np.array([[pd.Series(values[i, :, j]).median() for j in range(3)] for i in range(50)])
    assert np.allclose(nanmedian(values, axis=1), expected, equal_nan=True)


def test_a_sweep_with_two_runs_of_one_cell_is_refused():
    sweep = awkward_sweep()
    with pytest.raises(ValueError, match="several runs"):
        seed_cube(pd.concat([sweep, sweep.iloc[:1]]), ["test_loss"])


def test_a_missing_column_is_nan_not_an_error():
    sweep = awkward_sweep().drop(columns=["test_acc"])
    choice = choose(seed_cube(sweep, ["test_acc"]), all_seeds(6))
    assert np.isnan(choice.medians["test_acc"]).all() and choice.chosen.all()


def benchmark(reps: int = 2000) -> float:
    """Seconds for the whole tuned analysis of a 6 batch sizes x 5 LRs x 8 seeds sweep at `reps`
    resamples (run this module as a script; a benchmark, not a test)."""
    import time

    from batchscale.config import validate

    world = TunedWorld()
    sweep, runs = world.sweep(), world.fixed_runs()
    params = validate({"stats": {"bootstrap": reps}})
    start = time.perf_counter()
    tuned_analysis.analyse(sweep, runs, pd.DataFrame(), params)
    return time.perf_counter() - start


if __name__ == "__main__":
    print(f"tuned analysis, 6 x 5 x 8 sweep, 2000 resamples: {benchmark():.2f} s")
