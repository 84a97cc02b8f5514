"""Collect the runs' outputs into tidy tables under reports/tables/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from batchscale import analysis
from batchscale.analysis import reference_rule
from batchscale.config import Cell
from batchscale.io import write_csv_atomic

# Steps-to-target (Shallue et al.): the target validation loss is this much above the worst
# cell's median minimum under the scaled rule, so that every scaled cell can reach it.
TARGET_MARGIN = 0.05

# A cell's validation loss has "passed its minimum" when the minimum came before the last
# epoch and the loss has since risen by more than this fraction of it.
MIN_PASSED_RISE = 0.01

# The columns of runs.csv a diverged run keeps: what identifies it and how it ran, the study's
# target, and when it first reached that target (steps to target, which counts a run that never
# does as infinitely many steps, is not a claim statistic). Every other column -- every
# statistic a claim or figure is decided on, the probes' included -- is NaN for it.
KEPT_WHEN_DIVERGED = ("rule", "batch_size", "seed", "lr", "factor", "epochs", "diverged_epoch",
                      "target_val_loss", "epochs_to_target", "steps_to_target")  # fmt: skip

# Per run, from its test.csv: the test split's loss and accuracy at the weights of the epoch of
# minimum validation loss (what early stopping on validation keeps), and the final weights' loss.
TEST_COLUMNS = ("test_loss", "test_acc", "final_test_loss")

# tuning.csv: the tuned rule's sweep, one row per (batch size, LR, seed); `factor` is the LR over
# the linear rule's LR at that batch size.
TUNING_COLUMNS = ["batch_size", "lr", "factor", "seed", "epochs", "diverged_epoch", "min_val_loss",
                  "best_epoch", "min_passed", *TEST_COLUMNS, "target_val_loss", "epochs_to_target",
                  "steps_to_target"]  # fmt: skip


def _labelled(frame: pd.DataFrame, cell: Cell) -> pd.DataFrame:
    frame = frame.drop(columns=["rule", "batch_size"], errors="ignore")
    frame.insert(0, "batch_size", cell.batch_size)
    frame.insert(0, "rule", cell.rule)
    return frame


def read_per_cell(cells: list[Cell], folder: str, name: str, root: Path) -> pd.DataFrame:
    """A per-run table for every cell, labelled with the cell's rule and batch size.

    A run shared by several rules (same batch size and LR) appears once per rule. Cells
    whose file is absent (no probes were run) are left out.
    """
    frames = []
    for cell in cells:
        path = root / getattr(cell, folder) / name
        if path.exists():
            frames.append(_labelled(pd.read_csv(path), cell))
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["rule", "batch_size", "seed"])
    )


JOB_COLUMNS = ["run", "batch_size", "lr", "members", "device", "ensemble", "threads", "train_seconds",
               "peak_rss_mb", "peak_cuda_mb"]  # fmt: skip


def read_jobs(cells: list[Cell], root: Path) -> pd.DataFrame:
    """One row per training job (a run shared by several rules counts once): its device,
    threads, wall time and peak memory, from the run's summary.json."""
    rows = {}
    for cell in cells:
        path = root / cell.run_dir / "summary.json"
        if cell.run_dir in rows or not path.exists():
            continue
        summary = json.loads(path.read_text())
        rows[cell.run_dir] = {
            # A job of the tuned sweep trains several LRs (its run key names them): no one LR.
            "run": cell.run_key, "batch_size": summary["batch_size"], "lr": summary.get("lr"),
            "members": len(summary["seeds"]) * len(summary.get("lrs") or [summary["lr"]]),
            "device": summary["device"],
            # How the members trained together (train.ensemble); runs from before it was recorded: vmap.
            "ensemble": summary.get("ensemble", "vmap"), "threads": summary["threads"],
            "train_seconds": summary["train_seconds"],
            "peak_rss_mb": summary.get("peak_rss_mb"), "peak_cuda_mb": summary.get("peak_cuda_mb"),
        }  # fmt: skip
    return pd.DataFrame(list(rows.values()), columns=JOB_COLUMNS)


def read_histories(cells: list[Cell], root: Path) -> pd.DataFrame:
    """Every cell's history in one tidy frame, one row per (rule, batch, seed, epoch)."""
    history = read_per_cell(cells, "run_dir", "history.csv", root)
    return history.sort_values(["rule", "batch_size", "seed", "epoch"], ignore_index=True)


def slice_curvature(slices: pd.DataFrame) -> pd.DataFrame:
    """Per run: the curvature of the 1-D slice at the solution, (L(h) + L(-h) - 2 L(0)) / h^2
    from the grid points next to alpha = 0 (h is the grid step).

    This is the sharpness the picture shows: how fast the loss bends up at the minimum along
    a filter-normalised direction. Far out on the slice (|alpha| near 1 moves every filter by
    its own norm) the loss saturates for every solution, so the whole-slice mean says little.
    """
    keys = ["rule", "batch_size", "seed"]
    if slices.empty:
        return pd.DataFrame(columns=[*keys, "slice_curvature"])
    rows = []
    for key, one in slices.groupby(keys):
        one = one.sort_values("alpha")
        alphas, losses = one["alpha"].to_numpy(), one["train_loss"].to_numpy()
        centre = int(np.argmin(np.abs(alphas)))
        if not (0 < centre < len(alphas) - 1) or abs(alphas[centre]) > 1e-12:
            continue  # no grid point at alpha = 0 with neighbours on both sides
        h = alphas[centre + 1] - alphas[centre]
        curvature = (losses[centre + 1] + losses[centre - 1] - 2 * losses[centre]) / h**2
        rows.append({**dict(zip(keys, key, strict=True)), "slice_curvature": curvature})
    return pd.DataFrame(rows, columns=[*keys, "slice_curvature"])


def probe_summaries(sharpness: pd.DataFrame, slices: pd.DataFrame) -> pd.DataFrame:
    """One row per run: sharpness of best and final weights, and the slice's curvature."""
    keys = ["rule", "batch_size", "seed"]
    if sharpness.empty:
        return pd.DataFrame(columns=keys)
    wide = sharpness.pivot_table(
        index=keys, columns="weights", values=["top_eigenvalue", "eps_sharpness"], aggfunc="first"
    )
    wide.columns = [f"{metric}_{which}" for metric, which in wide.columns]
    return wide.reset_index().merge(slice_curvature(slices), on=keys, how="left")


def test_summaries(tests: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per run from the runs' test.csv rows (`keys` and weights best/final): TEST_COLUMNS."""
    if tests.empty:
        return pd.DataFrame(columns=[*keys, *TEST_COLUMNS])
    wide = tests.pivot_table(index=keys, columns="weights", values=["test_loss", "test_acc"], aggfunc="first")
    table = pd.DataFrame(
        {
            "test_loss": wide[("test_loss", "best")],
            "test_acc": wide[("test_acc", "best")],
            "final_test_loss": wide[("test_loss", "final")],
        }
    )
    return table.reset_index()


def with_tests(runs: pd.DataFrame, tests: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """`runs` with TEST_COLUMNS (NaN for a run without a test.csv, or a data set without a test split)."""
    if runs.empty:
        return runs.reindex(columns=[*runs.columns, *TEST_COLUMNS])
    return runs.merge(test_summaries(tests, keys), on=keys, how="left")


def leave_out_diverged(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with NaN for every statistic of a run that diverged (diverged_epoch >= 0), all
    but the columns in KEPT_WHEN_DIVERGED: what a member measured before it blew up is not
    evidence about a claim, so it must not enter one (docs/decisions.md)."""
    if runs.empty or "diverged_epoch" not in runs:
        return runs
    diverged = analysis.diverged(runs)
    blanked = [c for c in runs.columns if c not in KEPT_WHEN_DIVERGED]
    if diverged.any() and blanked:
        # Integer columns become float and boolean ones object, so that they can hold NaN.
        kinds = {c: "object" if runs[c].dtype == bool else float for c in blanked
                 if runs[c].dtype == bool or pd.api.types.is_integer_dtype(runs[c])}  # fmt: skip
        runs = runs.astype(kinds)
        runs.loc[diverged, blanked] = np.nan
    return runs


def run_summaries(history: pd.DataFrame, seconds_per_epoch: pd.Series) -> pd.DataFrame:
    """One row per run (rule, batch size, seed): the quantities the claims are decided on.

    `seconds_per_epoch` maps batch size to the timing rule's median seconds per epoch (one
    thread, machine to itself); time to the minimum is the epochs it took times that. A run
    that diverged has NaN for all of them (`leave_out_diverged`).
    """
    trained = history[history["epoch"] > 0]
    rows = []
    for (rule, batch_size, seed), run in trained.groupby(["rule", "batch_size", "seed"]):
        run = run.sort_values("epoch")
        finite = run[np.isfinite(run["val_loss"]) & ~run["diverged"].astype(bool)]
        diverged = run.loc[run["diverged"].astype(bool), "epoch"]
        # Mean over epochs of the start-of-epoch gradient competition (NaN-skipping).
        competition = run["grad_competition"] if "grad_competition" in run else pd.Series(dtype=float)
        row = {
            "rule": rule,
            "batch_size": batch_size,
            "seed": seed,
            "lr": run["lr"].iloc[-1],
            "epochs": int(run["epoch"].max()),
            "diverged_epoch": int(diverged.min()) if len(diverged) else -1,
            "grad_competition": competition.mean(),
        }
        if len(finite):
            best = finite.loc[finite["val_loss"].idxmin()]
            last = finite.iloc[-1]
            row.update(
                min_val_loss=best["val_loss"],
                best_epoch=int(best["epoch"]),
                val_acc_at_best=best["val_acc"],
                train_loss_auc=finite["train_loss"].mean(),
                final_train_loss=last["train_loss"],
                dist_final=last["dist_from_init"],
                dist_best=best["dist_from_init"],
                mean_update_norm=finite["update_norm"].mean(),
                min_passed=bool(
                    best["epoch"] < last["epoch"]
                    and last["val_loss"] > best["val_loss"] * (1 + MIN_PASSED_RISE)
                ),
            )
            row["time_to_min_s"] = row["best_epoch"] * seconds_per_epoch.get(batch_size, np.nan)
        rows.append(row)
    return leave_out_diverged(pd.DataFrame(rows))


def rows_of_cell(frame: pd.DataFrame, cell: Cell) -> pd.DataFrame:
    """A sweep cell's rows of its job's table: a job of several LRs trained every seed at each,
    and a member's rows carry its LR; the LR is set to the cell's own, exactly."""
    if cell.job_lrs:
        frame = frame[np.isclose(frame["lr"], cell.lr, rtol=1e-9, atol=0)]
    return frame.assign(lr=cell.lr)


def sweep_cell_history(cell: Cell, root: Path) -> pd.DataFrame:
    """A cell of the tuned sweep's history, from the rows of its LR in its job's history.csv."""
    return _labelled(rows_of_cell(pd.read_csv(root / cell.run_dir / "history.csv"), cell), cell)


def tuning_table(sweep: list[Cell], root: Path, linear_lr, num_train: int | None) -> pd.DataFrame:
    """tuning.csv: every (batch size, LR, seed) of the tuned sweep, summarised as runs.csv's rows
    are, with the test split's losses and the sweep's own steps to target; no rows without a sweep.

    `linear_lr(batch_size)` is the linear rule's LR (`factor` is relative to it). The target is
    TARGET_MARGIN above the largest median minimum validation loss over the batch sizes, each at
    its LR chosen on that statistic (`tuning.choose_lr`), so that every batch size can reach it.
    """
    from batchscale import tuning

    if not sweep:
        return pd.DataFrame(columns=TUNING_COLUMNS)
    keys = ["batch_size", "lr", "seed"]
    histories = {cell: sweep_cell_history(cell, root) for cell in sweep}
    runs = pd.concat([run_summaries(history, pd.Series(dtype=float)) for history in histories.values()])
    # (run_summaries' lr is each cell's own: sweep_cell_history set it on its rows.)
    tests = pd.concat([read_sweep_tests(cell, root) for cell in sweep], ignore_index=True)
    runs = with_tests(runs.drop(columns="rule"), tests, keys)
    runs["factor"] = runs["lr"] / runs["batch_size"].map(linear_lr)
    history = pd.concat(histories.values(), ignore_index=True)
    chosen = tuning.choose_lr(runs)
    target = float(chosen["min_val_loss"].max() * (1 + TARGET_MARGIN)) if len(chosen) else np.nan
    reached = history[(history["epoch"] > 0) & (history["val_loss"] <= target)]
    first = reached.groupby(keys)["epoch"].min().rename("epochs_to_target").reset_index()
    runs = runs.merge(first, on=keys, how="left")
    runs["target_val_loss"] = target
    runs["steps_to_target"] = runs["epochs_to_target"] * np.ceil((num_train or np.nan) / runs["batch_size"])
    runs = leave_out_diverged(runs)
    return runs.reindex(columns=TUNING_COLUMNS).sort_values(keys, ignore_index=True)


def read_sweep_tests(cell: Cell, root: Path) -> pd.DataFrame:
    """A sweep cell's rows of its job's test.csv (none when the run predates test.csv)."""
    path = root / cell.run_dir / "test.csv"
    if not path.exists():
        return pd.DataFrame(columns=["seed", "lr", "weights", "test_loss", "test_acc"])
    return rows_of_cell(pd.read_csv(path), cell).assign(batch_size=cell.batch_size)


def target_val_loss(runs: pd.DataFrame) -> float:
    """The validation loss steps-to-target counts to: TARGET_MARGIN above the largest cell
    median of the minimum validation loss under the linear rule (else the first rule)."""
    rule = reference_rule(runs)
    medians = runs[runs["rule"] == rule].groupby("batch_size")["min_val_loss"].median()
    return float(medians.max() * (1 + TARGET_MARGIN))


def add_steps_to_target(runs: pd.DataFrame, history: pd.DataFrame, num_train: int) -> pd.DataFrame:
    """Per run: optimizer steps until the validation loss first reaches the target (NaN if
    it never does), with the target in column `target_val_loss`."""
    target = target_val_loss(runs)
    reached = history[(history["epoch"] > 0) & (history["val_loss"] <= target)]
    first = reached.groupby(["rule", "batch_size", "seed"])["epoch"].min().rename("epochs_to_target")
    runs = runs.merge(first.reset_index(), on=["rule", "batch_size", "seed"], how="left")
    steps_per_epoch = np.ceil(num_train / runs["batch_size"])
    runs["steps_to_target"] = runs["epochs_to_target"] * steps_per_epoch
    runs["target_val_loss"] = target
    return runs


def read_timings(timing_files: list[Path]) -> pd.DataFrame:
    if not timing_files:
        return pd.DataFrame(columns=["batch_size", "threads", "repeat", "epoch_seconds"])
    frames = [pd.read_csv(f) for f in timing_files]
    return pd.concat(frames, ignore_index=True).sort_values(["batch_size", "threads", "repeat"])


def seconds_per_epoch(timing: pd.DataFrame) -> pd.Series:
    """Median seconds per epoch by batch size, on one thread.

    One thread is the sequential cost the article's C3/C9 are about, and it is robust:
    multi-threaded epochs of small models slow down by 5x or more when anything else wakes
    up on the machine. The all-threads timings serve the parallel speed-up (C11).
    """
    if timing.empty:
        return pd.Series(dtype=float)
    single = timing[timing["threads"] == 1]
    return single.groupby("batch_size")["epoch_seconds"].median()


def curves_table(history: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (rule, batch size, epoch): the learning curves DVC plots."""
    cols = ["train_loss", "val_loss", "val_acc"]
    curves = history.groupby(["rule", "batch_size", "epoch"], as_index=False)[cols].mean()
    curves.insert(0, "cell", curves["rule"] + "_bs" + curves["batch_size"].astype(str))
    return curves


def read_landscape(landscape_dir: Path | None, name: str) -> pd.DataFrame:
    path = landscape_dir / name if landscape_dir else None
    return (
        pd.read_csv(path) if path and path.exists() else pd.DataFrame(columns=["seed", "alpha", "train_loss"])
    )


def aggregate(
    cells: list[Cell],
    timing_files: list[Path],
    tables_dir: Path,
    root: Path = Path(),
    landscape_dir: Path | None = None,
    num_train: int | None = None,
    sweep: list[Cell] = (),
    linear_lr=None,
) -> None:
    """Write the tidy tables under `tables_dir`: history, runs, jobs, timing, curves,
    sharpness, slices, interpolation and contour (the last four empty when no probes were run),
    and tuning (the tuned rule's `sweep`; no rows without one; `linear_lr(batch_size)`: the
    linear rule's LR, which the sweep's factors are relative to).

    Run and probe folders are read relative to `root` (the project directory).
    """
    history = read_histories(cells, root)
    timing = read_timings(timing_files)
    sharpness = read_per_cell(cells, "probe_dir", "sharpness.csv", root)
    slices = read_per_cell(cells, "probe_dir", "slices.csv", root)
    noise = read_per_cell(cells, "probe_dir", "noise.csv", root)
    runs = run_summaries(history, seconds_per_epoch(timing))
    tests = read_per_cell(cells, "run_dir", "test.csv", root).drop(columns="lr", errors="ignore")
    runs = with_tests(runs, tests, ["rule", "batch_size", "seed"])
    if num_train:
        runs = add_steps_to_target(runs, history, num_train)
    probed = probe_summaries(sharpness, slices)
    if len(probed.columns) > 3:
        runs = runs.merge(probed, on=["rule", "batch_size", "seed"], how="left")
    runs = leave_out_diverged(runs)  # the probes' statistics too
    write_csv_atomic(tables_dir / "sharpness.csv", sharpness)
    write_csv_atomic(tables_dir / "slices.csv", slices)
    write_csv_atomic(tables_dir / "noise.csv", noise)
    write_csv_atomic(tables_dir / "interpolation.csv", read_landscape(landscape_dir, "interpolation.csv"))
    write_csv_atomic(tables_dir / "contour.csv", read_landscape(landscape_dir, "contour.csv"))
    write_csv_atomic(tables_dir / "tuning.csv", tuning_table(list(sweep), root, linear_lr, num_train))
    write_csv_atomic(tables_dir / "jobs.csv", read_jobs([*cells, *sweep], root))
    write_csv_atomic(tables_dir / "history.csv", history)
    write_csv_atomic(tables_dir / "runs.csv", runs)
    write_csv_atomic(tables_dir / "timing.csv", timing)
    write_csv_atomic(tables_dir / "curves.csv", curves_table(history))
