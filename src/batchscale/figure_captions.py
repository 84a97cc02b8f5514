"""The captions of the report's figures and the notes said in place of a missing one: HTML
text from the tables and the parameters, which the figure registry (`figures.REGISTRY`)
names for each figure. The HTML report shows them as they are; Snakemake's report as
reStructuredText (`figures.caption_rst`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import pandas as pd

from batchscale import analysis
from batchscale import report_html as rp
from batchscale import report_tuned as rtuned


class TableSource(Protocol):
    """The tables by name: `figures.Tables` (a folder's CSVs), or a dict of frames."""

    def __getitem__(self, name: str) -> pd.DataFrame: ...


Text = Callable[[TableSource, dict], str]


def has(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and frame[column].notna().any()


def fixed(text: str) -> Text:
    return lambda tables, params: text


def not_run(what: str, table: str, why: str | None = None) -> Text:
    return lambda tables, params: rp.not_run_note(what, [table], why)


def seeds_text(frame: pd.DataFrame) -> str:
    return f"{frame['seed'].nunique()} seeds"


def rule_note(runs: pd.DataFrame) -> str:
    return f"Points: one per seed; line: mean over seeds per LR rule ({seeds_text(runs)} per cell)."


def per_seed(lead: str, tail: str = "") -> Text:
    """The caption of a per-seed figure from runs.csv: what it shows, the points, `tail`."""
    return lambda tables, params: lead + " " + rule_note(tables["runs"]) + tail


def on_probe_subset(params: dict) -> str:
    return f"on the first {params.get('probes', {}).get('examples', 'N')} training examples"


def devices(timing: pd.DataFrame) -> str:
    return ", ".join(map(str, timing["device"].unique()))


def landscape_pair(tables: TableSource) -> tuple[int, int]:
    return analysis.landscape_batch_sizes(tables["contour"], tables["runs"])


def learning_curves(tables: TableSource, params: dict) -> str:
    return (
        f"Training and validation loss per epoch. Line: mean over {seeds_text(tables['history'])}; band: "
        "mean &plusmn; 1 standard deviation over seeds. One column per LR rule (each cell's LR is in the "
        "setup's grid). Epoch 0 is the initial weights."
    )


def epoch_seconds(tables: TableSource, params: dict) -> str:
    return (
        "Seconds per training epoch, timed with nothing else running, at 1 thread and at all threads "
        f"({devices(tables['timing'])}). Points: timed repeats; line: median. "
        "The verdict uses the timings at 1 thread (the sequential cost the claim is about)."
    )


def sharpness(tables: TableSource, params: dict) -> str:
    sharpness, probes = tables["sharpness"], params.get("probes", {})
    eigen = sharpness["top_eigenvalue"].dropna()
    converged = sharpness["eig_converged"] if has(sharpness, "eig_converged") else pd.Series(True)
    unconverged = int((~converged.astype(bool)).sum())
    text = (
        f"Sharpness of the trained weights vs batch size, {on_probe_subset(params)}. Left: the Hessian "
        "eigenvalue of largest magnitude (Lanczos on Hessian-vector products); right: Keskar et al.'s "
        "epsilon-sharpness, the largest rise of the loss found within a box of relative radius "
        f"&epsilon; = {rp.fmt_number(probes.get('epsilon'))} around the weights, in percent of "
        "1 + loss. Filled points and solid lines: the weights at the minimum validation loss (the verdict "
        "uses these, constant-LR rule); hollow points and dashed lines: the final weights. Points: one per "
        "seed; lines: mean over seeds; log scale."
    )
    if (eigen <= 0).any():
        text += (
            f" {int((eigen <= 0).sum())} eigenvalue(s) are negative (the weights sit at a saddle along that "
            "direction, not at a minimum): that panel's scale is symmetric-log around 0."
        )
    if unconverged:
        text += (
            f" {unconverged} of {len(sharpness)} eigenvalue estimates had not converged after "
            f"{probes.get('hessian_iters', 'the allowed')} Hessian-vector products."
        )
    return text


def article_vs_ours(tables: TableSource, params: dict) -> str:
    return (
        f"The article's numbers (diamonds) beside ours with their {params['stats']['confidence']:.0%} "
        "confidence intervals. Top: minimum validation losses (different data sets, so compare gaps, not "
        "levels). Bottom: the fraction of the gap closed by linear scaling (C7; the dotted line is its "
        "threshold) and the relative gap that remains (C8; the shaded band is 'small')."
    )


def grad_competition(tables: TableSource, params: dict) -> str:
    return (
        "How much the per-example gradients of one batch agree: the norm of their mean over the mean of "
        "their norms (1: all point the same way; near 0: they cancel), on the first batch of every epoch, "
        "averaged over epochs. "
        + rule_note(tables["runs"])
        + " The dotted curve, c/&radic;B through the smallest batch's mean, is what pure noise would follow; "
        "a curve above it means the gradients share a direction. The verdict asks that the ratio fall "
        "with batch size (constant-LR rule)."
    )


def speedup(tables: TableSource, params: dict) -> str:
    timing = tables["timing"]
    return (
        "Speed-up of an epoch from using all threads instead of one vs batch size "
        f"({devices(timing)}). Points: one per timing repeat, its seconds at "
        f"1 thread / its seconds at {timing['threads'].max()} threads; line: their median, as the claim's "
        "summary gives it. Above the dashed line the threads help. The verdict asks that the speed-up "
        "grow with batch size, resampling timing repeats."
    )


def slices(tables: TableSource, params: dict) -> str:
    return (
        "Li et al.'s 1-D picture: how much the training loss rises, L(alpha) &minus; L(0), along one "
        "random filter-normalised direction from each run's best weights (alpha = 0), "
        f"{on_probe_subset(params)}; the direction's random numbers are the same for every run. Line: mean "
        "over seeds; band: mean &plusmn; 1 standard deviation. A flat minimum gives a low, wide curve, "
        "a sharp one a steep, narrow one. The verdict uses the curvature of each slice at alpha = 0 "
        "(finite differences at the neighbouring points; constant-LR rule)."
    )


def interpolation(tables: TableSource, params: dict) -> str:
    small, large = landscape_pair(tables)
    return (
        f"Keskar et al.'s 1-D picture: loss on the straight line from each seed's B={small} solution "
        f"(alpha = 0) to its B={large} solution (alpha = 1), constant LR, best weights, "
        f"extended to alpha = &minus;0.5 and 1.5. Line: mean over {seeds_text(tables['interpolation'])}; "
        "band: mean &plusmn; 1 standard deviation. A sharp minimum shows as a steep rise on its side. "
        "Shown as a picture; the verdict rests on the 1-D slices."
    )


def contour(tables: TableSource, params: dict) -> str:
    small, large = landscape_pair(tables)
    return (
        "Li et al.'s 2-D picture: training loss on the plane of two random filter-normalised directions "
        f"around the best weights (+) of one seed, at B={small} and B={large} (constant LR). Colour: "
        "the loss above each panel's own minimum, on the same levels in both panels (log-spaced, dense "
        "near the bottom), so the widths of the basins compare. Shown as a picture; the verdict rests "
        "on the 1-D slices."
    )


def rules(tables: TableSource, params: dict) -> str:
    runs, history, train = tables["runs"], tables["history"], params["train"]
    text = (
        "The LR-scaling rules side by side. Left: minimum validation loss vs batch size; points: one per "
        f"seed, line: mean over seeds ({seeds_text(runs)} per cell). Right: the validation loss per epoch at "
        f"the largest batch size, B={int(history['batch_size'].max())}, one line per rule (mean over seeds; "
        "band: &plusmn; 1 standard deviation). Rules: none keeps the base LR; linear multiplies it by B/"
        f"{train['base_batch_size']} (Goyal et al.); sqrt by &radic;(B/{train['base_batch_size']}) "
        "(Krizhevsky; Hoffer et al.)"
    )
    if "malladi" in set(runs["rule"]):
        text += (
            "; Malladi's rule (Malladi et al. 2022, for Adam) scales the LR by the same square root and also "
            f"1 - beta1 and 1 - beta2 by B/{train['base_batch_size']} and eps by its inverse square root"
        )
    if analysis.warmup_ramp_epochs(runs, history, train) is not None:
        text += (
            f"; linear + warm-up reaches the linear rule's LR by a linear ramp from {train['base_lr']} over "
            f"the first {train['warmup_epochs']} epochs (Goyal et al.'s gradual warm-up, shaded)"
        )
    return text + "."


def critical_batch(tables: TableSource) -> analysis.CriticalBatch | None:
    return analysis.critical_batch_size(tables["noise"], analysis.reference_rule(tables["runs"]))


def steps(tables: TableSource, params: dict) -> str:
    runs, critical = tables["runs"], critical_batch(tables)
    text = (
        "Optimizer steps until the validation loss first reaches the target vs batch size, log-log "
        f"(Shallue et al. 2019). {rp.target_caption(runs)} Points: one per seed; line: median over seeds per "
        f"LR rule. Dashed: perfect scaling, steps &prop; 1/B through the "
        f"{rp.esc(analysis.reference_rule(runs))} rule's median at the smallest batch size. The validation "
        "loss is measured once per epoch, so steps are counted in whole epochs (multiples of the steps per "
        "epoch) and are coarse at large batch sizes. " + rp.never_reached_text(runs)
    )
    if critical is not None:
        text += (
            f" Dotted: the critical batch size the gradient noise scale predicts, "
            f"{rp.fmt_number(critical.value)} (the median B_simple at the best weights of the "
            f"B={critical.batch_size} {rp.esc(critical.rule)}-rule runs; next figure)."
        )
    return text


def noise(tables: TableSource, params: dict) -> str:
    noise = tables["noise"]
    missing = int(noise["b_simple"].isna().sum())
    text = (
        "McCandlish et al.'s simple gradient noise scale B_simple = tr(&Sigma;) / |G|&sup2; vs the batch "
        "size the weights were trained with, at the initial weights, the best weights (minimum validation "
        f"loss) and the final weights, from per-example gradients {on_probe_subset(params)} in batches of "
        f"{params.get('probes', {}).get('noise_batch_size', 'B')} (trace and squared norm averaged over the "
        "batches, then divided). Points: one per seed; line: median over seeds per LR rule; log scale. The "
        "initial weights depend only on the seed, so the left panel shows the estimate's spread, not an "
        "effect of batch size. Dashed: B_simple = batch size; training at batches well below B_simple is in "
        "the perfect-scaling regime, well above it in the regime of diminishing returns."
    )
    if missing:
        text += (
            f" {missing} of {len(noise)} estimates are left out: their |G|&sup2; estimate was not positive "
            "(the mean gradient was lost in the noise)."
        )
    return text


def bench(tables: TableSource, params: dict) -> str:
    bench = tables["bench"]
    pairs = zip(bench["device"], bench["threads"], strict=True)
    where = ", ".join(sorted({f"{d}, {t} thread{'s' if t > 1 else ''}" for d, t in pairs}))
    return (
        "Milliseconds of training per model and epoch (one epoch of an ensemble of M members counts M), "
        f"median of timed epochs after a warm-up epoch, on {where}. Label: speed-up over the naive loop "
        "(DataLoader, one model, torch.optim.SGD) timed in the same process; dotted: the arithmetic "
        "floor, the model's forward and backward FLOPs per epoch over the machine's fastest 512 x 512 "
        "matrix multiply, timed before and after the variants."
    )


def steps_note(tables: TableSource, params: dict) -> str:
    runs = tables["runs"]
    if not analysis.has_steps_to_target(runs):
        return rp.not_run_note(
            "steps to target",
            ["runs.csv: steps_to_target"],
            "is absent: these tables were aggregated before steps to target were counted (re-run "
            "<code>batchscale aggregate</code> with the training-set size), so there is nothing to plot",
        )
    return f'<div class="bs-note">No run reached the target. {rp.target_caption(runs)}</div>'


# --- the tuned-LR study (tuned_lr.csv, critical_batch.csv) ------------------------------------


def tuned_lr(tables: TableSource, params: dict) -> str:
    table, confidence = tables["tuned_lr"], params["stats"]["confidence"]
    row = table.iloc[0]
    fitted = (
        f"solid: the line fitted over the {int(row['slope_points'])} interior optima, slope "
        f"{rp.fmt_estimate(row['slope'], row['slope_ci_low'], row['slope_ci_high'])}."
        if has(table, "slope")
        else "no fitted line: fewer than two optima lie inside the grid."
    )
    return (
        "Left: the best LR at each batch size, the one of the LRs tried (grey dashes) with the lowest "
        f"median minimum validation loss over seeds, with its {confidence:.0%} selection-aware CI (the LR "
        "chosen again in every bootstrap resample of the seeds), log-log. A hollow triangle is an optimum "
        "on an edge of the grid, a bound: pointing up, the largest LR tried won and the best LR is at least "
        "that; down, at most. Dashed: the linear rule's prediction (slope 1), dotted: the square-root rule's "
        f"(slope 1/2), both through the best LR at B={params['train']['base_batch_size']}; {fitted} "
        "Right: the test loss at each batch size's tuned LR (median over seeds, at each run's "
        "minimum-validation-loss weights; the LR is chosen on validation, judged on the test split) with its "
        "CI, beside the constant-LR and linear rules' test losses at the same weights (medians)."
    )


def critical_measured(tables: TableSource, params: dict) -> str:
    critical = tables["critical_batch"].iloc[0]
    excess = f"{critical['threshold']:.0%}"
    fit = (
        f" (S_min = {rtuned.fmt_size(critical['s_min'])}, B_noise = {rtuned.fmt_size(critical['b_noise'])})"
        if has(tables["critical_batch"], "b_noise")
        else " (not fitted: too few batch sizes reached the target)"
    )
    simple = (
        f"the noise probe's B_simple = {rtuned.fmt_size(critical['b_simple'])} (dotted)"
        if has(tables["critical_batch"], "b_simple")
        else "no B_simple (the noise probe did not run)"
    )
    measured = rp.fmt_estimate(critical["critical_batch"], critical["ci_low"], critical["ci_high"])
    return (
        "Optimizer steps until the validation loss first reaches the target at each batch size's tuned "
        "LR: points, the seeds; line, their median (a run that never reached the target counts as "
        "infinitely many steps), log-log. Dashed: perfect scaling from the smallest batch size, "
        f"B={int(critical['smallest_batch'])}; dash-dotted: {excess} above it; grey: McCandlish et al.'s "
        f"S_min (1 + B_noise / B) fitted to the medians{fit}. Vertical lines: the measured critical batch "
        f"size, the first batch size whose median lies above the {excess} line, {measured} (shaded: its "
        f"{params['stats']['confidence']:.0%} selection-aware CI; &infin;: beyond the grid), the fitted "
        f"B_noise (dashed) and {simple}. " + rtuned.agreement_sentence(critical)
    )
