"""The loss-landscape figures of C12: Keskar's interpolation, Li et al.'s 1-D slices and 2-D contours."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure

from batchscale.figures_style import finite, mean_band, panels_per_rule, rule_label, styled


def _solution_marker(ax: Axes, alpha: float, text: str) -> None:
    ax.axvline(alpha, color="grey", lw=1, ls="--")
    ax.text(alpha, 1.01, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize="small")


@styled
def interpolation_curves(
    interpolation: pd.DataFrame, small_batch: int | None = None, large_batch: int | None = None
) -> Figure:
    """Keskar et al.'s 1-D plot: loss on the line from the small-batch solution (alpha 0) to the
    large-batch one (alpha 1), mean over seeds with a band."""
    interpolation = finite(interpolation, ["train_loss", "val_loss"])
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    mean_band(ax, interpolation, "alpha", "train_loss", "#4C72B0", "training loss")
    mean_band(ax, interpolation, "alpha", "val_loss", "#C44E52", "validation loss")
    for alpha, size, which in ((0.0, small_batch, "small"), (1.0, large_batch, "large")):
        _solution_marker(ax, alpha, f"B={size} solution" if size is not None else f"{which}-batch solution")
    ax.set_xlabel("alpha: weights (1 - alpha) w_small + alpha w_large")
    ax.set_ylabel("loss")
    ax.legend(frameon=False, fontsize="small")
    return fig


def _rise_above_centre(slices: pd.DataFrame) -> pd.DataFrame:
    """Each run's slice minus its loss at alpha = 0: runs whose minima lie at different heights
    (a large batch that trained less) then compare by shape, the thing C12 is about."""
    keys = ["rule", "batch_size", "seed"]
    centre = slices.loc[slices["alpha"].abs() < 1e-12].set_index(keys)["train_loss"].rename("centre")
    joined = slices.join(centre, on=keys)
    return joined.assign(train_loss=joined["train_loss"] - joined["centre"]).drop(columns="centre")


@styled
def slice_curves(slices: pd.DataFrame, centred: bool = True) -> Figure:
    """Li et al.'s 1-D filter-normalised slices: training loss vs alpha around each solution,
    one panel per LR rule, one line (mean over seeds, +- 1 sd band) per batch size.

    `centred`: plot L(alpha) - L(0) per run (the C12 statistic is this curve's bend at 0).
    """
    slices = finite(slices, ["train_loss"])
    if centred:
        slices = _rise_above_centre(slices)
    fig, axes, rules, sizes, palette = panels_per_rule(slices, height=3.4)
    for ax, rule in zip(axes, rules, strict=True):
        for size in sizes:
            cell = slices[(slices["rule"] == rule) & (slices["batch_size"] == size)]
            if len(cell):
                mean_band(ax, cell, "alpha", "train_loss", palette[size], f"B={size}")
        ax.axvline(0.0, color="grey", lw=0.8, ls=":")
        ax.set_title(rule_label(rule))
        ax.set_xlabel("alpha (filter-normalised step)")
    axes[0].set_ylabel("training loss - loss at alpha=0" if centred else "training loss")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", title="batch size", frameon=False)
    return fig


def contour_levels(rises: np.ndarray, count: int = 14) -> np.ndarray:
    """Levels from 0, log-spaced up to the largest rise: dense near the bottom of the basin,
    where a flat and a sharp minimum differ, sparse where the loss shoots up at the edges."""
    top = max(float(np.nanmax(rises)), 1e-9)  # a flat surface still needs two levels
    return np.concatenate([[0.0], np.geomspace(top / 100, top * (1 + 1e-9), count - 1)])


def _surface(cell: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """alpha, beta and the loss grid (rows: beta) of one contour slice."""
    grid = cell.pivot_table(index="beta", columns="alpha", values="train_loss", aggfunc="first")
    return grid.columns.to_numpy(float), grid.index.to_numpy(float), grid.to_numpy(float)


def _rise_above_minimum(contour: pd.DataFrame) -> pd.DataFrame:
    """Loss minus its panel's minimum: basins at different heights (a large batch that trained
    less) then share one colour scale, and the scale reads as steepness, which C12 is about."""
    first = contour[contour["seed"] == contour.groupby("batch_size")["seed"].transform("min")]
    bottom = first.groupby("batch_size")["train_loss"].transform("min")
    return first.assign(rise=first["train_loss"] - bottom)


@styled
def contour_panels(contour: pd.DataFrame) -> Figure:
    """Li et al.'s 2-D slices side by side (smallest batch to largest) on the same colour levels,
    so the basins' widths compare; the trained weights sit at the centre (+)."""
    contour = _rise_above_minimum(finite(contour, ["train_loss"]).dropna(subset=["train_loss"]))
    sizes = sorted(contour["batch_size"].unique())
    levels = contour_levels(contour["rise"].to_numpy(float))
    cmap = sns.color_palette("mako", as_cmap=True)
    norm = BoundaryNorm(levels, cmap.N)  # each band its own colour, however the levels are spaced
    fig = Figure(figsize=(4.0 * len(sizes) + 1.4, 4.0), layout="constrained")
    axes = fig.subplots(1, len(sizes), squeeze=False, sharex=True, sharey=True)[0]
    for ax, size in zip(axes, sizes, strict=True):
        cell = contour[contour["batch_size"] == size]
        alpha, beta, rise = _surface(cell.assign(train_loss=cell["rise"]))
        filled = ax.contourf(alpha, beta, rise, levels=levels, cmap=cmap, norm=norm)
        ax.contour(alpha, beta, rise, levels=levels, colors="white", linewidths=0.4, alpha=0.6)
        ax.plot(0, 0, "+", color="#DD8452", ms=10, mew=2)
        ax.set_title(f"B={size} (seed {cell['seed'].iloc[0]}), lowest loss {cell['train_loss'].min():.3g}")
        ax.set_xlabel("alpha (direction 1)")
        ax.set_aspect("equal")
        ax.grid(False)
    axes[0].set_ylabel("beta (direction 2)")
    bar = fig.colorbar(filled, ax=list(axes), label="training loss above the panel's minimum")
    bar.set_ticks(levels[::2], labels=[f"{v:.2g}" for v in levels[::2]])
    return fig
