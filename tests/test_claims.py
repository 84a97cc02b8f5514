"""Claim verdicts computed from synthetic measurements whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from batchscale import claims
from batchscale.config import validate

SIZES = (32, 64, 128, 256)


def synthetic_runs(direction: float = 1.0, seeds: int = 6, rules=("none", "linear"), noise: float = 0.003):
    """An article-like world (direction=+1): bigger batches are worse unscaled, scaling
    closes 86% of the gap; direction=-1 flips every batch-size effect."""
    rng = np.random.default_rng(0)
    rows = []
    for rule in rules:
        for b in SIZES:
            k = np.log2(b / 32) / 3  # 0 at B=32, 1 at B=256
            for seed in range(seeds):
                unscaled = 0.345 + direction * 0.05 * k
                loss = unscaled if rule == "none" else 0.345 + direction * 0.007 * k
                epochs_to_min = 10 * (8 if rule == "none" else 1.2) ** (direction * k)
                seconds_per_epoch = 4 ** (-direction * k)
                rows.append(
                    {
                        "rule": rule, "batch_size": b, "seed": seed,
                        "min_val_loss": loss + noise * rng.normal(),
                        "best_epoch": round(epochs_to_min + rng.normal()),
                        "train_loss_auc": 0.5 + direction * 0.2 * k + 0.01 * rng.normal(),
                        "dist_final": 10 - direction * 5 * k + 0.1 * rng.normal(),
                        "time_to_min_s": (epochs_to_min + rng.normal()) * seconds_per_epoch,
                        "min_passed": True,
                        "top_eigenvalue_best": 5 * 4 ** (direction * k) + 0.1 * rng.normal(),
                        "eps_sharpness_best": 2 * 3 ** (direction * k) + 0.05 * rng.normal(),
                        "mean_update_norm": 1.0 - direction * 0.5 * k + 0.01 * rng.normal(),
                        "grad_competition": 0.5 - direction * 0.3 * k + 0.01 * rng.normal(),
                        "slice_curvature": 0.1 * 5 ** (direction * k) + 0.005 * rng.normal(),
                    }
                )  # fmt: skip
    return pd.DataFrame(rows)


def synthetic_timing(direction: float = 1.0, repeats: int = 5):
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        [
            {
                "batch_size": b,
                "threads": threads,
                "repeat": r,
                # all threads help more at larger batches (direction=+1): speed-up 1 + log2(B/32)/3
                "epoch_seconds": (1 - direction * 0.002 * b)
                / (1 + (threads - 1) * (1 + direction * np.log2(b / 32) / 3) / 2)
                + 0.001 * rng.random(),
            }
            for b in SIZES
            for threads in (1, 2)
            for r in range(repeats)
        ]
    )


PARAMS = validate({"stats": {"bootstrap": 300}})


def verdicts(table: pd.DataFrame) -> dict[str, str]:
    return dict(zip(table["claim_id"], table["verdict"], strict=True))


def test_article_like_data_reproduces_every_measured_claim():
    table = claims.decide_all(synthetic_runs(+1), synthetic_timing(+1), PARAMS)
    assert list(table.columns[:9]) == [
        "claim_id", "claim", "metric", "expected", "observed", "ci_low", "ci_high", "n_seeds", "verdict",
    ]  # fmt: skip
    assert list(table["claim_id"]) == [f"C{i}" for i in range(1, 13)]
    v = verdicts(table)
    for claim_id, verdict in v.items():
        assert verdict == "reproduced", (claim_id, table.set_index("claim_id").loc[claim_id, "summary"])
    c7 = table.set_index("claim_id").loc["C7"]
    assert c7["observed"] == pytest.approx(0.86, abs=0.05)
    assert c7["ci_low"] <= c7["observed"] <= c7["ci_high"]


def test_opposite_data_is_not_reproduced():
    v = verdicts(claims.decide_all(synthetic_runs(-1), synthetic_timing(-1), PARAMS))
    for claim_id in ("C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9", "C10", "C11", "C12"):
        assert v[claim_id] == "not reproduced", claim_id
    assert v["C7"] == "inconclusive"  # no unscaled gap: nothing to close


def test_too_few_seeds_is_inconclusive():
    v = verdicts(claims.decide_all(synthetic_runs(+1, seeds=2), synthetic_timing(+1), PARAMS))
    for claim_id in ("C1", "C2", "C4", "C6", "C7", "C8", "C9"):
        assert v[claim_id] == "inconclusive", claim_id


def test_pure_noise_is_not_called_reproduced():
    runs = synthetic_runs(0.0, noise=0.05)
    v = verdicts(claims.decide_all(runs, synthetic_timing(0.0), PARAMS))
    assert v["C2"] != "reproduced"


def test_claims_needing_the_linear_rule_are_not_tested_without_it():
    v = verdicts(claims.decide_all(synthetic_runs(+1, rules=("none",)), synthetic_timing(+1), PARAMS))
    assert v["C7"] == v["C8"] == v["C9"] == "not tested"
    assert v["C2"] == "reproduced"


def test_article_comparison_and_metrics():
    runs = synthetic_runs(+1)
    comparison = claims.article_comparison(runs, claims.Settings.from_params(PARAMS))
    assert list(comparison["article"][:3]) == [0.345, 0.395, 0.352]
    assert comparison["ours"].iloc[1] == pytest.approx(0.395, abs=0.005)
    metrics = claims.headline_metrics(claims.decide_all(runs, synthetic_timing(), PARAMS), runs)
    assert metrics["verdicts"]["reproduced"] == 12
    assert metrics["min_val_loss"]["none_bs256"] == pytest.approx(0.395, abs=0.005)


def test_probe_claims_are_not_tested_without_probe_measurements():
    runs = synthetic_runs(+1).drop(columns=["top_eigenvalue_best", "eps_sharpness_best", "slice_curvature"])
    timing = synthetic_timing(+1)
    v = verdicts(claims.decide_all(runs, timing[timing["threads"] == 1], PARAMS))
    assert v["C5"] == v["C12"] == v["C11"] == "not tested"
    assert v["C10"] == "reproduced"


def test_a_claim_with_two_parts_fails_when_one_part_fails():
    runs = synthetic_runs(+1)
    runs["eps_sharpness_best"] = runs["eps_sharpness_best"].max() - runs["eps_sharpness_best"]  # reversed
    table = claims.decide_all(runs, synthetic_timing(+1), PARAMS).set_index("claim_id")
    assert table.loc["C5", "verdict"] == "not reproduced"
    # Every part's statistic is in the row, not just the first part's (which still holds).
    hessian, epsilon = table.loc["C5", "parts"].split(" | ")
    assert hessian.endswith("(reproduced)") and epsilon.endswith("(not reproduced)")
    assert "none: " in table.loc["C9", "parts"] and "linear: " in table.loc["C9", "parts"]
    assert table.loc["C2", "parts"] == ""  # one statistic: no parts


def test_the_claims_table_shows_every_part_of_a_compound_claim():
    from batchscale import report_html

    table = claims.decide_all(synthetic_runs(+1), synthetic_timing(+1), PARAMS)
    html = report_html.claims_table(table, 0.95)
    c5 = html[html.index('href="#C5"') : html.index('href="#C6"')]
    assert c5.count("(reproduced)") == 2 and "<br>" in c5


def test_claims_that_rest_on_diverged_runs_say_so():
    runs = synthetic_runs(+1)
    runs["diverged_epoch"] = -1
    blown = (runs["rule"] == "linear") & (runs["batch_size"] == 256) & (runs["seed"] == 0)
    runs.loc[blown, "diverged_epoch"] = 3
    runs.loc[blown, "min_val_loss"] = float("nan")
    table = claims.decide_all(runs, synthetic_timing(+1), PARAMS).set_index("claim_id")
    for claim_id in ("C7", "C8", "C9"):
        assert "1 diverged runs (linear/bs256) are left out" in table.loc[claim_id, "summary"]
    assert "diverged" not in table.loc["C2", "summary"]  # C2 uses the constant-LR runs only


NUMBERS = ["claim_id", "observed", "ci_low", "ci_high", "n_seeds", "verdict", *claims.PART_COLUMNS]


def test_a_diverged_run_leaves_its_seed_out_of_every_claim_under_its_rule():
    """runs.csv has NaN statistics for a diverged run: every claim comes out as if that seed
    had not been run under that rule (C7-C9 pair linear/bs256 with the other cells by seed)."""
    runs = synthetic_runs(+1)
    runs["diverged_epoch"] = -1
    blown = (runs["rule"] == "linear") & (runs["batch_size"] == 256) & (runs["seed"] == 0)
    statistics = [c for c in runs.columns if c not in ("rule", "batch_size", "seed", "diverged_epoch")]
    runs.loc[blown, "diverged_epoch"] = 3
    runs = runs.astype({"min_passed": object})
    runs.loc[blown, statistics] = np.nan
    got = claims.decide_all(runs, synthetic_timing(+1), PARAMS)
    unblown = runs[~((runs["rule"] == "linear") & (runs["seed"] == 0))]
    without = claims.decide_all(unblown, synthetic_timing(+1), PARAMS)
    pd.testing.assert_frame_equal(got[NUMBERS], without[NUMBERS])
    got = got.set_index("claim_id")
    assert got.loc["C7", "n_seeds"] == got.loc["C9", "part2_n_seeds"] == 5
    assert got.loc["C2", "n_seeds"] == got.loc["C9", "part1_n_seeds"] == 6  # the 'none' runs keep seed 0


def test_seeds_without_a_value_at_every_batch_size_do_not_count_toward_min_seeds():
    """Four seeds of which two lack B=256 (diverged): two enter the statistic, fewer than
    stats.min_seeds (3), so the claim is inconclusive and says how many entered."""
    runs = synthetic_runs(+1, seeds=4)
    runs.loc[(runs["batch_size"] == 256) & (runs["seed"] < 2), "min_val_loss"] = np.nan
    c2 = claims.decide_all(runs, synthetic_timing(+1), PARAMS).set_index("claim_id").loc["C2"]
    assert c2["n_seeds"] == 2
    assert c2["verdict"] == "inconclusive"
    assert "needs at least 3 seeds entering the statistic, has 2" in c2["summary"]
    assert "mean over the 2 seeds" in c2["summary"]
    full = claims.decide_all(synthetic_runs(+1, seeds=4), synthetic_timing(+1), PARAMS).set_index("claim_id")
    assert (full.loc["C2", "n_seeds"], full.loc["C2", "verdict"]) == (4, "reproduced")


def test_every_part_of_a_multi_part_claim_is_exposed_by_name():
    """C9's row holds its first part (unscaled) in observed/ci, like C5 and C10; each part's
    statistic, CI, seeds and verdict are in part<k>_* named by part<k>, and in metrics.json
    under claims.<id>.parts.<name>."""
    runs = synthetic_runs(+1)  # unscaled: rho(B, time) = +1; scaled: -1
    table = claims.decide_all(runs, synthetic_timing(+1), PARAMS)
    c9 = table.set_index("claim_id").loc["C9"]
    assert (c9["part1"], c9["part2"]) == ("none", "linear")
    assert c9["observed"] == c9["part1_observed"] > 0 > c9["part2_observed"]
    assert (c9["ci_low"], c9["ci_high"], c9["n_seeds"]) == (c9["part1_ci_low"], c9["part1_ci_high"],
                                                            c9["part1_n_seeds"])  # fmt: skip
    assert "first part" in c9["rule"]
    parts = table.set_index("claim_id")[["part1", "part2"]]
    assert tuple(parts.loc["C5"]) == ("top_eigenvalue_best", "eps_sharpness_best")
    assert tuple(parts.loc["C10"]) == ("mean_update_norm", "grad_competition")
    assert tuple(parts.loc["C2"]) == tuple(parts.loc["C12"]) == ("", "")  # one statistic: no parts

    metrics = claims.headline_metrics(table, runs)["claims"]
    none, linear = metrics["C9"]["parts"]["none"], metrics["C9"]["parts"]["linear"]
    assert metrics["C9"]["observed"] == none["observed"] == pytest.approx(c9["part1_observed"])
    assert linear["observed"] == pytest.approx(c9["part2_observed"]) and linear["ci_high"] < 0
    assert (none["verdict"], linear["verdict"], linear["reproduced"], linear["n_seeds"]) == (
        "reproduced", "reproduced", 1, 6)  # fmt: skip
    assert set(metrics["C5"]["parts"]) == {"top_eigenvalue_best", "eps_sharpness_best"}
    assert "parts" not in metrics["C2"]

    from batchscale import report_html

    runs.loc[runs["rule"] == "linear", "time_to_min_s"] *= runs["batch_size"]  # scaled now slower
    failed = claims.decide_all(runs, synthetic_timing(+1), PARAMS).set_index("claim_id", drop=False)
    c9 = failed.loc["C9"]
    assert (c9["part1_verdict"], c9["part2_verdict"], c9["verdict"]) == ("reproduced", "not reproduced",
                                                                         "not reproduced")  # fmt: skip
    assert claims.headline_metrics(failed, runs)["claims"]["C9"]["parts"]["linear"]["reproduced"] == 0
    header = report_html.claim_header(c9, 0.95)
    assert "none: " in header and "linear: " in header and "6 seeds (not reproduced)" in header


def test_timing_claims_count_repeats_not_seeds():
    from batchscale import report_html

    table = claims.decide_all(synthetic_runs(+1), synthetic_timing(+1, repeats=5), PARAMS)
    by_id = table.set_index("claim_id", drop=False)
    assert dict(zip(table["claim_id"], table["unit"], strict=True)) == {
        f"C{i}": "repeats" if i in (3, 11) else "seeds" for i in range(1, 13)
    }
    for claim_id in ("C3", "C11"):
        c = by_id.loc[claim_id]
        assert c["n_seeds"] == 5 and "over 5 timing repeats" in c["summary"]
        assert "bootstrap CI over repeats" in c["rule"] and "over seeds" not in c["rule"]
        assert "5 repeats" in report_html.claim_header(c, 0.95)
    assert "bootstrap CI over seeds" in by_id.loc["C2", "rule"]
    html = report_html.claims_table(table, 0.95)
    assert html[html.index('href="#C3"') : html.index('href="#C4"')].count(">5 repeats<") == 1
    few = claims.decide_all(synthetic_runs(+1), synthetic_timing(+1, repeats=2), PARAMS).set_index("claim_id")
    assert few.loc["C3", "verdict"] == "inconclusive"
    assert "needs at least 3 repeats entering the statistic, has 2" in few.loc["C3", "summary"]


def test_every_claim_has_exactly_one_spec_and_its_row_says_what_the_spec_does():
    from batchscale.claim_specs import CLAIMS, REPEATS, SEEDS, TIMING, GapSpec, TrendSpec, registry

    assert list(CLAIMS) == [f"C{i}" for i in range(1, 13)]
    assert all(claim_id == spec.claim_id for claim_id, spec in CLAIMS.items())
    with pytest.raises(ValueError, match="more than one spec"):
        registry(CLAIMS["C1"], CLAIMS["C2"], CLAIMS["C1"])
    table = claims.decide_all(synthetic_runs(+1), synthetic_timing(+1), PARAMS).set_index("claim_id")
    for claim_id, spec in CLAIMS.items():
        row = table.loc[claim_id]
        assert (row["claim"], row["metric"], row["expected"]) == (spec.text, spec.metric, spec.expected_text)
        assert claims.CLAIM_TEXT[claim_id] == spec.text
        assert claims.RUN_CLAIM_RULES.get(claim_id, ()) == spec.rules
        if isinstance(spec, GapSpec):
            assert (row["unit"], row["part1"], row["part2"]) == (SEEDS, "", "")
            assert spec.rules == ("none", "linear")
            continue
        assert isinstance(spec, TrendSpec)
        assert row["unit"] == spec.unit == (REPEATS if spec.table == TIMING else SEEDS)
        assert spec.rules == (
            () if spec.table == TIMING else tuple(dict.fromkeys(p.rule for p in spec.parts))
        )
        names = [part.name for part in spec.parts] if len(spec.parts) > 1 else []
        assert [row["part1"], row["part2"]] == names + [""] * (2 - len(names)), claim_id
        if names:  # the first part's numbers are the claim's
            assert (row["observed"], row["n_seeds"]) == (row["part1_observed"], row["part1_n_seeds"])


def test_the_articles_numbers_are_the_specs():
    from batchscale.claim_specs import ARTICLE_MIN_VAL_LOSS, CLAIMS

    assert (CLAIMS["C7"].article_value, CLAIMS["C8"].article_value) == (0.86, 0.026)
    comparison = claims.article_comparison(synthetic_runs(+1), claims.Settings.from_params(PARAMS))
    gaps = [CLAIMS["C7"].article_value, CLAIMS["C8"].article_value]
    assert list(comparison["article"]) == [*ARTICLE_MIN_VAL_LOSS.values(), *gaps]
    table = claims.decide_all(synthetic_runs(+1), synthetic_timing(+1), PARAMS).set_index("claim_id")
    assert table.loc["C7", "article"] == "0.86 (0.395 -> 0.352 vs 0.345)"
    assert "(article: 0.026)" in table.loc["C8", "summary"]


def test_a_new_claim_is_one_spec_entry_decided_by_the_same_function(monkeypatch):
    """A throwaway C13 (C2's trend plus a made-up metric) and C14 (C8 with a looser bound) need
    no code: decide_all decides them by the one path, notes included."""
    from dataclasses import replace

    from batchscale.claim_specs import CLAIMS, Part, TrendSpec

    runs = synthetic_runs(+1)
    runs["made_up"] = -runs["batch_size"] + np.random.default_rng(2).normal(size=len(runs))
    runs["diverged_epoch"] = np.where(
        (runs["rule"] == "none") & (runs["batch_size"] == 64) & (runs["seed"] == 5), 2, -1
    )
    c13 = TrendSpec(
        "C13", "The larger the batch, the higher the minimum validation loss and the lower a made-up metric.",
        parts=(Part("min_val_loss", "minimum validation loss", +1), Part("made_up", "a made-up metric", -1)),
    )  # fmt: skip
    monkeypatch.setitem(CLAIMS, "C13", c13)
    monkeypatch.setitem(CLAIMS, "C14", replace(CLAIMS["C8"], claim_id="C14", upper=0.5))
    decided = []
    for name in ("decide_trend", "decide_gap"):
        real = getattr(claims, name)
        spy = lambda spec, *args, real=real: decided.append(spec.claim_id) or real(spec, *args)  # noqa: E731
        monkeypatch.setattr(claims, name, spy)

    table = claims.decide_all(runs, synthetic_timing(+1), PARAMS).set_index("claim_id")
    assert list(table.index) == decided == [f"C{i}" for i in range(1, 15)]
    c2, c13, c14 = table.loc["C2"], table.loc["C13"], table.loc["C14"]
    assert (c13["verdict"], c13["part1"], c13["part2"]) == ("reproduced", "min_val_loss", "made_up")
    assert c13["metric"] == (
        "mean Spearman rho(batch size, minimum validation loss | a made-up metric), LR rule 'none'"
    )
    assert (c13["observed"], c13["ci_low"], c13["n_seeds"]) == (c2["observed"], c2["ci_low"], c2["n_seeds"])
    note = " 1 diverged runs (none/bs64) are left out"
    assert note in c2["summary"] and note in c13["summary"]
    assert (c14["expected"], c14["verdict"]) == ("> 0 and < 0.5", "reproduced")
    assert c14["observed"] == table.loc["C8", "observed"] and "wholly above 0.5" in c14["rule"]
    comparison = claims.article_comparison(runs, claims.Settings.from_params(PARAMS))
    assert list(comparison["quantity"])[-2:] == ["relative gap remaining, scaled LR"] * 2


def test_the_unpassed_minimum_note_counts_only_runs_the_claim_rests_on():
    """C4 is decided on the `none` runs: its note that some runs' epoch of the minimum is cut
    off by the budget names those runs, not a `linear` run that C4 never looks at."""
    params = validate({"train": {"seeds": list(range(6))}})
    runs = synthetic_runs()
    runs.loc[(runs["rule"] == "linear") & (runs["batch_size"] == 256), "min_passed"] = False
    c4 = claims.decide_all(runs, synthetic_timing(), params).set_index("claim_id").loc["C4"]
    assert "had not passed their minimum" not in c4["summary"]
    runs.loc[(runs["rule"] == "none") & (runs["batch_size"] == 64) & (runs["seed"] < 2), "min_passed"] = False
    c4 = claims.decide_all(runs, synthetic_timing(), params).set_index("claim_id").loc["C4"]
    assert " 2 runs (none/bs64) had not passed their minimum" in c4["summary"], c4["summary"]


def test_c11_says_so_when_no_batch_size_gains_from_threads():
    """A speed-up that rises with batch size but stays below 1 everywhere reproduces C11's trend;
    the summary must then say that no batch size ran faster on all threads."""
    gains = claims.decide_all(synthetic_runs(), synthetic_timing(), PARAMS).set_index("claim_id").loc["C11"]
    assert gains["verdict"] == "reproduced" and "No batch size ran faster" not in gains["summary"]
    timing = synthetic_timing()
    slower = timing["threads"] > 1
    timing.loc[slower, "epoch_seconds"] *= 10  # the threads cost time, less of it at large batches
    losses = claims.decide_all(synthetic_runs(), timing, PARAMS).set_index("claim_id").loc["C11"]
    assert losses["verdict"] == "reproduced", losses["summary"]
    assert "No batch size ran faster on" in losses["summary"], losses["summary"]
