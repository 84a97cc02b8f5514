"""Bootstrap intervals and verdict rules on data whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from batchscale import stats
from batchscale.stats import Estimate


def table(
    slope: float, noise: float, seeds: int = 6, sizes=(32, 64, 128, 256), seed: int = 0
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {b: 1.0 + slope * np.log2(b / 32) + noise * rng.normal(size=seeds) for b in sizes},
        index=pd.RangeIndex(seeds, name="seed"),
    )


def test_spearman_of_a_monotone_table_is_one_and_minus_one():
    assert stats.spearman_vs_batch(table(0.1, 0.0)) > 0.9
    assert stats.spearman_vs_batch(table(-0.1, 0.0)) < -0.9
    assert np.isnan(stats.spearman_vs_batch(table(0.0, 0.0)))  # constant: undefined, not 0


def test_paired_bootstrap_interval_contains_the_estimate_and_is_reproducible():
    t = table(0.05, 0.05)
    a = stats.paired_bootstrap(t, stats.spearman_vs_batch, 300, 0.95, seed=1)
    b = stats.paired_bootstrap(t, stats.spearman_vs_batch, 300, 0.95, seed=1)
    assert a == b
    assert a.ci_low <= a.value <= a.ci_high


def test_bootstrap_of_a_mean_matches_normal_theory():
    rng = np.random.default_rng(0)
    t = pd.DataFrame({"x": rng.normal(size=400)})
    est = stats.paired_bootstrap(t, lambda d: d["x"].mean(), 2000, 0.95, seed=0)
    half_width = 1.96 / np.sqrt(400)
    assert (est.ci_high - est.ci_low) / 2 == pytest.approx(half_width, rel=0.15)


@pytest.mark.parametrize(
    ("est", "sign", "threshold", "verdict"),
    [
        (Estimate(0.5, 0.2, 0.8), +1, 0.0, stats.REPRODUCED),
        (Estimate(-0.5, -0.8, -0.2), +1, 0.0, stats.NOT_REPRODUCED),
        (Estimate(0.1, -0.2, 0.4), +1, 0.0, stats.INCONCLUSIVE),
        (Estimate(-0.5, -0.8, -0.2), -1, 0.0, stats.REPRODUCED),
        (Estimate(0.7, 0.6, 0.9), +1, 0.5, stats.REPRODUCED),
        (Estimate(0.7, 0.4, 0.9), +1, 0.5, stats.INCONCLUSIVE),
        (Estimate(0.05, 0.01, 0.08), -1, 0.1, stats.REPRODUCED),
        (Estimate(0.1, float("nan"), float("nan")), +1, 0.0, stats.INCONCLUSIVE),
    ],
)
def test_sign_verdict(est, sign, threshold, verdict):
    assert stats.sign_verdict(est, sign, threshold) == verdict


def test_combine_needs_every_part():
    assert stats.combine([stats.REPRODUCED, stats.REPRODUCED]) == stats.REPRODUCED
    assert stats.combine([stats.REPRODUCED, stats.INCONCLUSIVE]) == stats.INCONCLUSIVE
    assert stats.combine([stats.INCONCLUSIVE, stats.NOT_REPRODUCED]) == stats.NOT_REPRODUCED


def test_a_seed_missing_a_batch_size_is_left_out_of_the_trend_and_its_count():
    """A diverged run leaves NaN in its seed's row: that seed has no rho (not one over the
    other batch sizes), and the estimate counts the seeds it rests on."""
    t = table(0.05, 0.05, seeds=6)
    t.iloc[0, 1] = np.nan
    rhos = stats.per_seed_spearman(t)
    assert list(rhos.index) == [1, 2, 3, 4, 5]
    est = stats.rank_trend(t, 300, 0.95, seed=1)
    assert est == stats.rank_trend(t.drop(index=0), 300, 0.95, seed=1)
    assert est.n == 5
    assert stats.rank_trend(table(0.0, 0.0), 300, 0.95, seed=1).n == 0  # constant rows: no rho at all
    assert len(stats.complete_rows(t)) == 5
    # paired_bootstrap resamples every row it is given
    assert stats.paired_bootstrap(t, lambda d: d[32].mean(), 100, 0.95, seed=0).n == 6
