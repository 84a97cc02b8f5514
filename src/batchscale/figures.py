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

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from batchscale.scaling import RULES

# One colour per LR rule, the same in every figure, so a reader learns it once.
RULE_COLOURS = {"none": "#4C72B0", "linear": "#DD8452", "sqrt": "#55A868"}
RULE_LABELS = {"none": "constant LR (none)", "linear": "linear scaling", "sqrt": "sqrt scaling"}
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
    fig = Figure(figsize=(4.6 * len(rules) + 1.2, 3.0 * len(metrics)), layout="constrained")
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


@_styled
def mean_curves(curves: pd.DataFrame, metric: str, ylabel: str) -> Figure:
    """A seed-mean curve from curves.csv vs epoch: one panel per LR rule, one line per batch size."""
    curves = _finite(curves, [metric])
    rules = ordered_rules(curves)
    sizes = sorted(curves["batch_size"].unique())
    palette = batch_palette(sizes)
    fig = Figure(figsize=(4.6 * len(rules) + 1.2, 3.0), layout="constrained")
    axes = fig.subplots(1, len(rules), squeeze=False, sharey=True)[0]
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


@_styled
def per_seed_vs_batch(runs: pd.DataFrame, metric: str, ylabel: str, log_y: bool = False) -> Figure:
    """`metric` vs batch size per LR rule: one small point per seed, a line through the means."""
    runs = _finite(runs, [metric])
    rules = ordered_rules(runs)
    offsets = _offsets(rules)
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
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


def parallel_speedup(timing: pd.DataFrame) -> pd.Series:
    """Median seconds per epoch at 1 thread / at the most threads timed, by batch size."""
    medians = timing.groupby(["batch_size", "threads"])["epoch_seconds"].median().unstack("threads")
    return (medians[medians.columns.min()] / medians[medians.columns.max()]).rename("speedup")


@_styled
def parallel_speedup_vs_batch(timing: pd.DataFrame) -> Figure:
    """Speed-up from all threads over one thread vs batch size (the C11 picture)."""
    speedup = parallel_speedup(timing)
    most = int(timing["threads"].max())
    fig = Figure(figsize=(6.0, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(speedup.index, speedup.values, "o-", color="#C44E52", ms=6)
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    log2_batch_axis(ax, list(speedup.index))
    ax.set_ylabel(f"speed-up, {_thread_label(most)} vs 1 thread")
    return fig


def _split_comparison(comparison: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Losses (C7's inputs) and fractions (C7's and C8's statistics) live on different scales."""
    is_loss = comparison["quantity"].str.startswith("min val loss")
    return comparison[is_loss], comparison[~is_loss]


def _article_vs_ours_panel(ax: Axes, rows: pd.DataFrame, xlabel: str) -> None:
    y = np.arange(len(rows))[::-1]
    ours = rows["ours"].to_numpy(float)
    err = np.vstack([ours - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - ours])
    ax.errorbar(ours, y, xerr=np.nan_to_num(err), fmt="o", color="#4C72B0", capsize=3, label="ours (95% CI)")
    ax.scatter(rows["article"], y, marker="D", color=ARTICLE_COLOUR, zorder=3, label="article")
    ax.set_yticks(y)
    ax.set_yticklabels(rows["quantity"])
    ax.set_xlabel(xlabel)
    ax.grid(axis="y", visible=False)


@_styled
def article_vs_ours(
    comparison: pd.DataFrame, most_of_gap: float | None = None, small_gap: float | None = None
) -> Figure:
    """C7/C8: the article's numbers beside ours (with CIs), losses and fractions in two panels.

    `most_of_gap` / `small_gap` draw the verdict thresholds of C7 and C8 when given.
    """
    losses, fractions = _split_comparison(comparison)
    panels = [(rows, label) for rows, label in ((losses, "minimum validation loss"),
                                                 (fractions, "fraction")) if len(rows)]  # fmt: skip
    fig = Figure(figsize=(8.0, 1.2 + 0.45 * len(comparison) + 0.6 * len(panels)), layout="constrained")
    heights = [max(len(rows), 1) for rows, _ in panels] or [1]
    axes = fig.subplots(max(len(panels), 1), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (rows, label) in zip(axes, panels, strict=False):
        _article_vs_ours_panel(ax, rows, label)
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
