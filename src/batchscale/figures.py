"""The report's figures: small pure functions from tidy tables to a matplotlib Figure.

Each function reads the tables `batchscale aggregate` / `batchscale claims` write and
returns a new `Figure` built without pyplot, so nothing leaks between figures and the
report notebook decides how to show them (`png_bytes`). Nothing here computes more than
means, medians and standard deviations over seeds: the statistics live in `claims`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from batchscale.scaling import RULES

# One colour per LR rule, the same in every figure, so a reader learns it once.
RULE_COLOURS = {"none": "#4C72B0", "linear": "#DD8452", "sqrt": "#55A868", "linear_warmup": "#C44E52"}
RULE_LABELS = {
    "none": "constant LR (none)",
    "linear": "linear scaling",
    "sqrt": "sqrt scaling",
    "linear_warmup": "linear + warm-up",
}
# Rules sit side by side at each batch size so their seeds' points do not hide each other.
RULE_OFFSET = 0.07  # in log2 units of batch size
ARTICLE_COLOUR = "#555555"


@contextmanager
def _style() -> Iterator[None]:
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        yield


def _styled(func: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure inside the report's style without touching global rcParams."""

    @wraps(func)
    def wrapper(*args, **kwargs) -> Figure:
        with _style():
            return func(*args, **kwargs)

    return wrapper


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (what the report embeds as a data URI)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def rule_colour(rule: str) -> str:
    return RULE_COLOURS.get(rule, "#8172B3")


def rule_label(rule: str) -> str:
    return RULE_LABELS.get(rule, rule)


def ordered_rules(frame: pd.DataFrame) -> list[str]:
    """Rules in the article's order (constant LR first), unknown ones after."""
    present = set(frame["rule"])
    return [r for r in RULES if r in present] + sorted(present - set(RULES))


def batch_palette(batch_sizes: list[int]) -> dict[int, tuple]:
    """Light to dark with batch size: the ordering of the colours is the ordering of B."""
    colours = sns.color_palette("viridis_r", n_colors=max(len(batch_sizes), 2))
    return dict(zip(sorted(batch_sizes), colours[: len(batch_sizes)], strict=True))


def log2_batch_axis(ax: Axes, batch_sizes: list[int]) -> None:
    """Log2 x axis labelled with exactly the batch sizes of the grid."""
    ax.set_xscale("log", base=2)
    ticks = sorted(int(b) for b in batch_sizes)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(b) for b in ticks])
    if ticks:
        ax.set_xlim(ticks[0] / 2**0.4, ticks[-1] * 2**0.4)
    ax.set_xlabel("batch size (log2 scale)")


def log_y_axis(ax: Axes) -> None:
    """Log y axis with plain numbers (0.05, not 5 x 10^-2); 2s and 5s labelled on short ranges."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))

    def minor(value: float, _: int) -> str:
        low, high = ax.get_ylim()
        if low <= 0 or high / low > 100:  # long ranges: decades alone, or labels collide
            return ""
        leading = round(value / 10 ** np.floor(np.log10(value)))
        return f"{value:g}" if leading in (2, 5) else ""

    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _finite(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Diverged members leave inf/NaN behind; drop them so they do not wreck the axes."""
    out = frame.copy()
    out[columns] = out[columns].replace([np.inf, -np.inf], np.nan)
    return out


def _rule_panels_width(count: int) -> float:
    """Width of a figure with one panel per LR rule and a legend at the right: narrower panels
    when there are many rules, so the page does not shrink the figure to unreadable type."""
    return min(4.6, 12.0 / max(count, 1)) * count + 1.2


def _offsets(rules: list[str]) -> dict[str, float]:
    centre = (len(rules) - 1) / 2
    return {rule: 2 ** ((i - centre) * RULE_OFFSET) for i, rule in enumerate(rules)}


@_styled
def learning_curves(history: pd.DataFrame, metrics: tuple[str, ...] = ("train_loss", "val_loss")) -> Figure:
    """Loss vs epoch: one row per metric, one column per LR rule, one line per batch size.

    Line: mean over seeds; band: mean +- 1 standard deviation over seeds.
    """
    metrics = tuple(metrics)
    history = _finite(history, list(metrics))
    rules = ordered_rules(history)
    sizes = sorted(history["batch_size"].unique())
    palette = batch_palette(sizes)
    fig = Figure(figsize=(_rule_panels_width(len(rules)), 3.0 * len(metrics)), layout="constrained")
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


def _panels_per_rule(frame: pd.DataFrame, height: float) -> tuple[Figure, list, list[str], list[int], dict]:
    """One panel per LR rule (shared y), ready for one line per batch size: the figure, its
    axes, the rules, the batch sizes and their colours."""
    rules = ordered_rules(frame)
    sizes = sorted(frame["batch_size"].unique())
    fig = Figure(figsize=(_rule_panels_width(len(rules)), height), layout="constrained")
    axes = fig.subplots(1, len(rules), squeeze=False, sharey=True)[0]
    return fig, list(axes), rules, sizes, batch_palette(sizes)


@_styled
def mean_curves(curves: pd.DataFrame, metric: str, ylabel: str) -> Figure:
    """A seed-mean curve from curves.csv vs epoch: one panel per LR rule, one line per batch size."""
    curves = _finite(curves, [metric])
    fig, axes, rules, sizes, palette = _panels_per_rule(curves, height=3.0)
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


def _per_seed_points(ax: Axes, runs: pd.DataFrame, metric: str) -> None:
    """One small point per seed and a line through the means, per LR rule, on `ax`."""
    rules = ordered_rules(runs)
    offsets = _offsets(rules)
    for rule in rules:
        cell = runs[runs["rule"] == rule].dropna(subset=[metric])
        if cell.empty:
            continue
        x = cell["batch_size"] * offsets[rule]
        ax.scatter(x, cell[metric], s=14, alpha=0.45, color=rule_colour(rule), lw=0)
        means = cell.groupby("batch_size")[metric].mean()
        ax.plot(
            means.index * offsets[rule], means.values, "o-", color=rule_colour(rule), ms=6, lw=1.8,
            label=f"{rule_label(rule)} (mean of {cell['seed'].nunique()} seeds)",
        )  # fmt: skip
    log2_batch_axis(ax, list(runs["batch_size"].unique()))


@_styled
def per_seed_vs_batch(runs: pd.DataFrame, metric: str, ylabel: str, log_y: bool = False) -> Figure:
    """`metric` vs batch size per LR rule: one small point per seed, a line through the means."""
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    _per_seed_points(ax, _finite(runs, [metric]), metric)
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
NOISE_COLOUR = "#555555"


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


@_styled
def grad_competition_vs_batch(runs: pd.DataFrame) -> Figure:
    """C10: |mean per-example gradient| / mean |per-example gradient| vs batch size, with the
    1/sqrt(B) curve pure noise would follow."""
    runs = _finite(runs, [COMPETITION])
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    _per_seed_points(ax, runs, COMPETITION)
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
    offsets = _offsets(rules)
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


@_styled
def sharpness_vs_batch(sharpness: pd.DataFrame) -> Figure:
    """C5: top Hessian eigenvalue and epsilon-sharpness vs batch size; points per seed, mean lines."""
    sharpness = _finite(sharpness, list(SHARPNESS_PANELS))
    fig = Figure(figsize=(10.0, 3.8), layout="constrained")
    axes = fig.subplots(1, len(SHARPNESS_PANELS))
    for ax, metric in zip(axes, SHARPNESS_PANELS, strict=True):
        _sharpness_panel(ax, sharpness, metric)
    handles, labels = _sharpness_legend(ordered_rules(sharpness))
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False, fontsize="small")
    return fig


def _thread_label(threads: int) -> str:
    return "1 thread" if threads == 1 else f"{threads} threads"


@_styled
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


@_styled
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


@_styled
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


# ---------------------------------------------------------------------------------------
# Loss landscapes (C12): Keskar's interpolation, Li et al.'s 1-D slices and 2-D contours.
# ---------------------------------------------------------------------------------------


def _mean_band(ax: Axes, frame: pd.DataFrame, x: str, y: str, colour, label: str) -> None:
    """Mean of `y` over seeds at each `x`, with a band of +- 1 standard deviation."""
    stats = frame.groupby(x)[y].agg(["mean", "std"])
    mean, sd = stats["mean"], stats["std"].fillna(0.0)
    ax.plot(stats.index, mean, color=colour, lw=1.6, label=label)
    ax.fill_between(stats.index, mean - sd, mean + sd, color=colour, alpha=0.2, lw=0)


def _solution_marker(ax: Axes, alpha: float, text: str) -> None:
    ax.axvline(alpha, color="grey", lw=1, ls="--")
    ax.text(alpha, 1.01, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize="small")


@_styled
def interpolation_curves(
    interpolation: pd.DataFrame, small_batch: int | None = None, large_batch: int | None = None
) -> Figure:
    """Keskar et al.'s 1-D plot: loss on the line from the small-batch solution (alpha 0) to the
    large-batch one (alpha 1), mean over seeds with a band."""
    interpolation = _finite(interpolation, ["train_loss", "val_loss"])
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    _mean_band(ax, interpolation, "alpha", "train_loss", "#4C72B0", "training loss")
    _mean_band(ax, interpolation, "alpha", "val_loss", "#C44E52", "validation loss")
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


@_styled
def slice_curves(slices: pd.DataFrame, centred: bool = True) -> Figure:
    """Li et al.'s 1-D filter-normalised slices: training loss vs alpha around each solution,
    one panel per LR rule, one line (mean over seeds, +- 1 sd band) per batch size.

    `centred`: plot L(alpha) - L(0) per run (the C12 statistic is this curve's bend at 0).
    """
    slices = _finite(slices, ["train_loss"])
    if centred:
        slices = _rise_above_centre(slices)
    fig, axes, rules, sizes, palette = _panels_per_rule(slices, height=3.4)
    for ax, rule in zip(axes, rules, strict=True):
        for size in sizes:
            cell = slices[(slices["rule"] == rule) & (slices["batch_size"] == size)]
            if len(cell):
                _mean_band(ax, cell, "alpha", "train_loss", palette[size], f"B={size}")
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


@_styled
def contour_panels(contour: pd.DataFrame) -> Figure:
    """Li et al.'s 2-D slices side by side (smallest batch to largest) on the same colour levels,
    so the basins' widths compare; the trained weights sit at the centre (+)."""
    contour = _rise_above_minimum(_finite(contour, ["train_loss"]).dropna(subset=["train_loss"]))
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


# ---------------------------------------------------------------------------------------
# Beyond the article: the LR rules side by side, steps to target (Shallue et al. 2019) and the
# gradient noise scale (McCandlish et al. 2018).
# ---------------------------------------------------------------------------------------

WARMUP_COLOUR = "#BBBBBB"


@_styled
def rules_compared(runs: pd.DataFrame, history: pd.DataFrame, warmup_epochs: int | None = None) -> Figure:
    """The LR rules side by side. Left: minimum validation loss vs batch size (points per seed,
    a line through the means per rule). Right: validation loss per epoch at the largest batch
    size, one line per rule (mean over seeds, +- 1 sd band); `warmup_epochs` shades the ramp."""
    fig = Figure(figsize=(11.0, 3.9), layout="constrained")
    left, right = fig.subplots(1, 2)
    _per_seed_points(left, _finite(runs, ["min_val_loss"]), "min_val_loss")
    left.set_ylabel("minimum validation loss")
    left.set_title("every batch size")
    largest = int(history["batch_size"].max())
    curves = _finite(history[history["batch_size"] == largest], ["val_loss"])
    if warmup_epochs:
        right.axvspan(0, warmup_epochs, color=WARMUP_COLOUR, alpha=0.25, lw=0,
                      label=f"warm-up ramp ({warmup_epochs} epochs)")  # fmt: skip
    for rule in ordered_rules(curves):
        _mean_band(
            right, curves[curves["rule"] == rule], "epoch", "val_loss", rule_colour(rule), rule_label(rule)
        )
    right.set_title(f"learning curves at the largest batch, B={largest}")
    right.set_xlabel("epoch")
    right.set_ylabel("validation loss")
    handles, labels = right.get_legend_handles_labels()
    if warmup_epochs:  # the rules first, then what the shading means
        handles, labels = handles[1:] + handles[:1], labels[1:] + labels[:1]
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False, fontsize="small")
    return fig


def _medians_counting_misses(cell: pd.DataFrame, metric: str) -> pd.Series:
    """Median over seeds per batch size, a missing value (never got there) counting as +inf."""
    return cell.assign(**{metric: cell[metric].fillna(np.inf)}).groupby("batch_size")[metric].median()


def _mark_critical_batch(ax: Axes, value: float, sizes: list[int]) -> None:
    """A vertical line at the predicted critical batch size; the axis widens to show it when it
    lies within a factor 8 of the grid, else an arrow at the edge points the way."""
    low, high = min(sizes), max(sizes)
    label = f"predicted critical batch size, {value:.3g}"
    if low / 8 <= value <= high * 8:
        left, right = ax.get_xlim()
        ax.set_xlim(min(left, value / 2**0.3), max(right, value * 2**0.3))
        ax.axvline(value, color=NOISE_COLOUR, ls=":", lw=1.8, label=label)
        return
    side = 0.99 if value > high else 0.01
    arrow = f"{label} \u2192" if value > high else f"\u2190 {label}"
    ax.text(side, 0.97, arrow, transform=ax.transAxes, ha="right" if value > high else "left", va="top",
            fontsize="small", color=NOISE_COLOUR)  # fmt: skip


@_styled
def steps_to_target_vs_batch(
    runs: pd.DataFrame, critical_batch: float | None = None, reference_rule: str = "linear"
) -> Figure:
    """Shallue et al.'s picture: optimizer steps to the target validation loss vs batch size on
    log-log axes. Points: one per seed; line: median over seeds per rule (a run that never
    reached the target counts as infinitely many steps). Dashed: perfect scaling, steps
    proportional to 1/B through `reference_rule`'s median at the smallest batch size."""
    metric = "steps_to_target"
    runs = _finite(runs, [metric])
    rules = ordered_rules(runs)
    offsets = _offsets(rules)
    sizes = sorted(int(b) for b in runs["batch_size"].unique())
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.subplots()
    for rule in rules:
        cell = runs[runs["rule"] == rule]
        reached = cell.dropna(subset=[metric])
        ax.scatter(reached["batch_size"] * offsets[rule], reached[metric], s=14, alpha=0.45,
                   color=rule_colour(rule), lw=0)  # fmt: skip
        medians = _medians_counting_misses(cell, metric)
        medians = medians[np.isfinite(medians)]
        ax.plot(medians.index * offsets[rule], medians.values, "o-", color=rule_colour(rule), ms=6, lw=1.8,
                label=f"{rule_label(rule)} (median)")  # fmt: skip
    reference = _medians_counting_misses(runs[runs["rule"] == reference_rule], metric)
    if len(reference) and np.isfinite(reference.iloc[0]):
        smallest, steps = reference.index[0], reference.iloc[0]
        line = np.geomspace(smallest, sizes[-1], 50)
        ax.plot(line, steps * smallest / line, ls="--", color=ARTICLE_COLOUR, lw=1.4,
                label="perfect scaling (steps \u221d 1/B)")  # fmt: skip
    log2_batch_axis(ax, sizes)
    if critical_batch is not None and np.isfinite(critical_batch) and critical_batch > 0:
        _mark_critical_batch(ax, critical_batch, sizes)
    log_y_axis(ax)
    ax.set_ylabel("optimizer steps to target (log scale)")
    ax.legend(frameon=False, fontsize="small")
    return fig


NOISE_WEIGHTS = {
    "init": "initial weights",
    "best": "best weights (min. val loss)",
    "final": "final weights (last epoch)",
}


@_styled
def noise_scale_vs_batch(noise: pd.DataFrame) -> Figure:
    """McCandlish et al.'s simple noise scale B_simple vs the batch size the weights were trained
    with, one panel per weight set (initial, best, final), log y. Points: one per seed; line:
    median over seeds per rule; dashed: B_simple = B (batches below it are mostly noise)."""
    noise = _finite(noise, ["b_simple"])
    noise = noise[noise["b_simple"] > 0]  # NaN: the |G|^2 estimate was not positive
    panels = [w for w in NOISE_WEIGHTS if (noise["weights"] == w).any()]
    rules = ordered_rules(noise)
    offsets = _offsets(rules)
    sizes = sorted(int(b) for b in noise["batch_size"].unique())
    fig = Figure(figsize=(3.7 * len(panels) + 0.8, 3.9), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, which in zip(axes, panels, strict=True):
        part = noise[noise["weights"] == which]
        for rule in rules:
            cell = part[part["rule"] == rule]
            if cell.empty:
                continue
            ax.scatter(cell["batch_size"] * offsets[rule], cell["b_simple"], s=14, alpha=0.45,
                       color=rule_colour(rule), lw=0)  # fmt: skip
            medians = cell.groupby("batch_size")["b_simple"].median()
            ax.plot(medians.index * offsets[rule], medians.values, "o-", color=rule_colour(rule), ms=5,
                    lw=1.6, label=f"{rule_label(rule)} (median)")  # fmt: skip
        ax.plot(sizes, sizes, ls="--", color=ARTICLE_COLOUR, lw=1.2, label="B_simple = batch size")
        log2_batch_axis(ax, sizes)
        ax.set_title(NOISE_WEIGHTS[which])
    log_y_axis(axes[0])
    axes[0].set_ylabel("B_simple = tr(\u03a3) / |G|\u00b2 (log scale)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False, fontsize="small")
    return fig


@_styled
def bench_bars(bench: pd.DataFrame) -> Figure:
    """ms per model-epoch of each benchmark variant (log x), one panel per model, one group of
    bars per batch size, with the arithmetic floor (FLOPs / matmul rate) as a dotted line."""
    models = list(dict.fromkeys(bench["model"]))
    fig = Figure(figsize=(5.2 * len(models), 0.9 + 0.55 * len(bench) / len(models)))
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models, strict=True):
        rows = bench[bench["model"] == model].reset_index(drop=True)
        labels = [f"B={b}: {v}" for b, v in zip(rows["batch_size"], rows["variant"], strict=True)]
        ax.barh(range(len(rows)), rows["ms_per_model_epoch"], color=sns.color_palette("crest", len(rows)))
        for i, row in rows.iterrows():
            ax.text(row["ms_per_model_epoch"], i, f" {row['speedup_vs_naive']:.2f}x", va="center", fontsize=8)
            ax.plot([row["flop_floor_ms"]] * 2, [i - 0.4, i + 0.4], color=ARTICLE_COLOUR, linestyle=":")
        ax.set_yticks(range(len(rows)), labels)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("ms per model-epoch (log scale)")
        ax.set_title(model)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------
# Figure files: the report's main figures as PNG files (`batchscale figures`), for Snakemake's
# own report (`snakemake --report`). Drawn by the functions above, the ones the notebook calls,
# with the same arguments; a figure whose measurements are missing becomes a note saying so.
# ---------------------------------------------------------------------------------------


class Tables:
    """The tables of a folder by name (`tables["runs"]` is runs.csv), each read once on first
    use; an absent or empty one is an empty frame, as in the notebook."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self._frames: dict[str, pd.DataFrame] = {}

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self._frames:
            from batchscale.io import read_table

            self._frames[name] = read_table(self.folder / f"{name}.csv")
        return self._frames[name]


@_styled
def not_measured(message: str) -> Figure:
    """A small figure that says, in words, why there is nothing to plot."""
    fig = Figure(figsize=(6.0, 1.2))
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, color=ARTICLE_COLOUR)
    return fig


def _has(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and frame[column].notna().any()


FigureFile = Callable[[Tables, dict], Figure]


def _from(table: str, column: str, what: str, draw: Callable[[pd.DataFrame], Figure]) -> FigureFile:
    """A figure file drawn from one table, or a note when its `column` holds no values."""

    def build(tables: Tables, params: dict) -> Figure:
        frame = tables[table]
        if not _has(frame, column):
            return not_measured(f"No {what} in {table}.csv: nothing to plot.")
        return draw(frame)

    return build


def warmup_ramp_epochs(runs: pd.DataFrame, history: pd.DataFrame, train: dict) -> int | None:
    """The warm-up epochs `rules_compared` shades: only when linear_warmup ran and its largest
    batch size ramps at all (at the base batch size its LR is the base LR: no ramp)."""
    largest = int(history["batch_size"].max())
    ramps = "linear_warmup" in set(runs["rule"]) and largest != train["base_batch_size"]
    return train["warmup_epochs"] if ramps else None


def _rules_compared_file(tables: Tables, params: dict) -> Figure:
    runs, history = tables["runs"], tables["history"]
    return rules_compared(runs, history, warmup_ramp_epochs(runs, history, params["train"]))


def _steps_to_target_file(tables: Tables, params: dict) -> Figure:
    from batchscale import analysis

    runs = tables["runs"]
    if not analysis.has_steps_to_target(runs) or runs["steps_to_target"].isna().all():
        return not_measured("No run reached the target validation loss (or steps were not counted).")
    reference = analysis.reference_rule(runs)
    critical = analysis.critical_batch_size(tables["noise"], reference)
    return steps_to_target_vs_batch(runs, critical.value if critical is not None else None, reference)


def _article_vs_ours_file(tables: Tables, params: dict) -> Figure:
    from batchscale.claims import MOST_OF_GAP, SMALL_GAP

    confidence = params["stats"]["confidence"]
    draw = _from("article_comparison", "ours", "comparison",
                 lambda f: article_vs_ours(f, MOST_OF_GAP, SMALL_GAP, confidence=confidence))  # fmt: skip
    return draw(tables, params)


def _speedup_file(tables: Tables, params: dict) -> Figure:
    timing = tables["timing"]
    if timing.empty or timing["threads"].nunique() < 2:
        return not_measured("Epochs were timed at one thread count only: no speed-up to show.")
    return parallel_speedup_vs_batch(timing)


def _interpolation_file(tables: Tables, params: dict) -> Figure:
    """Labelled with the batch sizes the landscape step compared, as contour.csv names them."""
    contour = tables["contour"]
    sizes = []
    if _has(contour, "batch_size"):
        sizes = [int(contour["batch_size"].min()), int(contour["batch_size"].max())]
    draw = _from("interpolation", "train_loss", "interpolation", lambda f: interpolation_curves(f, *sizes))
    return draw(tables, params)


# File stem -> how to draw it from the tables and the parameters (the `train` and `stats` sections).
FIGURE_FILES: dict[str, FigureFile] = {
    "learning_curves": _from("history", "train_loss", "learning curves", learning_curves),
    "val_accuracy": _from(
        "curves", "val_acc", "accuracy curves", lambda f: mean_curves(f, "val_acc", "validation accuracy")
    ),
    "c1_train_loss_auc": _from("runs", "train_loss_auc", "training losses", train_loss_auc_vs_batch),
    "c2_min_val_loss": _from("runs", "min_val_loss", "validation losses", min_val_loss_vs_batch),
    "c3_epoch_seconds": _from("timing", "epoch_seconds", "timings", epoch_seconds_vs_batch),
    "c4_best_epoch": _from("runs", "best_epoch", "best epochs", best_epoch_vs_batch),
    "c5_sharpness": _from("sharpness", "top_eigenvalue", "sharpness measurements", sharpness_vs_batch),
    "c6_distance": _from("runs", "dist_final", "distances from the initial weights", distance_vs_batch),
    "c7_article_vs_ours": _article_vs_ours_file,
    "c9_time_to_min": _from("runs", "time_to_min_s", "wall-clock times", time_to_min_vs_batch),
    "c10_update_norm": _from("runs", "mean_update_norm", "update norms", update_norm_vs_batch),
    "c10_grad_competition": _from(
        "runs", COMPETITION, "gradient-competition measurements", grad_competition_vs_batch
    ),
    "c11_parallel_speedup": _speedup_file,
    "c12_slices": _from("slices", "train_loss", "loss slices", slice_curves),
    "c12_interpolation": _interpolation_file,
    "c12_contour": _from("contour", "train_loss", "loss contours", contour_panels),
    "rules_compared": _rules_compared_file,
    "steps_to_target": _steps_to_target_file,
    "noise_scale": _from("noise", "b_simple", "gradient noise-scale measurements", noise_scale_vs_batch),
    "bench": _from("bench", "ms_per_model_epoch", "benchmark timings", bench_bars),
}


def write_figure_files(tables: Path | str, params: dict, outs: list[Path | str]) -> None:
    """Draw the figure each output's file stem names (see FIGURE_FILES) and write it as PNG.

    Every name is checked before anything is drawn; each file is written atomically."""
    from batchscale.io import atomic_path

    outs = [Path(out) for out in outs]
    unknown = sorted({out.stem for out in outs} - set(FIGURE_FILES))
    if unknown:
        raise ValueError(f"no such figure: {', '.join(unknown)} (known: {', '.join(FIGURE_FILES)})")
    frames = Tables(tables)
    for out in outs:
        png = png_bytes(FIGURE_FILES[out.stem](frames, params))
        with atomic_path(out) as tmp:
            tmp.write_bytes(png)
