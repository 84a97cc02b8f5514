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


def test_steps_to_target_counts_optimizer_steps_to_the_first_epoch_below_target():
    history = pd.DataFrame(
        [
            {"rule": "linear", "batch_size": b, "seed": 0, "epoch": e, "val_loss": loss}
            for b, losses in ((32, [2.0, 1.0, 0.5, 0.6]), (64, [2.0, 1.5, 1.0, 0.95]))
            for e, loss in enumerate(losses)
        ]
    )
    runs = pd.DataFrame(
        [{"rule": "linear", "batch_size": 32, "seed": 0, "min_val_loss": 0.5},
         {"rule": "linear", "batch_size": 64, "seed": 0, "min_val_loss": 0.95}]
    )  # fmt: skip
    out = aggregate.add_steps_to_target(runs, history, num_train=640).set_index("batch_size")
    assert out["target_val_loss"].iloc[0] == pytest.approx(0.95 * 1.05)
    # target 0.9975: B=32 reaches it at epoch 2 (epoch 1 is 1.0, just above), 2 epochs x 20 steps
    assert out.loc[32, "steps_to_target"] == 40
    assert out.loc[64, "steps_to_target"] == 3 * 10  # loss 0.95 at epoch 3, 10 steps per epoch
