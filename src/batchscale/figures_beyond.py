"""The figures beyond the article: the LR rules side by side, steps to target (Shallue et al.
2019), the gradient noise scale (McCandlish et al. 2018), and the speed benchmark."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from batchscale.figures_style import (
    ARTICLE_COLOUR,
    NOISE_COLOUR,
    finite,
    log2_batch_axis,
    log_y_axis,
    mean_band,
    ordered_rules,
    per_seed_points,
    rule_colour,
    rule_label,
    rule_offsets,
    styled,
)

WARMUP_COLOUR = "#BBBBBB"


@styled
def rules_compared(runs: pd.DataFrame, history: pd.DataFrame, warmup_epochs: int | None = None) -> Figure:
    """The LR rules side by side. Left: minimum validation loss vs batch size (points per seed,
    a line through the means per rule). Right: validation loss per epoch at the largest batch
    size, one line per rule (mean over seeds, +- 1 sd band); `warmup_epochs` shades the ramp."""
    fig = Figure(figsize=(11.0, 3.9), layout="constrained")
    left, right = fig.subplots(1, 2)
    per_seed_points(left, finite(runs, ["min_val_loss"]), "min_val_loss")
    left.set_ylabel("minimum validation loss")
    left.set_title("every batch size")
    largest = int(history["batch_size"].max())
    curves = finite(history[history["batch_size"] == largest], ["val_loss"])
    if warmup_epochs:
        right.axvspan(0, warmup_epochs, color=WARMUP_COLOUR, alpha=0.25, lw=0,
                      label=f"warm-up ramp ({warmup_epochs} epochs)")  # fmt: skip
    for rule in ordered_rules(curves):
        mean_band(
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


@styled
def steps_to_target_vs_batch(
    runs: pd.DataFrame, critical_batch: float | None = None, reference_rule: str = "linear"
) -> Figure:
    """Shallue et al.'s picture: optimizer steps to the target validation loss vs batch size on
    log-log axes. Points: one per seed; line: median over seeds per rule (a run that never
    reached the target counts as infinitely many steps). Dashed: perfect scaling, steps
    proportional to 1/B through `reference_rule`'s median at the smallest batch size."""
    metric = "steps_to_target"
    runs = finite(runs, [metric])
    rules = ordered_rules(runs)
    offsets = rule_offsets(rules)
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


@styled
def noise_scale_vs_batch(noise: pd.DataFrame) -> Figure:
    """McCandlish et al.'s simple noise scale B_simple vs the batch size the weights were trained
    with, one panel per weight set (initial, best, final), log y. Points: one per seed; line:
    median over seeds per rule; dashed: B_simple = B (batches below it are mostly noise)."""
    noise = finite(noise, ["b_simple"])
    noise = noise[noise["b_simple"] > 0]  # NaN: the |G|^2 estimate was not positive
    panels = [w for w in NOISE_WEIGHTS if (noise["weights"] == w).any()]
    rules = ordered_rules(noise)
    offsets = rule_offsets(rules)
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


@styled
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
