"""What every figure of the report shares: the style, one colour per LR rule, the batch-size
and log axes, per-seed points with a line through the means, and PNG bytes.

The drawing functions (figures_claims, figures_landscape, figures_beyond) are small pure
functions from tidy tables to a new matplotlib `Figure` built without pyplot, so nothing
leaks between figures and the report decides how to show them (`png_bytes`). Nothing in them
computes more than means, medians and standard deviations over seeds: the statistics live in
`claims` and `analysis`.
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
RULE_COLOURS = {
    "none": "#4C72B0", "linear": "#DD8452", "sqrt": "#55A868", "linear_warmup": "#C44E52",
    "malladi": "#8172B3",
}  # fmt: skip
RULE_LABELS = {
    "none": "constant LR (none)",
    "linear": "linear scaling",
    "sqrt": "sqrt scaling",
    "linear_warmup": "linear + warm-up",
    "malladi": "Malladi's sqrt (LR, betas, eps)",
}
# Rules sit side by side at each batch size so their seeds' points do not hide each other.
RULE_OFFSET = 0.07  # in log2 units of batch size
ARTICLE_COLOUR = "#555555"


@contextmanager
def _style() -> Iterator[None]:
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        yield


def styled(func: Callable[..., Figure]) -> Callable[..., Figure]:
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


def finite(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Diverged members leave inf/NaN behind; drop them so they do not wreck the axes."""
    out = frame.copy()
    out[columns] = out[columns].replace([np.inf, -np.inf], np.nan)
    return out


def rule_panels_width(count: int) -> float:
    """Width of a figure with one panel per LR rule and a legend at the right: narrower panels
    when there are many rules, so the page does not shrink the figure to unreadable type."""
    return min(4.6, 12.0 / max(count, 1)) * count + 1.2


def rule_offsets(rules: list[str]) -> dict[str, float]:
    centre = (len(rules) - 1) / 2
    return {rule: 2 ** ((i - centre) * RULE_OFFSET) for i, rule in enumerate(rules)}


def panels_per_rule(frame: pd.DataFrame, height: float) -> tuple[Figure, list, list[str], list[int], dict]:
    """One panel per LR rule (shared y), ready for one line per batch size: the figure, its
    axes, the rules, the batch sizes and their colours."""
    rules = ordered_rules(frame)
    sizes = sorted(frame["batch_size"].unique())
    fig = Figure(figsize=(rule_panels_width(len(rules)), height), layout="constrained")
    axes = fig.subplots(1, len(rules), squeeze=False, sharey=True)[0]
    return fig, list(axes), rules, sizes, batch_palette(sizes)


def per_seed_points(ax: Axes, runs: pd.DataFrame, metric: str) -> None:
    """One small point per seed and a line through the means, per LR rule, on `ax`."""
    rules = ordered_rules(runs)
    offsets = rule_offsets(rules)
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


def mean_band(ax: Axes, frame: pd.DataFrame, x: str, y: str, colour, label: str) -> None:
    """Mean of `y` over seeds at each `x`, with a band of +- 1 standard deviation."""
    stats = frame.groupby(x)[y].agg(["mean", "std"])
    mean, sd = stats["mean"], stats["std"].fillna(0.0)
    ax.plot(stats.index, mean, color=colour, lw=1.6, label=label)
    ax.fill_between(stats.index, mean - sd, mean + sd, color=colour, alpha=0.2, lw=0)


NOISE_COLOUR = "#555555"


@styled
def not_measured(message: str) -> Figure:
    """A small figure that says, in words, why there is nothing to plot."""
    fig = Figure(figsize=(6.0, 1.2))
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, color=ARTICLE_COLOUR)
    return fig
