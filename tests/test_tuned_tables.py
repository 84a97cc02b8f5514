"""tuned_lr.csv and critical_batch.csv on sweeps whose answer is known: a best LR growing as
B^0.5 exactly, steps to target following S_min (1 + B_noise / B), edges of the LR grid, the
noise probe's prediction, and what `batchscale claims` writes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from batchscale import cli, stats, tuned_analysis, tuning
from batchscale.config import validate

from synthetic_study import TunedWorld, small_params, write_tables

PARAMS = validate({"stats": {"bootstrap": 500}})
# The best LR 0.01 sqrt(B / 32) is a grid point at every batch size (32 ... 1024, octaves of
# sqrt 2), two grid points inside either end of the grid.
HALF_OCTAVES = [0.01 * 2 ** (i / 2) for i in range(-2, 8)]


def exact_world(**extra) -> TunedWorld:
    return TunedWorld(**{"lrs": lambda b: HALF_OCTAVES, **extra})


def study(w: TunedWorld, noise: pd.DataFrame | None = None) -> tuned_analysis.TunedAnalysis:
    return tuned_analysis.analyse(
        w.sweep(), w.fixed_runs(), pd.DataFrame() if noise is None else noise, PARAMS
    )


def test_a_best_lr_growing_as_the_square_root_of_b_has_slope_one_half():
    w = exact_world()
    table = study(w).per_batch
    assert list(table.columns) == tuned_analysis.TUNED_LR_COLUMNS
    assert list(table["batch_size"]) == list(w.sizes)
    assert np.allclose(table["lr"], [w.best_lr(b) for b in w.sizes])
    assert (table["bound"] == "").all() and not table[["at_lower_edge", "at_upper_edge"]].any().any()
    assert table["slope"].iloc[0] == pytest.approx(0.5) and (table["slope_points"] == 6).all()
    assert table["slope_ci_low"].iloc[0] <= 0.5 <= table["slope_ci_high"].iloc[0]
    assert table["slope"].nunique() == 1  # one fit, repeated in every row
    assert np.allclose(table["fitted_lr"], table["lr"])
    assert np.allclose(table["factor"], table["lr"] / (0.01 * table["batch_size"] / 32))
    # Every value at the chosen LR is choose_lr's carry: the test split's median there.
    chosen = tuning.choose_lr(w.sweep(), carry=("test_loss", "test_acc"))
    assert np.allclose(table["test_loss"], chosen["test_loss"]) and np.allclose(
        table["test_acc"], chosen["test_acc"]
    )
    assert (table["test_loss_ci_low"] <= table["test_loss"]).all() and (
        table["test_loss"] <= table["test_loss_ci_high"]
    ).all()
    # The fixed rules' test losses, medians over seeds from runs.csv, and the linear rule's share.
    fixed = w.fixed_runs().groupby(["rule", "batch_size"])["test_loss"].median()
    assert np.allclose(table["none_test_loss"], fixed["none"]) and np.allclose(
        table["linear_test_loss"], fixed["linear"]
    )
    share = (table["none_test_loss"] - table["linear_test_loss"]) / (
        table["none_test_loss"] - table["test_loss"]
    )
    assert math.isnan(table["linear_fraction"].iloc[0])  # the base batch size: nothing scaled
    assert np.allclose(table["linear_fraction"].iloc[1:], share.iloc[1:])


def test_steps_following_the_noise_scale_model_give_back_its_parameters_and_critical_batch():
    w = exact_world(s_min=1500.0, b_noise=300.0)
    critical = study(w).critical
    assert list(critical.columns) == tuned_analysis.CRITICAL_COLUMNS and len(critical) == 1
    row = critical.iloc[0]
    assert (row["s_min"], row["b_noise"], row["fit_points"]) == (pytest.approx(1500), pytest.approx(300), 6)
    model = pd.Series({b: 1500 * (1 + 300 / b) for b in w.sizes})
    # The model's steps are (B + B_noise) / (B0 + B_noise) times perfect scaling: above 1.2 from
    # B = 1.2 B0 + 0.2 B_noise on, so the 20% rule answers the first grid batch size past that.
    crossing = 1.2 * 32 + 0.2 * 300
    first_past = min(b for b in w.sizes if b > crossing)
    assert row["critical_batch"] == tuning.critical_batch_from_steps(model) == first_past
    assert row["ci_low"] <= row["critical_batch"] <= row["ci_high"] and row["seeds"] == 8
    assert row["b_noise_crossing"] == pytest.approx(crossing)
    # The measured range runs from the grid point below the interval's lower end to its upper end,
    # and the fitted model's own crossing lies in it.
    below = max(b for b in w.sizes if b < row["ci_low"])
    assert (row["range_low"], row["range_high"]) == (below, row["ci_high"])
    assert row["b_noise_agrees"] is True or row["b_noise_agrees"] == True  # noqa: E712 (numpy bool)
    assert row["smallest_batch"] == 32 and row["largest_batch"] == 1024 and row["threshold"] == 0.2


def test_steps_that_scale_perfectly_put_the_critical_batch_beyond_the_grid():
    """B_noise far above the grid: the steps halve with every doubling of B across it."""
    w = exact_world(b_noise=1e6)
    row = study(w).critical.iloc[0]
    assert row["critical_batch"] == row["ci_high"] == math.inf
    # A resample that picks a neighbouring LR somewhere pays 25% more steps there: the interval's
    # lower end may be a batch size of the grid, never a size between two.
    assert row["ci_low"] in set(w.sizes) | {math.inf} and row["range_high"] == math.inf
    assert row["b_noise"] == pytest.approx(1e6, rel=1e-6)
    assert row["b_noise_agrees"] == True  # noqa: E712 (its crossing, 2e5, is beyond the grid too)
    constant = study(exact_world(b_noise=0.0)).critical.iloc[0]  # no gain from a larger batch at all
    assert constant["critical_batch"] == 64 and constant["b_noise_crossing"] == pytest.approx(1.2 * 32)


def test_an_optimum_on_an_edge_of_the_grid_is_a_bound_and_left_out_of_the_slope():
    top = int(np.argmin(np.abs(np.array(HALF_OCTAVES) - 0.01 * 2**2.5)))  # the best LR at B=1024
    w = exact_world(lrs=lambda b: HALF_OCTAVES[:top] if b == 1024 else HALF_OCTAVES)
    table = study(w).per_batch.set_index("batch_size")
    assert table.loc[1024, "at_upper_edge"] and table.loc[1024, "bound"] == "at least"
    assert table.loc[1024, "lr"] == pytest.approx(HALF_OCTAVES[top - 1])
    assert table["slope"].iloc[0] == pytest.approx(0.5) and table.loc[1024, "slope_points"] == 5
    low = exact_world(lrs=lambda b: [lr for lr in HALF_OCTAVES if lr >= 0.02] if b == 32 else HALF_OCTAVES)
    first = study(low).per_batch.iloc[0]
    assert first["at_lower_edge"] and first["bound"] == "at most" and first["lr"] == pytest.approx(0.02)


def test_the_noise_probe_prediction_comes_from_the_tuned_runs_when_they_were_probed():
    rows = [
        {"rule": rule, "batch_size": b, "seed": s, "weights": "best", "b_simple": value * (1 + 0.1 * s)}
        for rule, value in (("linear", 100.0), ("none", 900.0))
        for b in (32, 64)
        for s in range(3)
    ]
    noise = pd.DataFrame(rows)
    row = study(exact_world(), noise).critical.iloc[0]
    assert (row["b_simple"], row["b_simple_rule"], row["b_simple_batch_size"], row["b_simple_seeds"]) == (
        pytest.approx(110.0),
        "linear",
        32,
        3,
    )
    assert row["b_simple_crossing"] == pytest.approx(1.2 * 32 + 0.2 * 110)
    tuned = pd.concat([noise, noise[noise["rule"] == "none"].assign(rule="tuned")])
    assert study(exact_world(), tuned).critical.iloc[0]["b_simple_rule"] == "tuned"


def test_the_agreement_rule():
    sizes = np.array([32, 64, 128, 256])
    assert tuned_analysis.measured_range(stats.Estimate(128, 64, 128), sizes) == (32, 128)
    assert tuned_analysis.measured_range(stats.Estimate(math.inf, 256, math.inf), sizes) == (128, math.inf)
    assert tuned_analysis.agrees(100.0, 32, 128) is True and tuned_analysis.agrees(128.0, 32, 128) is False
    assert tuned_analysis.agrees(5000.0, 128, math.inf) is True
    assert tuned_analysis.agrees(math.nan, 32, 128) is pd.NA
    assert tuned_analysis.predicted_crossing(500.0, 10.0) == pytest.approx(112.0)


def test_a_sweep_where_every_run_diverged_has_no_rows():
    w = exact_world(diverge_above=0.0)
    done = study(w)
    assert done.seeds == 0 and done.per_batch.empty and done.critical.empty
    assert list(done.per_batch.columns) == tuned_analysis.TUNED_LR_COLUMNS


def test_the_claims_command_writes_the_tuned_tables_always(tmp_path):
    """`batchscale claims` reads tuning.csv and noise.csv beside runs.csv and writes tuned_lr.csv and
    critical_batch.csv: header only when tuning.csv is missing, with rows when it holds a sweep."""
    tables, _ = write_tables(tmp_path, small_params(), tuned=True)
    command = ["claims", "--tables", str(tables), "--out", str(tmp_path / "claims.csv"),
               "--metrics", str(tmp_path / "metrics.json")]  # fmt: skip
    assert cli.main(command) == 0
    assert (
        len(pd.read_csv(tables / "tuned_lr.csv")) == 2
        and len(pd.read_csv(tables / "critical_batch.csv")) == 1
    )
    assert list(pd.read_csv(tmp_path / "claims.csv")["claim_id"])[-2:] == ["C7-tuned", "C8-tuned"]
    (tables / "tuning.csv").unlink()
    assert cli.main(command) == 0
    assert pd.read_csv(tables / "tuned_lr.csv").empty and pd.read_csv(tables / "critical_batch.csv").empty
    assert len(pd.read_csv(tmp_path / "claims.csv")) == 12
