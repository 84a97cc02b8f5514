"""Aggregation of runs and probes into the tables the claims are decided on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from batchscale import aggregate


def test_slice_rise_is_the_mean_rise_over_the_slice():
    alphas = np.linspace(-1, 1, 5)
    slices = pd.DataFrame(
        {"rule": "none", "batch_size": 32, "seed": 0, "alpha": alphas, "train_loss": 1.0 + 2.0 * alphas**2}
    )
    rise = aggregate.slice_rise(slices)
    # mean of 2 * alpha^2 over alpha in {-1, -0.5, 0, 0.5, 1} = 2 * (1 + 0.25 + 0 + 0.25 + 1) / 5
    assert rise["slice_rise"].item() == pytest.approx(1.0)


def test_probe_summaries_put_best_and_final_side_by_side():
    sharpness = pd.DataFrame(
        [
            {
                "rule": "none",
                "batch_size": 32,
                "seed": 0,
                "weights": w,
                "top_eigenvalue": e,
                "eps_sharpness": s,
            }
            for w, e, s in (("best", 1.0, 0.1), ("final", 2.0, 0.2))
        ]
    )
    slices = pd.DataFrame(
        {
            "rule": "none",
            "batch_size": 32,
            "seed": 0,
            "alpha": [-1.0, 0.0, 1.0],
            "train_loss": [2.0, 1.0, 2.0],
        }
    )
    row = aggregate.probe_summaries(sharpness, slices).iloc[0]
    assert (row["top_eigenvalue_best"], row["top_eigenvalue_final"]) == (1.0, 2.0)
    assert (row["eps_sharpness_best"], row["eps_sharpness_final"]) == (0.1, 0.2)
    assert row["slice_rise"] == pytest.approx(2 / 3)
