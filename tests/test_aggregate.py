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


def test_jobs_table_has_one_row_per_training_job_with_its_peak_memory(tmp_path):
    import json

    from batchscale.aggregate import read_jobs
    from batchscale.config import Cell
    from batchscale.report_html import jobs_sentence

    # The base batch size's run is shared by both rules: one job, one row.
    cells = [Cell("none", 32, 0.01), Cell("linear", 32, 0.01), Cell("linear", 64, 0.02)]
    for cell, rss in zip(cells[1:], (300.0, 2000.0), strict=True):
        run_dir = tmp_path / cell.run_dir
        run_dir.mkdir(parents=True)
        summary = {"batch_size": cell.batch_size, "lr": cell.lr, "seeds": [0, 1], "device": "cpu",
                   "threads": 1, "train_seconds": 10.0, "peak_rss_mb": rss, "peak_cuda_mb": None,
                   "ensemble": "packed"}  # fmt: skip
        (run_dir / "summary.json").write_text(json.dumps(summary))
    jobs = read_jobs(cells, tmp_path)
    assert list(jobs["run"]) == ["bs32_lr0.01", "bs64_lr0.02"]
    assert list(jobs["peak_rss_mb"]) == [300.0, 2000.0] and list(jobs["members"]) == [2, 2]
    assert list(jobs["ensemble"]) == ["packed", "packed"]
    sentence = jobs_sentence(jobs)
    assert "at most 2,000 MiB" in sentence or "at most 2000 MiB" in sentence
    assert "above the goal" in sentence and "bs64_lr0.02" in sentence


def test_a_run_that_diverged_mid_way_has_no_statistics_at_all():
    """Seed 1 blows up at epoch 3 of 4 after two good epochs: each of its statistics is NaN
    (not the epochs before it), while what identifies it stays; seed 0 is summarised as usual."""
    rows = []
    for seed, diverged_at in ((0, None), (1, 3)):
        for epoch in range(5):
            bad = diverged_at is not None and epoch >= diverged_at
            train, val = (np.nan, np.nan) if bad else (2.0 - 0.3 * epoch, 2.0 - 0.2 * epoch)
            rows.append({"rule": "none", "batch_size": 32, "seed": seed, "epoch": epoch, "lr": 0.1,
                         "train_loss": train, "val_loss": val,
                         "val_acc": 0.5, "dist_from_init": 1.0 + epoch, "update_norm": 0.5,
                         "grad_competition": 0.3, "diverged": bad})  # fmt: skip
    runs = aggregate.run_summaries(pd.DataFrame(rows), pd.Series({32: 2.0})).set_index("seed")
    statistics = [c for c in runs.columns if c not in aggregate.KEPT_WHEN_DIVERGED]
    assert {"min_val_loss", "best_epoch", "train_loss_auc", "dist_final", "grad_competition", "min_passed",
            "time_to_min_s", "mean_update_norm"} <= set(statistics)  # fmt: skip
    assert runs.loc[1, statistics].isna().all(), runs.loc[1]
    assert (runs.loc[1, "diverged_epoch"], runs.loc[1, "epochs"], runs.loc[1, "lr"]) == (3, 4, 0.1)
    assert runs.loc[0, "min_val_loss"] == pytest.approx(1.2) and runs.loc[0, "best_epoch"] == 4
    assert runs.loc[0, statistics].notna().all()
    # The probes' statistics, merged in later, are blanked too.
    probed = runs.reset_index().assign(top_eigenvalue_best=[1.0, 9.0], slice_curvature=[0.1, 0.9])
    blanked = aggregate.leave_out_diverged(probed).set_index("seed")
    assert blanked.loc[1, ["top_eigenvalue_best", "slice_curvature"]].isna().all()
    assert blanked.loc[0, "top_eigenvalue_best"] == 1.0


def _sweep_history(lrs, seeds, losses_of):
    """A job's history.csv: every seed at every LR (its rows carry their LR), epochs 0-3."""
    return pd.DataFrame(
        [{"batch_size": 64, "seed": seed, "epoch": e, "lr": lr, "train_loss": loss, "val_loss": loss,
          "val_acc": 0.5, "dist_from_init": e, "update_norm": 0.1, "grad_competition": 0.2,
          "diverged": not np.isfinite(loss)}
         for lr in lrs for seed in seeds for e, loss in enumerate(losses_of(lr, seed))]
    )  # fmt: skip


def test_the_tuning_table_reads_each_lr_of_a_sweep_job_and_of_a_shared_run(tmp_path):
    """One sweep job trains LRs 0.005 and 0.04 at B=64 (seeds 0, 1); 0.02 is the linear rule's
    own run. Each (LR, seed) is one row with its own minimum, test loss and factor; steps to target
    count to 5% above the worst batch size's best median minimum; a diverged run keeps no statistic."""
    from batchscale.config import Cell

    losses = {0.005: [2.0, 1.8, 1.6, 1.5], 0.02: [2.0, 1.2, 1.0, 1.1], 0.04: [2.0, 1.1, np.nan, np.nan]}
    job = Cell("tuned", 64, 0.005, job_lrs=(0.005, 0.04))
    sweep = [job, Cell("tuned", 64, 0.02), Cell("tuned", 64, 0.04, job_lrs=(0.005, 0.04))]
    for cell, lrs in ((job, [0.005, 0.04]), (sweep[1], [0.02])):
        folder = tmp_path / cell.run_dir
        folder.mkdir(parents=True, exist_ok=True)
        history = _sweep_history(lrs, [0, 1], lambda lr, seed: [v + 0.01 * seed for v in losses[lr]])
        history.to_csv(folder / "history.csv", index=False)
        tests = pd.DataFrame([{"seed": s, "lr": lr, "weights": w, "test_loss": 10 * lr + s + (w == "final"),
                               "test_acc": 0.5}
                              for lr in lrs for s in (0, 1) for w in ("best", "final")])  # fmt: skip
        tests.to_csv(folder / "test.csv", index=False)
    table = aggregate.tuning_table(sweep, tmp_path, linear_lr=lambda b: 0.01 * b / 32, num_train=640)
    assert list(table.columns) == aggregate.TUNING_COLUMNS
    assert len(table) == 6 and list(table["factor"].unique()) == [0.25, 1.0, 2.0]
    row = table.set_index(["lr", "seed"])
    assert row.loc[(0.005, 1), "min_val_loss"] == pytest.approx(1.51)
    assert row.loc[(0.02, 0), "test_loss"] == pytest.approx(0.2)
    assert row.loc[(0.02, 0), "final_test_loss"] == 1.2
    assert row.loc[(0.02, 0), "best_epoch"] == 2
    # LR 0.02 is the best median minimum (1.005): target 1.005 x 1.05, first reached at epoch 2.
    assert table["target_val_loss"].iloc[0] == pytest.approx(1.005 * 1.05)
    assert row.loc[(0.02, 0), "steps_to_target"] == 2 * 10
    assert np.isnan(row.loc[(0.005, 0), "steps_to_target"])
    # 0.04 diverged at epoch 2: no minimum, no test loss; what identifies it stays.
    assert row.loc[(0.04, 0), ["min_val_loss", "test_loss", "best_epoch"]].isna().all()
    assert (row.loc[(0.04, 0), "diverged_epoch"], row.loc[(0.04, 0), "factor"]) == (2, 2.0)
    empty = aggregate.tuning_table([], tmp_path, linear_lr=None, num_train=640)
    assert empty.empty and list(empty.columns) == aggregate.TUNING_COLUMNS
