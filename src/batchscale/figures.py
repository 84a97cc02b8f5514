"""The report's figures, each declared once: the figure registry.

Each entry of `REGISTRY` says everything about one figure: its file stem
(reports/figures/<stem>.png), the report section it is shown in (a claim, "C1", or a
section's anchor, "curves", "beyond-steps", "speed"), its category and title in Snakemake's
own report, its caption (text from figure_captions), the function that draws it from the
tables, what is missing when there is nothing to draw (and what the HTML report says
instead), and whether the workflow makes it for the parameters at all. The workflow's
`figures` rule takes its outputs, report categories, labels and captions from here;
`batchscale figures` draws the PNGs and writes their captions (`write_figure_files`); the
report notebook shows each section's entries (`in_section`). Adding a figure is one entry
here, its drawing function and its caption.

The drawing functions live in figures_claims, figures_landscape, figures_beyond and
figures_tuned (their shared style in figures_style) and read as attributes of this module too
(`figures.learning_curves`). They are imported on first use: the workflow reads the registry
to plan its jobs, and that should not load matplotlib.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from batchscale import analysis, config
from batchscale import figure_captions as cap
from batchscale import report_html as rp
from batchscale import report_tuned as rtuned
from batchscale.io import read_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def __getattr__(name: str):
    """The drawing functions and their helpers by name (`figures.learning_curves`,
    `figures.png_bytes`), imported when first asked for."""
    from batchscale import figures_beyond, figures_claims, figures_landscape, figures_style, figures_tuned

    for module in (figures_style, figures_claims, figures_landscape, figures_beyond, figures_tuned):
        if not name.startswith("__") and hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Tables:
    """The tables of a folder by name (`tables["runs"]` is runs.csv), each read once on first
    use; an absent or empty one is an empty frame."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self._frames: dict[str, pd.DataFrame] = {}

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self._frames:
            self._frames[name] = read_table(self.folder / f"{name}.csv")
        return self._frames[name]


# Every function of an entry takes the tables and the validated parameters.
Draw = Callable[[Tables, dict], "Figure"]
Text = Callable[[Tables, dict], str]  # HTML
Missing = Callable[[Tables, dict], "str | None"]  # why there is nothing to draw (plain text), or None


@dataclass(frozen=True)
class FigureEntry:
    """One figure of the report (see the module's docstring)."""

    stem: str  # reports/figures/<stem>.png, and its caption <stem>.rst
    section: str  # the report section that shows it: a claim id or a section's anchor
    category: str  # its category in Snakemake's report
    title: str  # its label there
    draw: Draw
    caption: Text  # under the figure in the HTML report; in Snakemake's report after the title
    missing: Missing = lambda tables, params: None  # the figure file shows this text instead
    note: Text | None = None  # what the HTML report says instead (None: nothing)
    made: Callable[[dict], bool] = lambda params: True  # whether the workflow makes it at all


def _needs(table: str, column: str, what: str) -> Missing:
    """Missing when `table` has no values in `column`."""

    def missing(tables: Tables, params: dict) -> str | None:
        return None if cap.has(tables[table], column) else f"No {what} in {table}.csv: nothing to plot."

    return missing


def _plot(function: str, table: str, *args: object) -> Draw:
    """Draw with the drawing function of that name on one table (and fixed arguments)."""

    def draw(tables: Tables, params: dict) -> Figure:
        return __getattr__(function)(tables[table], *args)

    return draw


# --- drawings that need more than one table ---------------------------------------------------


def _draw_article_vs_ours(tables: Tables, params: dict) -> Figure:
    from batchscale.claims import MOST_OF_GAP, SMALL_GAP

    confidence = params["stats"]["confidence"]
    article_vs_ours = __getattr__("article_vs_ours")
    return article_vs_ours(tables["article_comparison"], MOST_OF_GAP, SMALL_GAP, confidence=confidence)


def _one_thread_count(tables: Tables, params: dict) -> str | None:
    timing = tables["timing"]
    if timing.empty or timing["threads"].nunique() < 2:
        return "Epochs were timed at one thread count only: no speed-up to show."
    return None


def _draw_interpolation(tables: Tables, params: dict) -> Figure:
    return __getattr__("interpolation_curves")(tables["interpolation"], *cap.landscape_pair(tables))


def _draw_rules_compared(tables: Tables, params: dict) -> Figure:
    runs, history = tables["runs"], tables["history"]
    ramp = analysis.warmup_ramp_epochs(runs, history, params["train"])
    return __getattr__("rules_compared")(runs, history, ramp)


def _no_steps(tables: Tables, params: dict) -> str | None:
    runs = tables["runs"]
    if not analysis.has_steps_to_target(runs) or runs["steps_to_target"].isna().all():
        return "No run reached the target validation loss (or steps were not counted)."
    return None


def _draw_steps(tables: Tables, params: dict) -> Figure:
    runs, critical = tables["runs"], cap.critical_batch(tables)
    value = critical.value if critical is not None else None
    return __getattr__("steps_to_target_vs_batch")(runs, value, analysis.reference_rule(runs))


def _landscape_pair_exists(params: dict) -> bool:
    return config.landscape_pair(params) is not None


def _tuned_in_grid(params: dict) -> bool:
    return "tuned" in params.get("grid", {}).get("lr_rules", ())


def _no_sweep(tables: Tables, params: dict) -> str | None:
    if rtuned.has_tuned(tables["tuned_lr"]):
        return None
    return "No tuned-LR sweep in tuning.csv (or every tuned run diverged): nothing to plot."


def _no_tuned_steps(tables: Tables, params: dict) -> str | None:
    if _no_sweep(tables, params) or tables["critical_batch"].empty:
        return _no_sweep(tables, params) or "No critical batch size in critical_batch.csv: nothing to plot."
    steps = pd.to_numeric(tables["tuned_lr"]["steps_to_target"], errors="coerce")
    if not np.isfinite(steps.to_numpy(dtype=float)).any():  # inf: never reached
        return "No tuned run reached the target validation loss (or steps were not counted)."
    return None


def _tried_lrs(tables: Tables) -> pd.DataFrame | None:
    sweep = tables["tuning"]
    return sweep[["batch_size", "lr"]].drop_duplicates() if {"batch_size", "lr"} <= set(sweep) else None


def _draw_tuned_lr(tables: Tables, params: dict) -> Figure:
    base, confidence = params["train"]["base_batch_size"], params["stats"]["confidence"]
    return __getattr__("tuned_lr_vs_batch")(tables["tuned_lr"], base, confidence, _tried_lrs(tables))


def _draw_critical_measured(tables: Tables, params: dict) -> Figure:
    sweep = tables["tuning"] if "steps_to_target" in tables["tuning"] else None
    return __getattr__("critical_batch_measured")(tables["tuned_lr"], tables["critical_batch"], sweep)


# --- the registry ----------------------------------------------------------------------------

# fmt: off
# FigureEntry(stem, section, category, title, draw, caption, missing=, note=, made=)
REGISTRY: tuple[FigureEntry, ...] = (
    FigureEntry(
        "learning_curves", "curves", "Learning curves", "training and validation loss per epoch",
        _plot("learning_curves", "history"), cap.learning_curves,
        missing=_needs("history", "train_loss", "learning curves"),
    ),
    FigureEntry(
        "val_accuracy", "curves", "Learning curves", "validation accuracy per epoch",
        _plot("curve_by_cell", "curves", "val_acc", "validation accuracy"),
        cap.fixed("Validation accuracy per epoch, mean over seeds."),
        missing=_needs("curves", "val_acc", "accuracy curves"),
    ),
    FigureEntry(
        "c1_train_loss_auc", "C1", "C01 training loss", "mean training loss vs batch size",
        _plot("train_loss_auc_vs_batch", "runs"),
        cap.per_seed("Mean training loss over all epochs (the area under the training curve) vs batch size.",
                  " The verdict uses the constant-LR rule."),
        missing=_needs("runs", "train_loss_auc", "training losses"),
    ),
    FigureEntry(
        "c2_min_val_loss", "C2", "C02 validation loss", "min. validation loss vs batch size",
        _plot("min_val_loss_vs_batch", "runs"),
        cap.per_seed("Minimum over epochs of the validation loss vs batch size.",
                  " The verdict uses the constant-LR rule."),
        missing=_needs("runs", "min_val_loss", "validation losses"),
    ),
    FigureEntry(
        "c3_epoch_seconds", "C3", "C03 time per epoch", "seconds per epoch vs batch size",
        _plot("epoch_seconds_vs_batch", "timing"), cap.epoch_seconds,
        missing=_needs("timing", "epoch_seconds", "timings"),
    ),
    FigureEntry(
        "c4_best_epoch", "C4", "C04 epochs to the minimum", "epoch of the min. validation loss",
        _plot("best_epoch_vs_batch", "runs"),
        cap.per_seed("Epoch of the minimum validation loss vs batch size."),
        missing=_needs("runs", "best_epoch", "best epochs"),
    ),
    FigureEntry(
        "c5_sharpness", "C5", "C05 sharpness", "Hessian eigenvalue and epsilon-sharpness",
        _plot("sharpness_vs_batch", "sharpness"), cap.sharpness,
        missing=_needs("sharpness", "top_eigenvalue", "sharpness measurements"),
        note=cap.not_run("sharpness measurements", "sharpness.csv"),
    ),
    FigureEntry(
        "c6_distance", "C6", "C06 distance from init", "final weights' distance from init",
        _plot("distance_vs_batch", "runs"),
        cap.per_seed("L2 distance between the final and the initial weights vs batch size."),
        missing=_needs("runs", "dist_final", "distances from the initial weights"),
    ),
    FigureEntry(
        "c7_article_vs_ours", "C7", "C07-C08 linear scaling", "the article vs ours",
        _draw_article_vs_ours, cap.article_vs_ours,
        missing=_needs("article_comparison", "ours", "comparison"),
    ),
    FigureEntry(
        "c9_time_to_min", "C9", "C09 wall-clock time", "seconds to the minimum validation loss",
        _plot("time_to_min_vs_batch", "runs"),
        cap.per_seed("Wall-clock seconds to the minimum validation loss (its epoch x the timed seconds per "
                  "epoch at 1 thread at that batch size) vs batch size."),
        missing=_needs("runs", "time_to_min_s", "wall-clock times"),
    ),
    FigureEntry(
        "c10_update_norm", "C10", "C10 update size", "weight-update norm per epoch",
        _plot("update_norm_vs_batch", "runs"),
        cap.per_seed("Mean norm of the weight update per epoch vs batch size.",
                  " The verdict asks that it fall with batch size (constant-LR rule)."),
        missing=_needs("runs", "mean_update_norm", "update norms"),
    ),
    FigureEntry(
        "c10_grad_competition", "C10", "C10 update size", "gradient competition within a batch",
        _plot("grad_competition_vs_batch", "runs"), cap.grad_competition,
        missing=_needs("runs", "grad_competition", "gradient-competition measurements"),
        note=cap.not_run("gradient-competition measurements", "runs.csv: grad_competition"),
    ),
    FigureEntry(
        "c11_parallel_speedup", "C11", "C11 parallel hardware", "speed-up from all threads",
        _plot("parallel_speedup_vs_batch", "timing"), cap.speedup, missing=_one_thread_count,
        note=lambda tables, params: f'<div class="bs-note">{_one_thread_count(tables, params)}</div>',
    ),
    FigureEntry(
        "c12_slices", "C12", "C12 loss landscape", "1-D filter-normalised loss slices",
        _plot("slice_curves", "slices"), cap.slices,
        missing=_needs("slices", "train_loss", "loss slices"),
    ),
    FigureEntry(
        "c12_interpolation", "C12", "C12 loss landscape", "interpolation",
        _draw_interpolation, cap.interpolation,
        missing=_needs("interpolation", "train_loss", "interpolation"),
        made=_landscape_pair_exists,
    ),
    FigureEntry(
        "c12_contour", "C12", "C12 loss landscape", "2-D loss contours",
        _plot("contour_panels", "contour"), cap.contour,
        missing=_needs("contour", "train_loss", "loss contours"),
        made=_landscape_pair_exists,
    ),
    FigureEntry(
        "rules_compared", "beyond-rules", "Beyond the article", "LR-scaling rules compared",
        _draw_rules_compared, cap.rules,
    ),
    FigureEntry(
        "steps_to_target", "beyond-steps", "Beyond the article", "steps to a target validation loss",
        _draw_steps, cap.steps, missing=_no_steps, note=cap.steps_note,
    ),
    FigureEntry(
        "noise_scale", "beyond-noise", "Beyond the article", "gradient noise scale",
        _plot("noise_scale_vs_batch", "noise"), cap.noise,
        missing=_needs("noise", "b_simple", "gradient noise-scale measurements"),
        note=cap.not_run("gradient noise-scale measurements", "noise.csv",
                 "is empty: the noise-scale probe did not run for these tables, so there is nothing to plot "
                 "and no critical batch size to predict"),
    ),
    FigureEntry(
        "tuned_lr", "tuned", "Tuned learning rate", "best LR and test loss vs batch size",
        _draw_tuned_lr, cap.tuned_lr, missing=_no_sweep, made=_tuned_in_grid,
    ),
    FigureEntry(
        "critical_batch_measured", "critical-measured", "Tuned learning rate",
        "critical batch size measured from steps to target",
        _draw_critical_measured, cap.critical_measured, missing=_no_tuned_steps, made=_tuned_in_grid,
        note=lambda tables, params: f'<div class="bs-note">{_no_tuned_steps(tables, params)}</div>',
    ),
    FigureEntry(
        "bench", "speed", "Speed", "naive loop vs the ensemble engine",
        _plot("bench_bars", "bench"), cap.bench,
        missing=_needs("bench", "ms_per_model_epoch", "benchmark timings"),
        note=cap.not_run("benchmark", "bench.csv", "is missing: the bench step did not run for these tables"),
    ),
)
# fmt: on


def made(params: dict) -> list[FigureEntry]:
    """The figures the workflow makes for these parameters, in the report's order."""
    return [entry for entry in REGISTRY if entry.made(params)]


def in_section(section: str, params: dict) -> list[FigureEntry]:
    """The figures one report section shows (a claim id or a section's anchor), in order."""
    return [entry for entry in made(params) if entry.section == section]


# --- figure files: `batchscale figures`, for Snakemake's own report ---------------------------


def draw(entry: FigureEntry, tables: Tables, params: dict) -> Figure:
    """The entry's figure, or a small one saying why there is nothing to plot."""
    why = entry.missing(tables, params)
    return __getattr__("not_measured")(why) if why is not None else entry.draw(tables, params)


RST_SPECIAL = str.maketrans({c: "\\" + c for c in "\\*`|_"})


def caption_rst(entry: FigureEntry, tables: Tables, params: dict) -> str:
    """The caption Snakemake's report shows under the figure: its category and title, then the
    HTML report's caption (or why there is nothing to plot), as reStructuredText; raw for Jinja,
    which Snakemake renders every caption with."""
    why = entry.missing(tables, params)
    text = why if why is not None else rp.plain_text(entry.caption(tables, params))
    head = f"{entry.category}: {entry.title}.".translate(RST_SPECIAL)
    return "{% raw %}" + f"**{head}** {text.translate(RST_SPECIAL)}" + "{% endraw %}\n"


def write_figure_files(tables: Path | str, params: dict, outs: list[Path | str]) -> None:
    """Write each output its file name names: <stem>.png, the figure of that registry entry, or
    <stem>.rst, its caption. Every name is checked before anything is drawn; each file is
    written atomically."""
    from batchscale.io import atomic_path

    outs = [Path(out) for out in outs]
    entries = {entry.stem: entry for entry in REGISTRY}
    unknown = sorted({out.stem for out in outs} - set(entries))
    if unknown:
        raise ValueError(f"no such figure: {', '.join(unknown)} (known: {', '.join(entries)})")
    kinds = sorted({out.name for out in outs if out.suffix not in (".png", ".rst")})
    if kinds:
        raise ValueError(f"neither a figure (.png) nor a caption (.rst): {', '.join(kinds)}")
    frames = Tables(tables)
    for out in outs:
        entry = entries[out.stem]
        if out.suffix == ".png":
            data = __getattr__("png_bytes")(draw(entry, frames, params))
        else:
            data = caption_rst(entry, frames, params).encode()
        with atomic_path(out) as tmp:
            tmp.write_bytes(data)
