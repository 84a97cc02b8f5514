"""The figures of the claims C1-C11: learning curves, per-seed measurements vs batch size,
gradient competition, sharpness, epoch times and parallel speed-up, the article beside ours."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from batchscale.figures_style import (
    ARTICLE_COLOUR,
    NOISE_COLOUR,
    RULE_OFFSET,
    batch_palette,
    finite,
    log2_batch_axis,
    log_y_axis,
    ordered_rules,
    panels_per_rule,
    per_seed_points,
    rule_colour,
    rule_label,
    rule_offsets,
    rule_panels_width,
    styled,
)


@styled
def learning_curves(history: pd.DataFrame, metrics: tuple[str, ...] = ("train_loss", "val_loss")) -> Figure:
    """Loss vs epoch: one row per metric, one column per LR rule, one line per batch size.

    Line: mean over seeds; band: mean +- 1 standard deviation over seeds.
    """
    metrics = tuple(metrics)
    history = finite(history, list(metrics))
    rules = ordered_rules(history)
    sizes = sorted(history["batch_size"].unique())
    palette = batch_palette(sizes)
    fig = Figure(figsize=(rule_panels_width(len(rules)), 3.0 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), len(rules), squeeze=False, sharex=True, sharey="row")
    stats = history.groupby(["rule", "batch_size", "epoch"])[list(metrics)].agg(["mean", "std"])
    for row, metric in enumerate(metrics):
        for col, rule in enumerate(rules):
            ax = axes[row][col]
            for size in sizes:
                if (rule, size) not in stats.index.droplevel("epoch"):
                    continue
                cell = stats.loc[(rule, size)]
                mean, sd = cell[(metric, "mean")], cell[(metric, "std")].fillna(0.0)
                ax.plot(cell.index, mean, color=palette[size], lw=1.6, label=f"B={size}")
                ax.fill_between(cell.index, mean - sd, mean + sd, color=palette[size], alpha=0.2, lw=0)
            if row == 0:
                ax.set_title(rule_label(rule))
            if row == len(metrics) - 1:
                ax.set_xlabel("epoch")
            ax.set_ylabel(metric.replace("_", " ") if col == 0 else "")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", title="batch size", frameon=False)
    return fig


@styled
def curve_by_cell(curves: pd.DataFrame, metric: str, ylabel: str) -> Figure:
    """A seed-mean curve from curves.csv vs epoch: one panel per LR rule, one line per batch size."""
    curves = finite(curves, [metric])
    fig, axes, rules, sizes, palette = panels_per_rule(curves, height=3.0)
    for ax, rule in zip(axes, rules, strict=True):
        for size in sizes:
            cell = curves[(curves["rule"] == rule) & (curves["batch_size"] == size)].sort_values("epoch")
            if len(cell):
                ax.plot(cell["epoch"], cell[metric], color=palette[size], lw=1.6, label=f"B={size}")
        ax.set_title(rule_label(rule))
        ax.set_xlabel("epoch")
    axes[0].set_ylabel(ylabel)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", title="batch size", frameon=False)
    return fig


@styled
def per_seed_vs_batch(runs: pd.DataFrame, metric: str, ylabel: str, log_y: bool = False) -> Figure:
    """`metric` vs batch size per LR rule: one small point per seed, a line through the means."""
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    per_seed_points(ax, finite(runs, [metric]), metric)
    if log_y:
        log_y_axis(ax)
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False, fontsize="small")
    return fig


def train_loss_auc_vs_batch(runs: pd.DataFrame) -> Figure:
    return per_seed_vs_batch(runs, "train_loss_auc", "mean training loss over epochs")


def min_val_loss_vs_batch(runs: pd.DataFrame) -> Figure:
    return per_seed_vs_batch(runs, "min_val_loss", "minimum validation loss")


def best_epoch_vs_batch(runs: pd.DataFrame) -> Figure:
    return per_seed_vs_batch(runs, "best_epoch", "epoch of minimum validation loss")


def time_to_min_vs_batch(runs: pd.DataFrame) -> Figure:
    return per_seed_vs_batch(runs, "time_to_min_s", "seconds to min. val loss (log scale)", log_y=True)


def distance_vs_batch(runs: pd.DataFrame) -> Figure:
    return per_seed_vs_batch(runs, "dist_final", "L2 distance of final weights from init")


def update_norm_vs_batch(runs: pd.DataFrame) -> Figure:
    return per_seed_vs_batch(runs, "mean_update_norm", "mean weight-update norm per epoch")


# C10: the ratio |mean gradient| / mean |gradient| in a batch.
COMPETITION = "grad_competition"


def _noise_reference(runs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """c / sqrt(B) through the smallest batch's mean ratio (constant-LR rule when there is one).

    If per-example gradients were pure noise around a zero mean, |mean| / mean |g| would fall
    as 1/sqrt(B); a measured curve flatter than this means the gradients share a direction.
    """
    cell = runs[runs["rule"] == "none"] if (runs["rule"] == "none").any() else runs
    cell = cell.dropna(subset=[COMPETITION])
    if cell.empty:
        return None
    smallest = cell["batch_size"].min()
    start = cell.loc[cell["batch_size"] == smallest, COMPETITION].mean()
    sizes = np.geomspace(smallest, runs["batch_size"].max(), 50)
    return sizes, start * np.sqrt(smallest / sizes)


@styled
def grad_competition_vs_batch(runs: pd.DataFrame) -> Figure:
    """C10: |mean per-example gradient| / mean |per-example gradient| vs batch size, with the
    1/sqrt(B) curve pure noise would follow."""
    runs = finite(runs, [COMPETITION])
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    per_seed_points(ax, runs, COMPETITION)
    reference = _noise_reference(runs)
    if reference is not None:
        ax.plot(*reference, ls=":", color=NOISE_COLOUR, lw=1.6,
                label="pure noise would follow this (\u221d 1/\u221aB)")  # fmt: skip
    log_y_axis(ax)
    ax.set_ylabel("|mean gradient| / mean |gradient|\n(log scale)")
    ax.legend(frameon=False, fontsize="small")
    return fig


SHARPNESS_PANELS = {"top_eigenvalue": "top Hessian eigenvalue", "eps_sharpness": "epsilon-sharpness (%)"}
# Best weights (what C5 is decided on) stand out; final weights are drawn as a lighter echo.
WEIGHT_STYLES = {"best": ("-", True), "final": ("--", False)}


def _log_or_symlog(ax: Axes, values: pd.Series) -> None:
    """Log y axis; symmetric-log when a value is <= 0 (a negative dominant Hessian eigenvalue:
    the Lanczos iteration found a saddle direction), so those points are shown, not dropped."""
    values = values.dropna()
    if values.empty or (values > 0).all():
        log_y_axis(ax)
        return
    smallest = values.abs()[values.abs() > 0].min() if (values != 0).any() else 1.0
    ax.set_yscale("symlog", linthresh=10 ** np.floor(np.log10(smallest)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.axhline(0.0, color="grey", lw=0.8)


def _sharpness_panel(ax: Axes, sharpness: pd.DataFrame, metric: str) -> None:
    rules = ordered_rules(sharpness)
    offsets = rule_offsets(rules)
    for rule in rules:
        colour = rule_colour(rule)
        for which, (style, filled) in WEIGHT_STYLES.items():
            cell = sharpness[(sharpness["rule"] == rule) & (sharpness["weights"] == which)]
            cell = cell.dropna(subset=[metric])
            if cell.empty:
                continue
            face = colour if filled else "none"
            ax.scatter(cell["batch_size"] * offsets[rule], cell[metric], s=16, alpha=0.5,
                       facecolors=face, edgecolors=colour, lw=0.9)  # fmt: skip
            means = cell.groupby("batch_size")[metric].mean()
            ax.plot(means.index * offsets[rule], means.values, ls=style, marker="o", color=colour,
                    mfc=face, ms=6, lw=1.8 if filled else 1.2)  # fmt: skip
    log2_batch_axis(ax, list(sharpness["batch_size"].unique()))
    ax.margins(y=0.1)  # the largest eigenvalues sit at the top edge otherwise
    _log_or_symlog(ax, sharpness[metric])
    ax.set_ylabel(SHARPNESS_PANELS[metric])


def _sharpness_legend(rules: list[str]) -> tuple[list[Line2D], list[str]]:
    """Colour says the rule, fill and dash say the weights: one legend entry per idea."""
    handles = [Line2D([], [], color=rule_colour(r), marker="o", lw=1.8) for r in rules]
    labels = [rule_label(r) for r in rules]
    for which, (style, filled) in WEIGHT_STYLES.items():
        face = "grey" if filled else "none"
        handles.append(Line2D([], [], color="grey", ls=style, marker="o", mfc=face))
        labels.append(f"{which} weights" + (" (min. val loss)" if which == "best" else " (last epoch)"))
    return handles, labels


@styled
def sharpness_vs_batch(sharpness: pd.DataFrame) -> Figure:
    """C5: top Hessian eigenvalue and epsilon-sharpness vs batch size; points per seed, mean lines."""
    sharpness = finite(sharpness, list(SHARPNESS_PANELS))
    fig = Figure(figsize=(10.0, 3.8), layout="constrained")
    axes = fig.subplots(1, len(SHARPNESS_PANELS))
    for ax, metric in zip(axes, SHARPNESS_PANELS, strict=True):
        _sharpness_panel(ax, sharpness, metric)
    handles, labels = _sharpness_legend(ordered_rules(sharpness))
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False, fontsize="small")
    return fig


def _thread_label(threads: int) -> str:
    return "1 thread" if threads == 1 else f"{threads} threads"


@styled
def epoch_seconds_vs_batch(timing: pd.DataFrame) -> Figure:
    """Seconds per epoch vs batch size, one colour per thread count: repeats as points, median line."""
    counts = sorted(timing["threads"].unique())
    colours = dict(zip(counts, sns.color_palette("rocket", n_colors=max(len(counts), 2)), strict=False))
    offsets = {t: 2 ** ((i - (len(counts) - 1) / 2) * RULE_OFFSET) for i, t in enumerate(counts)}
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    for threads in counts:
        cell = timing[timing["threads"] == threads]
        ax.scatter(cell["batch_size"] * offsets[threads], cell["epoch_seconds"], s=14, alpha=0.45,
                   color=colours[threads], lw=0)  # fmt: skip
        medians = cell.groupby("batch_size")["epoch_seconds"].median()
        ax.plot(medians.index * offsets[threads], medians.values, "o-", color=colours[threads], ms=6,
                label=f"{_thread_label(threads)} (median of {cell['repeat'].nunique()} repeats)")  # fmt: skip
    log2_batch_axis(ax, list(timing["batch_size"].unique()))
    log_y_axis(ax)
    ax.set_ylabel("seconds per epoch (log scale)")
    ax.legend(frameon=False, fontsize="small")
    return fig


@styled
def parallel_speedup_vs_batch(timing: pd.DataFrame) -> Figure:
    """Speed-up from all threads over one thread vs batch size (the C11 picture): each timing
    repeat's speed-up as a point, their median as the line."""
    from batchscale.analysis import speedup_by_repeat

    by_repeat = speedup_by_repeat(timing)
    speedup = by_repeat.median()
    most = int(timing["threads"].max())
    fig = Figure(figsize=(6.0, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(speedup.index, speedup.values, "o-", color="#C44E52", ms=6,
            label=f"median of {len(by_repeat)} repeats")  # fmt: skip
    points = by_repeat.melt(var_name="batch_size", value_name="speedup").dropna()
    ax.scatter(points["batch_size"], points["speedup"], s=14, alpha=0.45, color="#C44E52", lw=0,
               label="one timing repeat")  # fmt: skip
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    log2_batch_axis(ax, list(speedup.index))
    ax.set_ylabel(f"speed-up, {_thread_label(most)} vs 1 thread")
    ax.legend(frameon=False, fontsize="small")
    return fig


def _split_comparison(comparison: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Losses (C7's inputs) and fractions (C7's and C8's statistics) live on different scales."""
    is_loss = comparison["quantity"].str.startswith("min val loss")
    return comparison[is_loss], comparison[~is_loss]


def _article_vs_ours_panel(ax: Axes, rows: pd.DataFrame, xlabel: str, confidence: float) -> None:
    y = np.arange(len(rows))[::-1]
    ours = rows["ours"].to_numpy(float)
    err = np.vstack([ours - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - ours])
    ax.errorbar(ours, y, xerr=np.nan_to_num(err), fmt="o", color="#4C72B0", capsize=3,
                label=f"ours ({confidence:.0%} CI)")  # fmt: skip
    ax.scatter(rows["article"], y, marker="D", color=ARTICLE_COLOUR, zorder=3, label="article")
    ax.set_yticks(y)
    ax.set_yticklabels(rows["quantity"])
    ax.set_xlabel(xlabel)
    ax.grid(axis="y", visible=False)


@styled
def article_vs_ours(
    comparison: pd.DataFrame,
    most_of_gap: float | None = None,
    small_gap: float | None = None,
    *,
    confidence: float,
) -> Figure:
    """C7/C8: the article's numbers beside ours (with CIs), losses and fractions in two panels.

    `most_of_gap` / `small_gap` draw the verdict thresholds of C7 and C8 when given;
    `confidence` is the level of the intervals (stats.confidence), as the legend says.
    """
    losses, fractions = _split_comparison(comparison)
    panels = [(rows, label) for rows, label in ((losses, "minimum validation loss"),
                                                 (fractions, "fraction")) if len(rows)]  # fmt: skip
    fig = Figure(figsize=(8.0, 1.2 + 0.45 * len(comparison) + 0.6 * len(panels)), layout="constrained")
    heights = [max(len(rows), 1) for rows, _ in panels] or [1]
    axes = fig.subplots(max(len(panels), 1), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (rows, label) in zip(axes, panels, strict=False):
        _article_vs_ours_panel(ax, rows, label, confidence)
    if len(fractions) and len(panels) == 2:
        ax = axes[1]
        if most_of_gap is not None:
            ax.axvline(most_of_gap, color="#2CA02C", lw=1, ls=":", label=f"C7 threshold {most_of_gap:g}")
        if small_gap is not None:
            ax.axvspan(0, small_gap, color="#2CA02C", alpha=0.08, label=f"C8 'small gap' (0, {small_gap:g})")
    handles: dict = {}
    for ax in axes:  # one legend for both panels, under them, so it never covers a point
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    labels = list(handles)
    fig.legend([handles[k] for k in labels], labels, loc="outside lower center", ncol=len(labels),
               frameon=False, fontsize="small")  # fmt: skip
    return fig
