"""The tuned-LR analysis on tables whose answer is known: the LR chosen per batch size, the
bootstrap that chooses it again, how the best LR scales, and the critical batch size."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from batchscale import stats, tuning

LRS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32)


def runs_table(losses: dict[tuple[int, float], list[float]], **extra: dict) -> pd.DataFrame:
    """One row per (batch size, LR) and seed from {(batch_size, lr): [loss of seed 0, 1, ...]};
    `extra` adds columns the same way."""
    rows = []
    for (batch_size, lr), values in losses.items():
        for seed, value in enumerate(values):
            row = {"batch_size": batch_size, "lr": lr, "seed": seed, "min_val_loss": value}
            row.update({name: column[batch_size, lr][seed] for name, column in extra.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def noisy_runs(rng, truths, seeds: int = 8, sd: float = 0.1, batch_size: int = 32) -> pd.DataFrame:
    """Runs at one batch size: validation and test losses around each LR's true loss, with
    independent noise per run and split."""
    rows = [
        {
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "min_val_loss": truth + sd * rng.normal(),
            "test_loss": truth + sd * rng.normal(),
        }
        for lr, truth in zip(LRS, truths, strict=True)
        for seed in range(seeds)
    ]
    return pd.DataFrame(rows)


# choose_lr


def test_the_chosen_lr_has_the_lowest_median_and_the_edges_are_flagged():
    runs = runs_table(
        {
            (32, 0.1): [1.5, 1.4, 1.6],
            (32, 0.2): [0.8, 0.9, 5.0],  # median 0.9: the best, interior (a mean would be 2.2)
            (32, 0.4): [1.0, 1.1, 1.0],
            (64, 0.1): [2.0, 2.0, 2.0],
            (64, 0.2): [1.9, 1.8, 1.7],  # best at the largest LR tried: a lower bound only
        }
    )
    chosen = tuning.choose_lr(runs).set_index("batch_size")
    assert chosen.loc[32, "lr"] == 0.2 and chosen.loc[32, "min_val_loss"] == pytest.approx(0.9)
    assert not chosen.loc[32, "at_lower_edge"] and not chosen.loc[32, "at_upper_edge"]
    row = chosen.loc[64]
    assert row["lr"] == 0.2 and row["at_upper_edge"] and not row["at_lower_edge"]
    assert list(chosen["seeds"]) == [3, 3] and list(chosen["lrs"]) == [3, 2]


def test_the_smallest_lr_tried_is_the_lower_edge():
    row = tuning.choose_lr(runs_table({(32, 0.1): [1.0, 1.0], (32, 0.2): [2.0, 2.0]})).iloc[0]
    assert row["lr"] == 0.1 and row["at_lower_edge"] and not row["at_upper_edge"]


def test_a_tie_goes_to_the_smaller_lr():
    runs = runs_table({(32, 0.4): [1.0, 2.0], (32, 0.1): [2.0, 1.0], (32, 0.2): [3.0, 3.0]})
    assert tuning.choose_lr(runs).loc[0, "lr"] == 0.1  # 0.1 and 0.4 both have median 1.5


def test_nan_seeds_are_left_out_and_an_lr_that_diverged_everywhere_is_tried_but_never_chosen():
    nan = math.nan
    runs = runs_table(
        {
            (32, 0.1): [1.0, 1.1, 1.2],
            (32, 0.2): [0.5, 0.7, nan],  # one seed diverged: median of the other two, 0.6
            (32, 0.4): [nan, nan, nan],  # every seed diverged: worse than any finite loss
        }
    )
    row = tuning.choose_lr(runs).iloc[0]
    assert row["lr"] == 0.2 and row["min_val_loss"] == pytest.approx(0.6) and row["seeds"] == 2
    assert row["lrs"] == 3 and not row["at_upper_edge"]  # the diverged LR brackets the optimum


def test_each_batch_size_has_its_own_lr_grid_and_edges():
    runs = runs_table(
        {(32, 0.1): [1.0], (32, 0.2): [2.0], (64, 0.2): [3.0], (64, 0.4): [2.0], (64, 0.8): [2.5]}
    )
    chosen = tuning.choose_lr(runs).set_index("batch_size")
    assert chosen.loc[32, "at_lower_edge"]  # 0.1 is the smallest tried at 32...
    assert chosen.loc[64, "lr"] == 0.4 and not chosen.loc[64, "at_lower_edge"]  # ...0.2 at 64 is not chosen
    assert list(chosen["lrs"]) == [2, 3]


def test_a_carried_column_is_its_median_at_the_lr_chosen_on_the_metric():
    losses = {(32, 0.1): [1.0, 1.0, 1.0], (32, 0.2): [2.0, 2.0, 2.0]}
    test = {(32, 0.1): [5.0, 7.0, 6.0], (32, 0.2): [0.0, 0.0, 0.0]}  # lower, but not what is chosen on
    row = tuning.choose_lr(runs_table(losses, test_loss=test), carry=("test_loss",)).iloc[0]
    assert row["lr"] == 0.1 and row["test_loss"] == pytest.approx(6.0)


def test_choosing_by_rule_and_batch_size_keeps_the_rules_apart():
    a = runs_table({(32, 0.1): [1.0], (32, 0.2): [2.0]}).assign(rule="a")
    b = runs_table({(32, 0.1): [2.0], (32, 0.2): [1.0]}).assign(rule="b")
    chosen = tuning.choose_lr(pd.concat([a, b]), by=("rule", "batch_size"))
    assert list(zip(chosen["rule"], chosen["lr"], strict=True)) == [("a", 0.1), ("b", 0.2)]
    with pytest.raises(ValueError, match="several runs"):
        tuning.choose_lr(pd.concat([a, b]))  # two runs per batch size, LR and seed: ambiguous


def test_choose_lr_edge_cases():
    empty = tuning.choose_lr(runs_table({}).reindex(columns=["batch_size", "lr", "seed", "min_val_loss"]))
    assert empty.empty and {"batch_size", "lr", "min_val_loss", "at_upper_edge"} <= set(empty.columns)
    single = tuning.choose_lr(runs_table({(32, 0.1): [1.0, 2.0]})).iloc[0]
    assert single["at_lower_edge"] and single["at_upper_edge"]  # one LR tried: a bound both ways
    all_nan = runs_table({(32, 0.1): [math.nan], (32, 0.2): [math.nan], (64, 0.1): [1.0]})
    assert list(tuning.choose_lr(all_nan)["batch_size"]) == [64]  # nothing to choose at 32: no row


# selection_aware_bootstrap


def test_the_bootstrap_chooses_the_lr_again_in_every_resample():
    """Equal true losses: another LR wins in many resamples, so the interval of the chosen LR
    spans several LRs. With one LR clearly best it is that LR in every resample."""
    rng = np.random.default_rng(0)
    chosen_lr = lambda chosen: chosen["lr"].iloc[0]  # noqa: E731
    flat = tuning.selection_aware_bootstrap(noisy_runs(rng, [1.0] * 6), chosen_lr, 300, 0.95, seed=0)
    assert flat.ci_low < flat.ci_high
    sharp = noisy_runs(rng, [2.0, 2.0, 1.0, 2.0, 2.0, 2.0])
    assert tuning.selection_aware_bootstrap(sharp, chosen_lr, 300, 0.95, seed=0) == stats.Estimate(
        0.04, 0.04, 0.04, 8
    )


def test_the_bootstrap_draws_the_same_seeds_for_every_lr_and_batch_size():
    """Each seed shifts all its runs alike (its initial weights): drawn jointly, the shift cancels
    from a gap between batch sizes, which is then the same in every resample."""
    offsets = [0.0, 0.5, -0.3, 1.2, 0.8, -0.7]
    runs = runs_table(
        {
            (32, 0.1): [1.0 + o for o in offsets],
            (32, 0.2): [1.2 + o for o in offsets],
            (64, 0.1): [1.5 + o for o in offsets],
            (64, 0.2): [1.3 + o for o in offsets],
        }
    )
    gap = lambda chosen: tuning.gap_at_best_lr(chosen, "min_val_loss")  # noqa: E731
    est = tuning.selection_aware_bootstrap(runs, gap, 300, 0.95, seed=0)
    assert (est.value, est.ci_low, est.ci_high) == pytest.approx((0.3, 0.3, 0.3))


def naive_interval(runs: pd.DataFrame, column: str, reps: int, seed: int) -> stats.Estimate:
    """The interval that keeps the LR chosen once on all seeds: `column`'s median at that LR,
    bootstrapped over seeds."""
    at_best = tuning.at_chosen_lr(runs, tuning.choose_lr(runs))
    table = at_best.pivot(index="seed", columns="batch_size", values=column)
    return stats.paired_bootstrap(table, lambda t: t.median().iloc[0], reps, 0.95, seed)


def test_choosing_again_widens_the_interval_of_the_held_out_loss():
    """Six LRs with the same true loss, chosen on validation and judged on test. The interval at
    the LR chosen once has only that LR's seeds in it; choosing again adds the chance that
    another LR wins, so it is wider on most data sets and covers the true loss at least as
    often."""
    rng = np.random.default_rng(1)
    widths, covered = {"naive": [], "aware": []}, {"naive": 0, "aware": 0}
    test_at_best = lambda chosen: chosen["test_loss"].iloc[0]  # noqa: E731
    for i in range(20):
        runs = noisy_runs(rng, [1.0] * 6)
        estimates = {
            "naive": naive_interval(runs, "test_loss", 100, i),
            "aware": tuning.selection_aware_bootstrap(runs, test_at_best, 100, 0.95, i, carry=("test_loss",)),
        }
        for name, est in estimates.items():
            widths[name].append(est.ci_high - est.ci_low)
            covered[name] += est.ci_low <= 1.0 <= est.ci_high
    wider = np.asarray(widths["aware"]) > np.asarray(widths["naive"])
    # Margins from six RNG seeds: wider on 65-85% of data sets, 1.14-1.34 times as wide on average.
    assert wider.mean() >= 0.6 and np.mean(widths["aware"]) > 1.1 * np.mean(widths["naive"])
    assert covered["aware"] >= covered["naive"] and covered["aware"] >= 19


def test_the_minimum_chosen_on_validation_is_biased_low_and_the_held_out_loss_is_not():
    """Why the study judges on a column it did not choose on (`carry`): the lowest of six equal
    medians is below the true loss on average; the test loss at that LR is not."""
    rng = np.random.default_rng(2)
    chosen = [tuning.choose_lr(noisy_runs(rng, [1.0] * 6), carry=("test_loss",)).iloc[0] for _ in range(100)]
    validation = np.mean([row["min_val_loss"] for row in chosen])
    held_out = np.mean([row["test_loss"] for row in chosen])
    assert validation < 1.0 - 0.03  # about one median's standard error per seed count: biased
    assert held_out == pytest.approx(1.0, abs=0.015)


def test_the_bootstrap_value_is_the_statistic_of_the_chosen_table_and_is_reproducible():
    runs = noisy_runs(np.random.default_rng(3), [1.2, 1.0, 1.1, 1.3, 1.4, 1.5])
    runs.loc[runs["seed"] == 7, "min_val_loss"] = math.nan  # a seed that diverged everywhere
    median_at_best = lambda chosen: chosen["min_val_loss"].iloc[0]  # noqa: E731
    est = tuning.selection_aware_bootstrap(runs, median_at_best, 200, 0.95, seed=4)
    assert est == tuning.selection_aware_bootstrap(runs, median_at_best, 200, 0.95, seed=4)
    assert est.value == tuning.choose_lr(runs)["min_val_loss"].iloc[0]
    assert est.n == 7 and est.ci_low <= est.value <= est.ci_high


def test_the_bootstrap_of_nothing_is_undefined():
    empty = runs_table({}).reindex(columns=["batch_size", "lr", "seed", "min_val_loss"])
    all_nan = runs_table({(32, 0.1): [math.nan, math.nan]})
    for runs in (empty, all_nan):
        est = tuning.selection_aware_bootstrap(runs, lambda c: c["lr"].iloc[0], 50, 0.95, seed=0)
        assert est.n == 0 and all(math.isnan(x) for x in (est.value, est.ci_low, est.ci_high))


def test_gap_at_best_lr_is_largest_minus_smallest_batch():
    chosen = pd.DataFrame({"batch_size": [256, 32, 64], "test_loss": [1.5, 1.0, 1.2]})
    assert tuning.gap_at_best_lr(chosen, "test_loss") == pytest.approx(0.5)
    assert math.isnan(tuning.gap_at_best_lr(chosen.iloc[:1], "test_loss"))


# lr_scaling_slope


def chosen_table(lrs: dict[int, float], edges: dict[int, str] | None = None) -> pd.DataFrame:
    edges = edges or {}
    return pd.DataFrame(
        {
            "batch_size": list(lrs),
            "lr": list(lrs.values()),
            "at_lower_edge": [edges.get(b) == "lower" for b in lrs],
            "at_upper_edge": [edges.get(b) == "upper" for b in lrs],
        }
    )


@pytest.mark.parametrize("exponent", [1.0, 0.5])
def test_the_slope_of_exact_power_law_optima_is_their_exponent(exponent):
    sizes = [32, 64, 128, 256]
    chosen = chosen_table({b: 0.01 * (b / 32) ** exponent for b in sizes})
    fit = tuning.lr_scaling_slope(chosen, base_batch_size=32)
    assert fit.slope == pytest.approx(exponent) and fit.interior == (32, 64, 128, 256)
    lines = fit.lines
    assert np.allclose(lines["fitted"], lines["best_lr"])
    assert np.allclose(lines["linear"], [0.01 * b / 32 for b in sizes])  # through the base LR
    assert np.allclose(lines["square_root"], [0.01 * (b / 32) ** 0.5 for b in sizes])


def test_an_optimum_on_the_edge_of_the_grid_is_left_out_of_the_fit():
    lrs = {b: 0.01 * (b / 32) ** 0.5 for b in (32, 64, 128)} | {256: 0.01}  # 256: at most 0.01
    fit = tuning.lr_scaling_slope(chosen_table(lrs, {256: "upper"}), base_batch_size=32)
    assert fit.slope == pytest.approx(0.5) and fit.interior == (32, 64, 128)
    assert not fit.lines.loc[256, "interior"] and fit.lines.loc[256, "best_lr"] == 0.01


def test_the_slope_needs_two_interior_optima():
    chosen = chosen_table({32: 0.01, 64: 0.02, 128: 0.02}, {64: "lower", 128: "upper"})
    fit = tuning.lr_scaling_slope(chosen, base_batch_size=32)
    assert math.isnan(fit.slope) and fit.interior == (32,)
    assert np.allclose(fit.lines["linear"], [0.01, 0.02, 0.04])  # the rules' lines still show
    empty = tuning.lr_scaling_slope(chosen_table({}), base_batch_size=32)
    assert math.isnan(empty.slope) and empty.lines.empty


def test_without_the_base_batch_size_the_rules_go_through_the_fitted_line():
    fit = tuning.lr_scaling_slope(chosen_table({64: 0.02, 128: 0.04}), base_batch_size=32)
    assert fit.slope == pytest.approx(1.0)
    assert np.allclose(fit.lines["square_root"], [0.01 * 2**0.5, 0.01 * 4**0.5])  # base LR 0.01, fitted


def test_the_slope_wants_one_lr_per_batch_size():
    with pytest.raises(ValueError, match="one chosen LR per batch size"):
        tuning.lr_scaling_slope(chosen_table({32: 0.01}).pipe(lambda t: pd.concat([t, t])), 32)


# critical batch size


def test_the_critical_batch_is_the_first_more_than_20_percent_above_perfect_scaling():
    perfect = {32: 800.0, 64: 400.0, 128: 200.0, 256: 100.0, 512: 50.0}
    steps = pd.Series(perfect) * pd.Series({32: 1.0, 64: 1.1, 128: 1.19, 256: 1.21, 512: 2.0})
    assert tuning.critical_batch_from_steps(steps) == 256
    assert tuning.critical_batch_from_steps(steps, threshold=0.05) == 64
    assert tuning.critical_batch_from_steps(steps.sample(frac=1, random_state=0)) == 256  # order-free
    exactly = pd.Series({32: 800.0, 64: 600.0, 128: 400.0})  # 1.5 and 2 times perfect scaling
    assert tuning.critical_batch_from_steps(exactly, threshold=0.5) == 128  # more than, not as much as


def test_never_reaching_the_target_is_past_the_critical_batch():
    steps = pd.Series({32: 800.0, 64: 400.0, 128: math.nan, 256: 100.0})
    assert tuning.critical_batch_from_steps(steps) == 128
    assert tuning.critical_batch_from_steps(steps.fillna(math.inf)) == 128


def test_critical_batch_edge_cases():
    assert tuning.critical_batch_from_steps(pd.Series({32: 800.0, 64: 400.0, 128: 200.0})) == math.inf
    assert tuning.critical_batch_from_steps(pd.Series({32: 800.0})) == math.inf  # beyond a grid of one
    assert math.isnan(tuning.critical_batch_from_steps(pd.Series(dtype=float)))
    assert math.isnan(tuning.critical_batch_from_steps(pd.Series({32: math.nan, 64: 400.0})))


def test_the_critical_batch_of_the_noise_scale_model_is_where_the_model_predicts():
    """Under S = S_min (1 + B_noise / B) the steps are (B + B_noise) / (B0 + B_noise) times
    perfect scaling: more than 1.2 from B = 1.2 B0 + 0.2 B_noise."""
    sizes = np.arange(10, 2000, 10)
    steps = pd.Series(1000 * (1 + 500 / sizes), index=sizes)
    assert tuning.critical_batch_from_steps(steps) == 120  # past 1.2 * 10 + 0.2 * 500 = 112


def test_the_critical_batch_interval_takes_grid_values_and_counts_unreached_runs():
    rng = np.random.default_rng(0)
    sizes = [32, 64, 128, 256, 512]
    model = np.array([1000 * (1 + 100 / b) for b in sizes])  # 1.2 x perfect scaling from B = 58
    table = pd.DataFrame(model * rng.lognormal(0, 0.1, size=(8, len(sizes))), columns=sizes)
    est = tuning.critical_batch_bootstrap(table, 300, 0.95, seed=0)
    assert est.n == 8 and {est.value, est.ci_low, est.ci_high} <= set(sizes) | {math.inf}
    assert est.ci_low <= est.value <= est.ci_high
    same = pd.DataFrame([[800.0, 400.0, 300.0]] * 5, columns=[32, 64, 128])
    assert tuning.critical_batch_bootstrap(same, 100, 0.95, seed=0) == stats.Estimate(128, 128, 128, 5)
    unreached = pd.DataFrame([[800.0, 400.0, 100.0]] * 5, columns=[32, 64, 256])  # perfect scaling...
    unreached.iloc[:3, 2] = math.nan  # ...but most seeds never reach the target at 256: inf steps
    assert tuning.critical_batch_bootstrap(unreached, 100, 0.95, seed=0).value == 256
    beyond = pd.DataFrame([[800.0, 400.0]] * 5, columns=[32, 64])
    assert tuning.critical_batch_bootstrap(beyond, 100, 0.95, seed=0) == stats.Estimate(
        math.inf, math.inf, math.inf, 5
    )
    assert tuning.critical_batch_bootstrap(beyond.iloc[:0], 100, 0.95, seed=0).n == 0


# fit_noise_scale_model


@pytest.mark.parametrize(("s_min", "b_noise"), [(1000.0, 100.0), (250.0, 2000.0), (5000.0, 8.0)])
def test_the_noise_scale_model_is_recovered_from_exact_steps(s_min, b_noise):
    sizes = np.array([32, 64, 128, 256, 512])
    fit = tuning.fit_noise_scale_model(pd.Series(s_min * (1 + b_noise / sizes), index=sizes))
    assert (fit.s_min, fit.b_noise, fit.points) == (pytest.approx(s_min), pytest.approx(b_noise), 5)


def test_the_noise_scale_model_is_close_with_small_noise():
    rng = np.random.default_rng(0)
    sizes = np.array([16, 32, 64, 128, 256, 512, 1024])
    steps = 1000 * (1 + 200 / sizes) * rng.lognormal(0, 0.01, size=len(sizes))
    fit = tuning.fit_noise_scale_model(pd.Series(steps, index=sizes))
    assert fit.s_min == pytest.approx(1000, rel=0.03) and fit.b_noise == pytest.approx(200, rel=0.1)


def test_the_noise_scale_model_edge_cases():
    sizes = [32, 64, 128, 256]
    unreached = pd.Series([1000 * (1 + 100 / b) for b in sizes[:2]] + [math.nan, math.inf], index=sizes)
    fit = tuning.fit_noise_scale_model(unreached)  # two points left: the model through them
    assert fit.points == 2 and fit.b_noise == pytest.approx(100)
    assert tuning.fit_noise_scale_model(unreached.iloc[1:]) is None
    assert tuning.fit_noise_scale_model(pd.Series(dtype=float)) is None
    faster_than_perfect = pd.Series([1e4 / b**1.2 for b in sizes], index=sizes)
    assert tuning.fit_noise_scale_model(faster_than_perfect).b_noise == math.inf
