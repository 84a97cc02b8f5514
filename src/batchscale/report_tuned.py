"""The report's tuned-LR sections in HTML: the chosen LR per batch size as a table, the sentence
on how it scales, and the sentence on whether the three critical batch sizes agree.

Every number is read from tuned_lr.csv and critical_batch.csv (`tuned_analysis`), formatted
here; the figure captions (figure_captions) use the same sentences.
"""

from __future__ import annotations

import math

import pandas as pd

from batchscale.report_html import esc, fmt_estimate, fmt_interval, fmt_number, is_missing

# The tables the sections read, by their name in `figures.Tables` (the first is also the name of
# a figure, which the notebook must not name: it reads the table through this constant).
TUNED_LR, CRITICAL_BATCH = "tuned_lr", "critical_batch"


def fmt_size(value: object) -> str:
    """A batch size or a count of steps: whole from 100 up ("1,000", not "1e+03"), else
    `fmt_number`'s three figures."""
    if not is_missing(value) and math.isfinite(float(value)) and abs(float(value)) >= 100:
        return f"{float(value):,.0f}"
    return fmt_number(value)


def has_tuned(tuned_lr: pd.DataFrame) -> bool:
    """Whether the tables hold a tuned sweep (the sections are shown only then)."""
    return not tuned_lr.empty and "lr" in tuned_lr


def lr_text(row) -> str:
    """The chosen LR, written as the bound it is on an edge of the grid ('at least 0.08')."""
    bound = "" if is_missing(row["bound"]) or not row["bound"] else f"{row['bound']} "
    return f"{bound}{fmt_number(row['lr'])}"


def tuned_lr_table(tuned_lr: pd.DataFrame, confidence: float) -> str:
    """One row per batch size: the chosen LR (a bound on an edge) with its interval, as a
    multiple of the linear rule's, the test loss there beside the fixed rules', and the
    fraction of the tuned improvement the linear rule achieves."""
    head = (
        f"<tr><th>batch size</th><th>best LR [{confidence:.0%} CI]</th><th>x linear rule's LR</th>"
        f"<th>test loss, tuned [{confidence:.0%} CI]</th><th>test loss, constant LR</th>"
        f"<th>test loss, linear rule</th><th>linear rule's share of the tuned gain [{confidence:.0%} CI]</th>"
        "<th>seeds</th></tr>"
    )
    rows = []
    for _, row in tuned_lr.iterrows():
        cells = [
            f"{esc(lr_text(row))} {fmt_interval(row['lr_ci_low'], row['lr_ci_high'])}",
            fmt_number(row["factor"]),
            fmt_estimate(row["test_loss"], row["test_loss_ci_low"], row["test_loss_ci_high"]),
            fmt_number(row["none_test_loss"]),
            fmt_number(row["linear_test_loss"]),
            fmt_estimate(
                row["linear_fraction"], row["linear_fraction_ci_low"], row["linear_fraction_ci_high"]
            ),
            fmt_number(row["seeds"]),
        ]
        body = "".join(f'<td class="num">{esc(c) if i else c}</td>' for i, c in enumerate(cells))
        rows.append(f"<tr><th>{int(row['batch_size'])}</th>{body}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


RULE_EXPONENTS = (("the linear rule's", 1.0), ("the square-root rule's", 0.5))


def slope_sentence(tuned_lr: pd.DataFrame, confidence: float) -> str:
    """`slope_text` as a paragraph."""
    return f"<p>{slope_text(tuned_lr, confidence)}</p>"


def slope_text(tuned_lr: pd.DataFrame, confidence: float) -> str:
    """How the best LR grows with batch size, the interval of its exponent, and which of the
    rules' exponents (1: linear, 1/2: square root) that interval holds (HTML, no paragraph)."""
    row = tuned_lr.iloc[0]
    edges = tuned_lr[tuned_lr["bound"].astype(object).fillna("") != ""]
    left_out = (
        " Left out of the fit, as bounds: "
        + ", ".join(f"B={int(r['batch_size'])} ({esc(lr_text(r))})" for _, r in edges.iterrows())
        + "."
        if len(edges)
        else ""
    )
    if is_missing(row["slope"]):
        return f"Fewer than two batch sizes have their best LR inside the grid: no slope.{left_out}"
    low, high = row["slope_ci_low"], row["slope_ci_high"]
    text = (
        f"The best LR grows as B<sup>{fmt_number(row['slope'])}</sup> {fmt_interval(low, high)} "
        f"({confidence:.0%} selection-aware CI; least squares of log LR on log B over the "
        f"{int(row['slope_points'])} batch sizes whose best LR lies inside the grid). The linear rule "
        "predicts an exponent of 1, the square-root rule 1/2."
    )
    if not (is_missing(low) or is_missing(high)):
        # A tolerance for the rounding of a fit that is exact (an interval [0.5, 0.5] holds 1/2).
        held = [name for name, k in RULE_EXPONENTS if low - 1e-9 <= k <= high + 1e-9]
        text += (
            f" The interval holds {' and '.join(held)}."
            if held
            else " The interval holds neither rule's exponent."
        )
    return text + left_out


def _true(value: object) -> bool:
    """A flag of critical_batch.csv as written (bool) or read back ('True', NA)."""
    return not is_missing(value) and str(value) == "True"


WHERE_MEASURED = "the 20% line where the measurement does"
PREDICTIONS = {"b_noise": "fitted B_noise", "b_simple": "noise scale's B_simple"}


def _crossing_text(name: str, value: float, crossing: float, agrees: object) -> str:
    if is_missing(value):
        return f"{name} is not known here."
    where = "inside" if _true(agrees) else "outside"
    at = f"at {fmt_size(crossing)}"
    return f"{name} = {fmt_size(value)} puts that crossing {at}, {where} the measured range."


def agreement_sentence(critical: pd.Series) -> str:
    """The one sentence that says whether the three estimates agree."""
    known = {name: _true(critical[f"{name}_agrees"]) for name in PREDICTIONS
             if not is_missing(critical[f"{name}_agrees"])}  # fmt: skip
    if not known:
        return "Neither prediction can be compared with the measurement here."
    if len(known) < len(PREDICTIONS):
        ((name, agrees),) = known.items()
        return (
            f"Only the {PREDICTIONS[name]} can be compared with the measurement: it "
            f"{'agrees' if agrees else 'does not agree'} (it crosses the 20% line "
            f"{'where' if agrees else 'away from where'} the measurement does)."
        )
    if all(known.values()):
        return f"The three estimates agree: both predictions cross {WHERE_MEASURED}."
    if not any(known.values()):
        return f"The three estimates do not agree: neither prediction crosses {WHERE_MEASURED}."
    which = next(PREDICTIONS[name] for name, agrees in known.items() if agrees)
    return f"The three estimates do not all agree: only the {which} crosses {WHERE_MEASURED}."


def critical_paragraph(critical_batch: pd.DataFrame, confidence: float) -> str:
    """The measured critical batch size, the batch sizes its interval allows, each prediction's
    crossing of the same line, and whether they agree."""
    if critical_batch.empty:
        return ""
    c = critical_batch.iloc[0]
    value = c["critical_batch"]
    beyond = not is_missing(value) and math.isinf(float(value))
    measured = (
        f"no batch size of the grid (up to {int(c['largest_batch'])}) exceeds it: the critical batch "
        "size lies beyond the grid"
        if beyond
        else f"that first happens at B = <b>{fmt_size(value)}</b>"
    )
    text = (
        f"<p><b>Measured.</b> The median steps to target at the tuned LR exceed perfect scaling from B = "
        f"{int(c['smallest_batch'])} by more than {c['threshold']:.0%}: {measured} "
        f"({confidence:.0%} selection-aware CI {fmt_interval(c['ci_low'], c['ci_high'])}, "
        f"{int(c['seeds'])} seeds), so the crossing lies between {fmt_size(c['range_low'])} and "
        f"{fmt_size(c['range_high'])}. "
        f"<b>Predicted.</b> McCandlish et al.'s S = S_min (1 + B_noise / B) crosses the same line at "
        f"B = {1 + c['threshold']:g} B0 + {c['threshold']:g} B_noise (B_noise itself is where the steps are "
        "twice S_min, not comparable with the 20% line directly). "
    )
    text += _crossing_text("The B_noise fitted to these medians", c["b_noise"], c["b_noise_crossing"],
                           c["b_noise_agrees"])  # fmt: skip
    simple = (
        "The gradient noise scale's B_simple (median at the best weights of the "
        f"B={fmt_size(c['b_simple_batch_size'])} {esc(c['b_simple_rule'])}-rule runs)"
    )
    text += " " + _crossing_text(simple, c["b_simple"], c["b_simple_crossing"], c["b_simple_agrees"])
    return text + f" <b>{agreement_sentence(c)}</b></p>"
