"""The report's HTML pieces: the claims table, verdict badges, setup tables, notes and the
sentences the notebook displays beside its figures.

Plain functions of tables and claims, kept here so that they are testable and the notebook
stays a short narrative; `report.py` runs the notebook and exports it.
"""

from __future__ import annotations

import html
import math
import re

import pandas as pd

from batchscale import analysis
from batchscale.aggregate import TARGET_MARGIN
from batchscale.analysis import (
    CLOSED_GAP,
    CriticalBatch,
    Departure,
    RuleGap,
    reference_rule,
    unpassed_runs,
)
from batchscale.scaling import RULES

TITLE = "batchscale: the effect of batch size on neural-net training"


VERDICT_COLOURS = {
    "reproduced": ("#1b5e20", "#c8e6c9"),
    "not reproduced": ("#b71c1c", "#ffcdd2"),
    "inconclusive": ("#7a4f00", "#ffe082"),
    "not tested": ("#424242", "#e0e0e0"),
    "no gap detectable": ("#01579b", "#b3e5fc"),
}

STYLE = """
<style>
main { max-width: 1150px; margin: 0 auto; }
.bs-report { font-size: 14px; line-height: 1.45; }
.bs-report h1 { font-size: 1.9em; margin: 0.4em 0 0.2em; }
.bs-report h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.bs-report table { border-collapse: collapse; margin: 0.6em 0; }
.bs-report th, .bs-report td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top;
                                 text-align: left !important; }  /* lab's CSS right-aligns cells */
.bs-report th { background: #f5f5f5; }
.bs-report td.num { text-align: right !important; font-variant-numeric: tabular-nums; white-space: nowrap; }
.bs-report td.num.parts { white-space: normal; min-width: 14em; }
.bs-verdict { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600;
              white-space: nowrap; }
.bs-rule { color: #555; font-size: 0.92em; }
.bs-note { border-left: 4px solid #f9a825; background: #fff8e1; padding: 6px 10px; margin: 0.8em 0; }
.bs-ok { border-left: 4px solid #2e7d32; background: #e8f5e9; padding: 6px 10px; margin: 0.8em 0; }
.bs-report img, img.bs-figure { max-width: 100%; }
.bs-caption { color: #555; font-size: 0.92em; margin: 0.2em 0 1em; }
.bs-report table.bs-kv { margin: 0.3em 0; font-size: inherit; }
.bs-report table.bs-kv tr { background: transparent !important; }
.bs-report table.bs-kv th, .bs-report table.bs-kv td { border: none; background: transparent;
                                                       padding: 1px 18px 1px 0; }
.bs-report table.bs-kv th { white-space: nowrap; }
</style>
"""


def esc(value: object) -> str:
    return html.escape(str(value))


def plain_text(fragment: str) -> str:
    """An HTML fragment as plain text (a figure's caption as its alt text)."""
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def is_missing(value: object) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def fmt_number(value: object, digits: int = 3) -> str:
    """Three significant figures; an en dash for a value that is not there."""
    if is_missing(value):
        return "–"
    number = float(value)
    if math.isinf(number):
        return "∞" if number > 0 else "−∞"
    if number == int(number) and abs(number) < 1e6:
        return str(int(number))
    return f"{number:.{digits}g}"


def fmt_estimate(value: object, low: object, high: object) -> str:
    """'value [low, high]', or just the value when the interval is undefined."""
    if is_missing(value):
        return "–"
    if is_missing(low) or is_missing(high):
        return f"{fmt_number(value)} (no CI)"
    return f"{fmt_number(value)} {fmt_interval(low, high)}"


def fmt_interval(low: object, high: object) -> str:
    if is_missing(low) or is_missing(high):
        return "–"
    return f"[{fmt_number(low)}, {fmt_number(high)}]"


def verdict_badge(verdict: str) -> str:
    text, background = VERDICT_COLOURS.get(verdict, VERDICT_COLOURS["not tested"])
    return f'<span class="bs-verdict" style="color:{text};background:{background}">{esc(verdict)}</span>'


def has_parts(claim) -> bool:
    parts = getattr(claim, "parts", "")
    return not is_missing(parts) and bool(parts)


def observed_cell(claim) -> str:
    """The estimate with its CI; for a claim of several parts, every part's with its seeds and
    verdict, one per line (wrapping inside the line: each part's label repeats the statistic's
    own words, or names the LR rule)."""
    if not has_parts(claim):
        return esc(fmt_estimate(claim.observed, claim.ci_low, claim.ci_high))
    return "<br>".join(esc(part.strip()) for part in claim.parts.split(" | "))


def count_cell(claim) -> str:
    """How many units the statistic rests on: seeds, or timing repeats for C3 and C11 (the
    claim's `unit`; claims tables from before it was recorded count seeds)."""
    if is_missing(claim.n_seeds):
        return "–"
    unit = getattr(claim, "unit", "seeds")
    return f"{int(claim.n_seeds)}" + ("" if is_missing(unit) or unit == "seeds" else f" {esc(unit)}")


def claims_table(claims: pd.DataFrame, confidence: float) -> str:
    """The summary table at the top: one row per claim, linked to its section."""
    rows = []
    for c in claims.itertuples():
        article = "" if is_missing(c.article) else esc(c.article)
        expected = "" if is_missing(c.expected) else esc(c.expected)
        rows.append(
            f'<tr><td><a href="#{esc(c.claim_id)}">{esc(c.claim_id)}</a></td><td>{esc(c.claim)}</td>'
            f"<td>{esc(c.metric)}</td><td>{expected}</td>"
            f'<td class="{"num parts" if has_parts(c) else "num"}">{observed_cell(c)}</td>'
            f'<td class="num">{count_cell(c)}</td>'
            f"<td>{verdict_badge(c.verdict)}</td><td>{article}</td></tr>"
        )
    head = (
        "<tr><th>id</th><th>claim</th><th>our statistic</th><th>expected</th>"
        f"<th>ours [{confidence:.0%} CI]</th><th>seeds</th><th>verdict</th><th>article</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def verdict_counts(claims: pd.DataFrame) -> str:
    counts = claims["verdict"].value_counts()
    parts = [f"{verdict_badge(v)} {counts[v]}" for v in VERDICT_COLOURS if v in counts]
    return "&nbsp; ".join(parts)


def key_values(pairs: list[tuple[str, str]]) -> str:
    """Label/value rows without borders; values are HTML (escape them before)."""
    rows = "".join(f"<tr><th>{esc(label)}</th><td>{value}</td></tr>" for label, value in pairs)
    return f'<table class="bs-kv">{rows}</table>'


def definition_list(items: dict) -> str:
    """Key/value pairs as label/value rows; values are escaped, missing or empty ones (such as
    data.path, which only the npz data set uses) left out."""
    return key_values([(str(k), esc(v)) for k, v in items.items() if not is_missing(v) and v != ""])


def lr_grid(runs: pd.DataFrame, warmup_epochs: int = 0, base_lr: float | None = None) -> str:
    """Batch sizes x LR rules, each cell's learning rate and seed count, as run.

    With `warmup_epochs` and `base_lr`, linear_warmup cells whose LR is not the base LR (those
    that ramp, as `config.cells` lays them out) show the ramp: "LR 0.01 → 0.04" over "5-epoch ramp".
    """
    sizes = sorted(runs["batch_size"].unique())
    head = "<tr><th>LR rule \\ batch size</th>" + "".join(f"<th>{b}</th>" for b in sizes) + "</tr>"
    body = []
    # The article's order (constant LR first), then any other rule.
    rules = sorted(runs["rule"].unique(), key=lambda r: (RULES.index(r) if r in RULES else len(RULES), r))
    for rule in rules:
        cell = runs[runs["rule"] == rule]
        cells = []
        for b in sizes:
            run = cell[cell["batch_size"] == b]
            if run.empty:
                cells.append('<td class="num">not run</td>')
                continue
            lrs = sorted(run["lr"].round(6).unique())
            lr = (
                fmt_number(lrs[0], 4)
                if len(lrs) == 1
                else f"{fmt_number(lrs[0], 4)}–{fmt_number(lrs[-1], 4)}"
            )
            note = f"{run['seed'].nunique()} seeds"
            if (
                rule == "linear_warmup"
                and warmup_epochs
                and base_lr is not None
                and lrs[0] != round(base_lr, 6)
            ):
                lr = f"{fmt_number(base_lr, 4)} → {lr}"
                note = f"{warmup_epochs}-epoch ramp, {note}"
            cells.append(f'<td class="num">LR {lr}<br><span class="bs-rule">{note}</span></td>')
        body.append(f"<tr><th>{esc(rule)}</th>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def not_run_note(what: str, tables: list[str], why: str | None = None) -> str:
    """Said in place of the figures whose probe did not run for these tables.

    `why` (HTML) replaces the default explanation after the table names, e.g. for a column that
    tables written before it existed lack.
    """
    names = ", ".join(f"<code>{esc(t)}</code>" for t in tables)
    verb, probe = ("is", "its probe") if len(tables) == 1 else ("are", "their probes")
    why = why or (
        f"{verb} empty: {probe} did not run for these tables, so there is nothing to plot (the verdict "
        "above says what could not be measured)"
    )
    return f'<div class="bs-note"><b>No {esc(what)}:</b> {names} {why}.</div>'


def unpassed_note(runs: pd.DataFrame) -> str:
    """The report says so when a cell's validation loss had not passed its minimum."""
    table = unpassed_runs(runs)
    if table.empty:
        return (
            '<div class="bs-ok">Every run\'s validation loss passed its minimum before the last epoch, '
            "so the minimum validation loss and its epoch are not cut off by the epoch budget.</div>"
        )
    cells = ", ".join(
        f"{esc(r.rule)}/B={r.batch_size} ({r.unpassed} of {r.runs} seeds)" for r in table.itertuples()
    )
    return (
        f'<div class="bs-note"><b>Validation loss had not passed its minimum by the last epoch</b> '
        f"(epoch {fmt_number(table['epochs'].max())}) in {len(table)} cell(s): {cells}. For these runs the "
        "minimum validation loss is an upper bound and its epoch a lower bound; claims C2, C4, C7, C8 "
        "and C9 that use them may change with a longer epoch budget.</div>"
    )


def diverged_note(runs: pd.DataFrame) -> str:
    """Runs that diverged (NaN/inf loss) and stopped early; empty when there are none."""
    diverged = runs[analysis.diverged(runs)]
    if diverged.empty:
        return ""
    cells = ", ".join(
        f"{esc(r.rule)}/B={r.batch_size} seed {r.seed} (epoch {r.diverged_epoch})"
        for r in diverged.itertuples()
    )
    return (
        '<div class="bs-note"><b>Diverged runs</b> (left out of every claim\'s statistic, and their seeds '
        f"out of the comparisons under their LR rule): {cells}.</div>"
    )


def claim_header(claim: pd.Series, confidence: float, level: int = 2) -> str:
    """A claim section's heading (<h`level`>: 3 inside another section), verdict with its rule,
    statistic and summary sentence."""
    expected = "" if is_missing(claim["expected"]) else f" (expected: {esc(claim['expected'])})"
    estimate = esc(fmt_estimate(claim["observed"], claim["ci_low"], claim["ci_high"]))
    unit = claim.get("unit", "seeds")
    if not is_missing(claim["n_seeds"]) and claim["n_seeds"]:
        estimate += f", {int(claim['n_seeds'])} {esc('seeds' if is_missing(unit) else unit)}"
    if has_parts(claim):  # every part, labelled, with its own seeds and verdict
        estimate = observed_cell(claim)
    pairs = [
        ("verdict", verdict_badge(claim["verdict"])),
        ("verdict rule", f'<span class="bs-rule">{esc(claim["rule"])}</span>'),
        ("statistic", esc(claim["metric"]) + expected),
        (f"ours [{confidence:.0%} CI]", estimate),
    ]
    if not is_missing(claim["article"]):
        pairs.append(("article", esc(claim["article"])))
    pairs.append(("summary", esc(claim["summary"])))
    claim_id = esc(claim["claim_id"])
    heading = f'<h{level} id="{claim_id}">{claim_id}. {esc(claim["claim"])}</h{level}>'
    return heading + key_values(pairs)


def comparison_table(comparison: pd.DataFrame, confidence: float) -> str:
    """C7/C8 side by side: the article's number and ours with its CI."""
    head = f"<tr><th>quantity</th><th>article</th><th>ours</th><th>{confidence:.0%} CI</th></tr>"
    rows = "".join(
        f'<tr><td>{esc(r.quantity)}</td><td class="num">{fmt_number(r.article)}</td>'
        f'<td class="num">{fmt_number(r.ours)}</td>'
        f'<td class="num">{fmt_interval(r.ci_low, r.ci_high)}</td></tr>'
        for r in comparison.itertuples()
    )
    return f"<table>{head}{rows}</table>"


# ---------------------------------------------------------------------------------------
# Beyond the article: steps to target (Shallue et al. 2019) and the gradient noise scale
# (McCandlish et al. 2018).
# ---------------------------------------------------------------------------------------


def target_caption(runs: pd.DataFrame) -> str:
    """The target validation loss and how it was chosen, from the table."""
    rule = reference_rule(runs)
    medians = runs[runs["rule"] == rule].groupby("batch_size")["min_val_loss"].median().dropna()
    if medians.empty:  # every run of the rule diverged: there is no target
        return f"No target validation loss: every {esc(rule)}-rule run diverged."
    worst = medians.idxmax()
    return (
        f"The target validation loss is {fmt_number(runs['target_val_loss'].iloc[0])}: "
        f"{TARGET_MARGIN:.0%} above the worst median (over seeds) minimum validation loss of the "
        f"{esc(rule)} rule's batch sizes (B={worst}: {fmt_number(medians[worst])}), so that every "
        f"{esc(rule)}-rule cell can reach it."
    )


def target_note(runs: pd.DataFrame, history: pd.DataFrame) -> str:
    """A warning when the target is no harder than the initial weights' validation loss: every run
    then reaches it after its first epoch, and steps to target measure the epoch length only."""
    initial = history.loc[history["epoch"] == 0, "val_loss"].median()
    target = runs["target_val_loss"].iloc[0]
    if is_missing(initial) or target < initial:
        return ""
    return (
        f'<div class="bs-note"><b>The target is too easy:</b> the target validation loss '
        f"{fmt_number(target)} is not below the median validation loss of the initial weights "
        f"({fmt_number(initial)}), so the runs reach it by their first epoch and the steps to target "
        "count little more than the steps of one epoch. Train longer (a cell that barely trains sets the "
        "target) for a meaningful curve.</div>"
    )


def never_reached_text(runs: pd.DataFrame) -> str:
    """A sentence counting the runs that never reached the target, by cell."""
    missed = runs[runs["steps_to_target"].isna()]
    if missed.empty:
        return "Every run reached the target."
    table = runs.assign(missed=runs["steps_to_target"].isna()).groupby(["rule", "batch_size"], as_index=False)
    table = table.agg(missed=("missed", "sum"), runs=("seed", "nunique"))
    table = table[table["missed"] > 0]
    cells = ", ".join(f"{esc(r.rule)}/B={r.batch_size} ({r.missed} of {r.runs})" for r in table.itertuples())
    return (
        f"{len(missed)} of {len(runs)} runs never reached the target within the epoch budget: {cells}; "
        "they have no point, and count as infinitely many steps in the medians."
    )


def _departure_text(departure: Departure) -> str:
    """The measured side: the criterion, and where the steps leave perfect scaling."""
    rule, factor, last = esc(departure.rule), fmt_number(departure.factor), departure.last_within
    text = (
        f"Measured: a batch size counts as still scaling while the {rule} rule's median steps to target "
        f"are at most {factor}x the perfect-scaling count (in McCandlish et al.'s model, S = S_min(1 + "
        "B_noise/B), that ratio reaches 2 at B = B_noise + 2 B0, B0 the smallest batch size, so the "
        "criterion brackets the critical batch size). "
    )
    if departure.first_beyond is None:
        return text + (
            f"Every batch size scales, up to the largest, B={last} ({fmt_number(departure.ratio, 2)}x the "
            "perfect-scaling steps there), so the measured critical batch size lies beyond the grid."
        )
    first = departure.first_beyond
    needs = (
        f"needs {fmt_number(departure.ratio, 2)}x the perfect-scaling steps"
        if math.isfinite(departure.ratio)
        else "mostly never reached the target"
    )
    return text + (
        f"Batch sizes scale up to B={last}, and B={first} {needs}, so the measured critical batch size "
        f"lies between {last} and {first}."
    )


def critical_batch_sentence(critical: CriticalBatch | None, departure: Departure | None) -> str:
    """The prediction of the noise scale beside the measured departure from perfect scaling,
    as a paragraph (empty when neither is known)."""
    parts = []
    if critical is not None:
        parts.append(
            "The gradient noise scale predicts a critical batch size of about "
            f"<b>{fmt_number(critical.value)}</b> (median B_simple at the best weights of the "
            f"{critical.seeds} B={critical.batch_size} runs, {esc(critical.rule)} rule)."
        )
    if departure is not None:
        parts.append(_departure_text(departure))
    if critical is not None and departure is not None:
        value, low, high = critical.value, departure.last_within, departure.first_beyond
        if value > low and (high is None or value <= high):
            parts.append("The prediction falls in that range: the two agree to the grid's resolution.")
        elif value <= low:
            parts.append(
                f"The prediction lies {fmt_number(low / value, 2)}x below that range: batch sizes above it "
                "still scaled, so here the noise scale underestimates the critical batch size."
            )
        else:
            parts.append(
                f"The prediction lies {fmt_number(value / high, 2)}x above that range: the steps stopped "
                "scaling at smaller batch sizes, so here the noise scale overestimates the critical batch "
                "size."
            )
    if not parts:
        return ""
    return f"<p><b>Predicted vs measured critical batch size.</b> {' '.join(parts)}</p>"


# A training job should fit beside others on a laptop or in a small SLURM allocation.
RSS_GOAL_MB = 1536


# The speed goals the bench is read against (issue "Fast"): the engine with every seed of a cell
# against the naive loop, at the bench's smallest batch size.
CPU_SPEEDUP_GOAL = 3.0
GPU_SPEEDUP_GOAL = 100.0


def bench_sentence(bench: pd.DataFrame) -> str:
    """The engine with all members, as `auto` runs it, against the naive loop at the smallest
    batch size, per model, with the goal for the device it ran on."""
    if bench.empty or "auto_choice" not in bench:
        return ""
    smallest = bench["batch_size"].min()
    chosen = bench[(bench["batch_size"] == smallest) & bench["auto_choice"].astype(bool)]
    if chosen.empty:
        return ""
    on_gpu = chosen["device"].str.startswith("cuda").any()
    goal = GPU_SPEEDUP_GOAL if on_gpu else CPU_SPEEDUP_GOAL
    parts = [
        f"{esc(row.model)}: {row.speedup_vs_naive:.2f}x ({esc(row.ensemble)}, {row.members} members)"
        for row in chosen.itertuples()
    ]
    met = all(chosen["speedup_vs_naive"] >= goal)
    return (
        f"<p>At batch {smallest}, the engine with every seed of a cell, as the study trains it, "
        f"against the naive loop per model-epoch: {'; '.join(parts)}. Goal on "
        f"{'a GPU' if on_gpu else 'a CPU'}: at least {goal:g}x, {'met' if met else 'not met'}.</p>"
    )


def jobs_sentence(jobs: pd.DataFrame) -> str:
    """What the training jobs cost: wall time and peak memory, against the memory goal."""
    if jobs.empty or jobs["peak_rss_mb"].isna().all():
        return "<p>No training job recorded its memory (runs from before this was measured).</p>"
    worst = jobs.loc[jobs["peak_rss_mb"].idxmax()]
    within = "within" if worst["peak_rss_mb"] < RSS_GOAL_MB else "above"
    text = (
        f"<p>{len(jobs)} training jobs took {jobs['train_seconds'].sum():,.0f} s of training "
        f"in all. Peak resident memory of a job: at most {worst['peak_rss_mb']:,.0f} MiB "
        f"(run {esc(worst['run'])}, median {jobs['peak_rss_mb'].median():,.0f} MiB), "
        f"{within} the goal of {RSS_GOAL_MB} MiB."
    )
    cuda = jobs["peak_cuda_mb"].dropna()
    if len(cuda):
        text += f" Peak CUDA memory allocated by a job: at most {cuda.max():,.0f} MiB."
    return text + "</p>"


def layouts_sentence(layouts: pd.DataFrame) -> str:
    """Which way of spending the CPU's threads trained faster, as measured by the bench."""
    if layouts.empty:
        return (
            "<p>Not measured: the comparison needs a CPU run with 2 or more threads "
            "(<code>snakemake --cores 2</code> or more, or <code>batchscale bench --threads 2</code>).</p>"
        )
    side_by_side = layouts[layouts["layout"].str.endswith("x 1 thread")]
    ratios = ", ".join(
        f"{row.speedup_vs_one_job:.2f}x at batch size {row.batch_size}" for row in side_by_side.itertuples()
    )
    jobs, threads = int(layouts["jobs"].iloc[0]), int(layouts["threads"].iloc[0])
    if (side_by_side["speedup_vs_one_job"] > 1).all():
        conclusion = (
            "faster; so each training job asks Snakemake for one thread, and the cores run jobs side by side"
        )
    else:
        conclusion = "not always faster; on this machine a job may do as well with every thread"
    return (
        f"<p>The same work ({jobs} training jobs of the study's model) run as {jobs} jobs x 1 thread at "
        f"once, against one job at a time with {threads} threads. Side by side is {ratios}: {conclusion}. "
        "Small models leave a thread mostly idle between tiny kernels, so threads inside one job help "
        "little.</p>"
    )


def rule_gaps_sentence(gaps: list[RuleGap]) -> str:
    """Which rule closes the gap between the smallest and the largest batch: each rule's
    remaining relative gap with its CI, and the verdict rule beside it."""
    if not gaps:
        return ""
    first = gaps[0]
    parts = []
    for gap in gaps:
        left_out = f", {gap.left_out} diverged seed(s) left out" if gap.left_out else ""
        parts.append(
            f"{esc(gap.rule)} {fmt_signed(gap.value)} [{fmt_signed(gap.ci_low)}, {fmt_signed(gap.ci_high)}]"
            f" ({gap.seeds} seeds{left_out})"
        )
    bound = f"{CLOSED_GAP:.0%}"
    meanings = {
        "closed": f"closed (CI wholly within &plusmn;{bound}, C8's bound for small)",
        "reversed": "reversed (the largest batch better: CI wholly below 0)",
        "remains": f"a gap remains (CI wholly above 0, not within &plusmn;{bound})",
        "undecided": "undecided (the CI holds 0 and reaches past the bound)",
    }
    outcomes = [
        f"{meaning}: {', '.join(esc(g.rule) for g in gaps if g.outcome == outcome)}"
        for outcome, meaning in meanings.items() if any(g.outcome == outcome for g in gaps)
    ]  # fmt: skip
    joined = "; ".join(outcomes)
    verdict = f"{joined[0].upper()}{joined[1:]}."
    return (
        f"<p>Which rule closes the gap: the minimum validation loss at B={first.large} relative to "
        f"B={first.small} under each rule, minus 1 (means over seeds; 95% bootstrap CI over seeds): "
        f"{'; '.join(parts)}. {verdict}</p>"
    )


def fmt_signed(value: float) -> str:
    """A relative change as a signed percentage (+12.3%); an en dash when missing."""
    return "–" if is_missing(value) else f"{value:+.1%}"
