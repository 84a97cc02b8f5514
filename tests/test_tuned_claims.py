"""C7-tuned and C8-tuned on tuned sweeps whose answer is known (`synthetic_study.TunedWorld`):
the gap that remains at the tuned LRs, the share of the tuned gain the linear rule gets, what
an optimum on an edge of the LR grid does to each verdict, and nothing new without a sweep."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from batchscale import claims, stats, tuned_analysis, tuning
from batchscale.config import validate

from synthetic_study import TunedWorld, small_params, write_tables

PARAMS = validate({"stats": {"bootstrap": 500}})
SIZES = (32, 128, 512)  # the largest is 16 times the base batch size: 4 octaves of linear scaling


def around_best(world_best, down: int = 2, up: int = 2):
    """An LR grid of octaves around the true best LR (interior unless `up` or `down` is 0)."""
    return lambda b: [world_best(b) * 2.0**k for k in range(-down, up + 1)]


def world(gap: float = 0.05, exponent: float = 0.5, edge_at_largest: bool = False, **extra) -> TunedWorld:
    """A sweep whose tuned test loss rises by `gap` (relative) from the smallest batch size to
    the largest, and whose best LR grows as B^exponent from the base LR."""

    def best(b: int) -> float:
        return 0.01 * (b / 32) ** exponent

    def grid(b: int) -> list[float]:
        return around_best(best, up=0 if edge_at_largest and b == SIZES[-1] else 2)(b)

    def floor(b: int) -> float:
        return 0.5 * (1 + gap * math.log2(b / 32) / math.log2(SIZES[-1] / 32))

    return TunedWorld(sizes=SIZES, best_lr=best, lrs=grid, floor=floor, **extra)


def decided(w: TunedWorld, params: dict = PARAMS) -> tuple[pd.DataFrame, tuned_analysis.TunedAnalysis]:
    """The sweep's study and its two claims' rows, by claim id."""
    study = tuned_analysis.analyse(w.sweep(), w.fixed_runs(), pd.DataFrame(), params)
    rows = pd.DataFrame(tuned_claim_rows(study, params)).set_index("claim_id")
    return rows, study


def tuned_claim_rows(study, params):
    from batchscale.tuned_claims import decide_tuned

    return decide_tuned(study, claims.Settings.from_params(params), params["train"]["base_batch_size"])


# C8-tuned


@pytest.mark.parametrize(
    ("gap", "verdict"),
    [(0.3, stats.NOT_REPRODUCED), (0.05, stats.REPRODUCED), (-0.2, stats.NOT_REPRODUCED)],
)
def test_the_gap_at_the_tuned_lrs_is_decided_by_where_its_interval_lies(gap, verdict):
    rows, study = decided(world(gap))
    c8 = rows.loc["C8-tuned"]
    assert c8["observed"] == pytest.approx(gap, abs=0.01)
    assert c8["ci_low"] < c8["observed"] < c8["ci_high"] and c8["n_seeds"] == 8
    assert c8["verdict"] == verdict, c8["summary"]
    assert "test split" in c8["metric"] and "chosen on the validation split" in c8["metric"]
    assert "at most" not in c8["summary"] and "at least" not in c8["summary"]  # interior optima


def test_no_gap_with_a_tight_interval_is_an_answer_with_its_bound():
    rows, study = decided(world(gap=0.0, seed_sd=0.002, run_sd=0.001))
    c8 = rows.loc["C8-tuned"]
    assert c8["verdict"] == stats.NO_GAP
    assert c8["ci_low"] < 0 < c8["ci_high"] < claims.SMALL_GAP
    # X is the upper end of the selection-aware interval, as the pandas bootstrap computes it.
    w = world(gap=0.0, seed_sd=0.002, run_sd=0.001)

    def gap(chosen):
        losses = chosen.set_index("batch_size")["test_loss"]
        return losses.iloc[-1] / losses.iloc[0] - 1

    slow = tuning.selection_aware_bootstrap(
        w.sweep(), gap, 500, 0.95, PARAMS["stats"]["seed"], carry=("test_loss",)
    )
    assert c8["ci_high"] == pytest.approx(slow.ci_high) and c8["observed"] == pytest.approx(slow.value)
    assert f"the gap is at most {slow.ci_high:.3g}" in c8["summary"]
    # metrics.json counts the new verdict beside the others.
    table = pd.DataFrame(tuned_claim_rows(study, PARAMS), columns=claims.COLUMNS)
    metrics = claims.headline_metrics(table, w.fixed_runs())
    assert metrics["verdicts"]["no_gap_detectable"] == 1
    assert metrics["claims"]["C8-tuned"]["ci_high"] == pytest.approx(slow.ci_high)


def test_an_optimum_on_the_upper_edge_at_the_largest_batch_makes_the_gap_a_bound():
    """The largest batch's best LR is the largest tried: its loss may be lower at a larger LR, so
    the measured gap is only an upper bound; 'wholly above the small bound' no longer follows."""
    rows, study = decided(world(gap=0.3, edge_at_largest=True))
    largest = study.per_batch.iloc[-1]
    assert largest["at_upper_edge"] and largest["bound"] == "at least"
    c8 = rows.loc["C8-tuned"]
    assert c8["ci_low"] > claims.SMALL_GAP  # interior, it would be 'not reproduced'
    assert c8["verdict"] == stats.INCONCLUSIVE, c8["summary"]
    assert f"LR at least {largest['lr']:.3g}" in c8["summary"] and "statistic is at most" in c8["summary"]
    # A gap wholly below 0 stays 'not reproduced': the true gap is lower still.
    below, _ = decided(world(gap=-0.2, edge_at_largest=True))
    assert below.loc["C8-tuned", "verdict"] == stats.NOT_REPRODUCED


def test_an_edge_at_the_smallest_batch_bounds_the_gap_from_below():
    """The smallest batch's best LR below its grid: its loss is an upper bound, the gap a lower
    bound; a gap wholly above SMALL_GAP stands, a slight one does not."""

    def shifted(gap):
        w = world(gap)
        best = w.best_lr
        return TunedWorld(**{**w.__dict__, "lrs": lambda b: around_best(best, down=0 if b == 32 else 2)(b)})

    rows, study = decided(shifted(0.05))
    assert study.per_batch.iloc[0]["bound"] == "at most"
    assert rows.loc["C8-tuned", "verdict"] == stats.INCONCLUSIVE
    assert "statistic is at least" in rows.loc["C8-tuned", "summary"]
    assert decided(shifted(0.3))[0].loc["C8-tuned", "verdict"] == stats.NOT_REPRODUCED


# C7-tuned


@pytest.mark.parametrize(
    ("exponent", "fraction", "verdict"),
    # At B=512 the constant LR is 4 octaves below the linear rule's. With the best LR a octaves
    # above the constant one, tuning gains c a^2 over it and the linear rule c (a^2 - (4 - a)^2).
    [(0.75, 1 - (1 / 3) ** 2, stats.REPRODUCED), (0.5, 0.0, stats.NOT_REPRODUCED)],
)
def test_the_linear_rules_share_of_the_tuned_gain(exponent, fraction, verdict):
    rows, study = decided(world(exponent=exponent))
    c7 = rows.loc["C7-tuned"]
    assert c7["observed"] == pytest.approx(fraction, abs=0.05)
    assert c7["verdict"] == verdict, c7["summary"]
    assert c7["unit"] == "seeds" and c7["n_seeds"] == 8 and "test split" in c7["metric"]
    largest = study.per_batch.iloc[-1]
    by_hand = (largest["none_test_loss"] - largest["linear_test_loss"]) / (
        largest["none_test_loss"] - largest["test_loss"]
    )
    assert c7["observed"] == pytest.approx(by_hand)
    assert "B=32: – (base batch size, nothing scaled)" in c7["summary"]
    assert f"B=128: {study.per_batch.iloc[1]['linear_fraction']:.3g}" in c7["summary"]


def test_without_a_tuned_gain_the_share_is_undefined():
    """The best LR is the base LR everywhere: the tuned runs are the constant-LR runs."""
    rows, study = decided(world(exponent=0.0))
    c7 = rows.loc["C7-tuned"]
    assert math.isnan(c7["observed"]) and c7["verdict"] == stats.INCONCLUSIVE
    assert "Tuning does not improve on the constant LR" in c7["summary"]


def test_an_edge_optimum_at_the_largest_batch_makes_the_share_an_upper_bound():
    rows, _ = decided(world(exponent=0.75, edge_at_largest=True))
    c7 = rows.loc["C7-tuned"]
    assert c7["ci_low"] > claims.MOST_OF_GAP and c7["verdict"] == stats.INCONCLUSIVE, c7["summary"]
    assert "statistic is at most" in c7["summary"]
    below, _ = decided(world(exponent=0.5, edge_at_largest=True))
    assert below.loc["C7-tuned", "verdict"] == stats.NOT_REPRODUCED


def test_too_few_seeds_are_inconclusive_and_missing_fixed_rules_untested():
    rows, _ = decided(world(gap=0.3, seeds=(0, 1)))
    assert rows.loc["C8-tuned", "verdict"] == stats.INCONCLUSIVE
    assert "needs at least 3 seeds" in rows.loc["C8-tuned", "summary"]
    w = world()
    study = tuned_analysis.analyse(w.sweep(), w.fixed_runs(("none",)), pd.DataFrame(), PARAMS)
    c7 = pd.DataFrame(tuned_claim_rows(study, PARAMS)).set_index("claim_id").loc["C7-tuned"]
    assert c7["verdict"] == stats.NOT_TESTED and "'linear'" in c7["summary"]


# claims.csv


def test_the_tuned_rows_follow_c12_and_nothing_changes_without_a_sweep(tmp_path):
    params = small_params()
    tables, claims_csv = write_tables(tmp_path / "plain", params)
    runs, timing = pd.read_csv(tables / "runs.csv"), pd.read_csv(tables / "timing.csv")
    plain = pd.read_csv(claims_csv)
    assert list(plain["claim_id"]) == [f"C{i}" for i in range(1, 13)]
    assert tuned_analysis.analyse(pd.DataFrame(), runs, pd.DataFrame(), params) is None
    assert tuned_analysis.from_tables(tables, runs, params) is None  # header-only tuning.csv or none
    pd.testing.assert_frame_equal(
        claims.decide_all(runs, timing, params, None), claims.decide_all(runs, timing, params)
    )
    for name, columns in (
        ("tuned_lr", tuned_analysis.TUNED_LR_COLUMNS),
        ("critical_batch", tuned_analysis.CRITICAL_COLUMNS),
    ):
        text = (tables / f"{name}.csv").read_text()
        assert text.strip() == ",".join(columns)  # header only, for the workflow to declare

    tables, claims_csv = write_tables(tmp_path / "tuned", params, tuned=True)
    both = pd.read_csv(claims_csv)
    assert list(both["claim_id"]) == [*plain["claim_id"], "C7-tuned", "C8-tuned"]
    assert list(both.columns) == claims.COLUMNS
    numbers = ["observed", "ci_low", "ci_high", "n_seeds", "verdict"]
    pd.testing.assert_frame_equal(both.iloc[:12][numbers], plain[numbers])
    metrics = claims.headline_metrics(both, pd.read_csv(tables / "runs.csv"))
    assert {"C7-tuned", "C8-tuned"} <= set(metrics["claims"])
