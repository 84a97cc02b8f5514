"""Aggregation of runs and probes into the tables the claims are decided on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from batchscale import aggregate


def test_slice_curvature_of_a_parabola_is_its_second_derivative():
    alphas = np.linspace(-1, 1, 21)
    slices = pd.DataFrame(
        {"rule": "none", "batch_size": 32, "seed": 0, "alpha": alphas, "train_loss": 1.0 + 2.0 * alphas**2}
    )
    curvature = aggregate.slice_curvature(slices)
    assert curvature["slice_curvature"].item() == pytest.approx(4.0)  # d2/da2 of 1 + 2 a^2


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
    assert row["slice_curvature"] == pytest.approx(2.0)  # (2 + 2 - 2) / 1
