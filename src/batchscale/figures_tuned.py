"""The tuned-LR study's figures: the best LR per batch size against the scaling rules'
predictions with the test loss there, and the critical batch size measured from steps to
target beside its two predictions. Drawn from tuned_lr.csv and critical_batch.csv (and the
sweep's own rows, tuning.csv, for the points behind the medians): every number is the tables'."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from batchscale import tuning
from batchscale.figures_style import (
    ARTICLE_COLOUR,
    NOISE_COLOUR,
    log2_batch_axis,
    log_y_axis,
    rule_colour,
    rule_label,
    styled,
)

TUNED = "tuned"
TUNED_COLOUR = rule_colour(TUNED)
GRID_COLOUR = "#BBBBBB"
# How an optimum on an edge of the LR grid is drawn: a triangle pointing the way the best LR may lie.
EDGE_MARKERS = {"at least": ("^", "largest LR tried: the best is at least this"),
                "at most": ("v", "smallest LR tried: the best is at most this")}  # fmt: skip


def _yerr(table: pd.DataFrame, name: str) -> np.ndarray:
    """Error bars from the interval columns (none where the interval is undefined)."""
    value = table[name].to_numpy(dtype=float)
    low = np.nan_to_num(value - table[f"{name}_ci_low"].to_numpy(dtype=float), nan=0.0)
    high = np.nan_to_num(table[f"{name}_ci_high"].to_numpy(dtype=float) - value, nan=0.0)
    return np.vstack([np.maximum(low, 0), np.maximum(high, 0)])


def _slope_label(table: pd.DataFrame, confidence: float) -> str:
    row = table.iloc[0]
    interval = (
        f" [{row['slope_ci_low']:.2f}, {row['slope_ci_high']:.2f}]"
        if np.isfinite([row["slope_ci_low"], row["slope_ci_high"]]).all()
        else ""
    )
    return (
        f"fitted over {int(row['slope_points'])} interior optima: slope {row['slope']:.2f}{interval} "
        f"({confidence:.0%} CI)"
    )


def _best_lr_panel(ax: Axes, table: pd.DataFrame, base_batch_size: int, confidence: float,
                   tried: pd.DataFrame | None) -> None:  # fmt: skip
    """Left: the best LR per batch size with its interval, edge optima as bounds, the rules'
    lines through the base batch size and the line fitted over the interior optima."""
    sizes = table["batch_size"].to_numpy()
    if tried is not None and len(tried):
        ax.scatter(tried["batch_size"], tried["lr"], marker="_", s=60, color=GRID_COLOUR, lw=1.2,
                   label="LRs tried", zorder=1)  # fmt: skip
    interior = table[table["bound"].astype(object).fillna("") == ""]
    ax.errorbar(interior["batch_size"], interior["lr"], yerr=_yerr(interior, "lr"), fmt="o", ms=6, capsize=3,
                color=TUNED_COLOUR, label=f"best LR ({confidence:.0%} CI)", zorder=3)  # fmt: skip
    for bound, (marker, label) in EDGE_MARKERS.items():
        edge = table[table["bound"] == bound]
        if len(edge):
            ax.scatter(edge["batch_size"], edge["lr"], marker=marker, s=70, facecolors="none",
                       edgecolors=TUNED_COLOUR, lw=1.6, label=label, zorder=3)  # fmt: skip
    lines = tuning.lr_scaling_slope(table, base_batch_size).lines
    ax.plot(sizes, lines["linear"], ls="--", color=rule_colour("linear"), lw=1.3,
            label=f"linear rule (slope 1, through B={base_batch_size})")  # fmt: skip
    ax.plot(sizes, lines["square_root"], ls=":", color=rule_colour("sqrt"), lw=1.6,
            label=f"square-root rule (slope 1/2, through B={base_batch_size})")  # fmt: skip
    if np.isfinite(table["slope"].iloc[0]):
        ax.plot(sizes, table["fitted_lr"], ls="-", color=TUNED_COLOUR, lw=1.2, alpha=0.7,
                label=_slope_label(table, confidence))  # fmt: skip
    log2_batch_axis(ax, list(sizes))
    log_y_axis(ax)
    ax.set_ylabel("learning rate (log scale)")
    ax.set_title("best LR (lowest median min. validation loss)")
    ax.legend(frameon=False, fontsize="x-small", loc="best")


def _test_loss_panel(ax: Axes, table: pd.DataFrame, confidence: float) -> None:
    """Right: the test loss at the tuned LR (with its interval) beside the fixed rules'."""
    ax.errorbar(table["batch_size"], table["test_loss"], yerr=_yerr(table, "test_loss"), fmt="o-", ms=6,
                capsize=3, color=TUNED_COLOUR, label=f"tuned LR ({confidence:.0%} CI)")  # fmt: skip
    for rule in ("none", "linear"):
        column = table[f"{rule}_test_loss"]
        if column.notna().any():
            ax.plot(table["batch_size"], column, "s--", ms=5, lw=1.3, color=rule_colour(rule),
                    label=rule_label(rule))  # fmt: skip
    log2_batch_axis(ax, list(table["batch_size"]))
    ax.set_ylabel("test loss (median over seeds)")
    ax.set_title("test loss at the best weights")
    ax.legend(frameon=False, fontsize="small")


@styled
def tuned_lr_vs_batch(
    tuned_lr: pd.DataFrame, base_batch_size: int, confidence: float, tried: pd.DataFrame | None = None
) -> Figure:
    """The best LR per batch size against the linear and square-root rules (left) and the test
    loss there beside the fixed rules' (right); `tried`: the sweep's (batch_size, lr) pairs."""
    table = tuned_lr.sort_values("batch_size").reset_index(drop=True)
    fig = Figure(figsize=(11.5, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    _best_lr_panel(left, table, base_batch_size, confidence, tried)
    _test_loss_panel(right, table, confidence)
    return fig


def _mark(ax: Axes, value: float, sizes: list[int], label: str, **style) -> None:
    """A vertical line at a batch size; the axis widens to show it within a factor 8 of the
    grid, else an arrow at the edge points the way (inf: beyond the grid)."""
    if not (isinstance(value, int | float) and value > 0) or math.isnan(value):
        return
    low, high = min(sizes), max(sizes)
    if low / 8 <= value <= high * 8:
        left, right = ax.get_xlim()
        ax.set_xlim(min(left, value / 2**0.3), max(right, value * 2**0.3))
        ax.axvline(value, label=label, **style)
        return
    above = value > high
    text = f"{label} \u2192" if above else f"\u2190 {label}"
    ax.text(0.99 if above else 0.01, 0.03 + 0.06 * len(ax.texts), text, transform=ax.transAxes,
            ha="right" if above else "left", va="bottom", fontsize="x-small",
            color=style.get("color"))  # fmt: skip


def _steps_lines(ax: Axes, table: pd.DataFrame, critical: pd.Series) -> None:
    """Perfect scaling from the smallest batch, the 20% line above it, and the fitted S(B)."""
    steps = table.set_index("batch_size")["steps_to_target"]
    smallest = int(steps.index[0])
    line = np.geomspace(smallest, steps.index[-1], 60)
    if np.isfinite(steps.iloc[0]):
        perfect = steps.iloc[0] * smallest / line
        ax.plot(
            line, perfect, ls="--", color=ARTICLE_COLOUR, lw=1.3, label="perfect scaling from the smallest B"
        )
        excess = critical["threshold"]
        ax.plot(line, (1 + excess) * perfect, ls="-.", color=ARTICLE_COLOUR, lw=1.0,
                label=f"{excess:.0%} above perfect scaling")  # fmt: skip
    if np.isfinite(critical["s_min"]) and np.isfinite(critical["b_noise"]):
        model = critical["s_min"] * (1 + critical["b_noise"] / line)
        ax.plot(line, model, color=NOISE_COLOUR, lw=1.0, alpha=0.8,
                label=f"fitted S_min (1 + B_noise / B): S_min {critical['s_min']:.4g}, "
                f"B_noise {critical['b_noise']:.4g}")  # fmt: skip


def _critical_markers(ax: Axes, critical: pd.Series, sizes: list[int]) -> None:
    """The measured critical batch with its interval as a band, and the two predictions of B_noise."""
    value, low, high = critical["critical_batch"], critical["ci_low"], critical["ci_high"]
    if np.isfinite(low) and np.isfinite(value):
        right = high if np.isfinite(high) else ax.get_xlim()[1]
        ax.axvspan(low, right, color=TUNED_COLOUR, alpha=0.12, lw=0, label="measured: its CI")
    label = (
        f"measured critical batch, {value:g}"
        if np.isfinite(value)
        else "measured critical batch: beyond the grid"
    )
    _mark(ax, value, sizes, label, color=TUNED_COLOUR, lw=2.0)
    _mark(ax, critical["b_noise"], sizes, f"B_noise (fit), {critical['b_noise']:.3g}", color=NOISE_COLOUR,
          ls="--", lw=1.4)  # fmt: skip
    _mark(ax, critical["b_simple"], sizes, f"B_simple (noise probe), {critical['b_simple']:.3g}",
          color=NOISE_COLOUR, ls=":", lw=1.8)  # fmt: skip


@styled
def critical_batch_measured(
    tuned_lr: pd.DataFrame, critical_batch: pd.DataFrame, tuning_runs: pd.DataFrame | None = None
) -> Figure:
    """Median steps to target at the tuned LR vs batch size (log-log; points: the seeds there,
    from `tuning_runs`), perfect scaling from the smallest batch, the 20% line, the fitted S(B),
    and the measured critical batch (its interval shaded) beside B_noise and B_simple."""
    table = tuned_lr.sort_values("batch_size").reset_index(drop=True)
    critical = critical_batch.iloc[0]
    sizes = [int(b) for b in table["batch_size"]]
    fig = Figure(figsize=(7.6, 5.0), layout="constrained")
    ax = fig.subplots()
    if tuning_runs is not None and len(tuning_runs):
        at_best = tuning_runs.merge(table[["batch_size", "lr"]], on=["batch_size", "lr"])
        reached = at_best[np.isfinite(at_best["steps_to_target"].astype(float))]
        ax.scatter(
            reached["batch_size"], reached["steps_to_target"], s=14, alpha=0.4, color=TUNED_COLOUR, lw=0
        )
    finite = table[np.isfinite(table["steps_to_target"].astype(float))]
    ax.plot(finite["batch_size"], finite["steps_to_target"], "o-", color=TUNED_COLOUR, ms=6, lw=1.8,
            label="tuned LR (median over seeds)")  # fmt: skip
    _steps_lines(ax, table, critical)
    log2_batch_axis(ax, sizes)
    _critical_markers(ax, critical, sizes)
    log_y_axis(ax)
    ax.set_ylabel("optimizer steps to target (log scale)")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False, fontsize="x-small")
    return fig
