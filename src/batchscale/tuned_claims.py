"""C7 and C8 asked again with every batch size at its own tuned LR: C7-tuned and C8-tuned.

The article compares two fixed LR rules; the tuned sweep asks the same questions against the
best any LR of the grid does. Both are decided on the test split at LRs chosen on validation,
with the selection-aware intervals of `tuned_analysis`. An optimum on an edge of the LR grid
makes a loss only an upper bound (a better LR may lie beyond the edge): each verdict is kept
only when that bound cannot overturn it (`claim_specs.TUNED_CLAIMS` says which).
"""

from __future__ import annotations

import math

import pandas as pd

from batchscale import stats
from batchscale.claim_results import (
    ClaimResult,
    Settings,
    fmt_estimate,
    inconclusive_text,
    record,
    too_little,
)
from batchscale.claim_specs import MOST_OF_GAP, SMALL_GAP, TUNED_CLAIMS, TunedSpec
from batchscale.stats import Estimate
from batchscale.tuned_analysis import TunedAnalysis

# Where an interval lies against the claim's bounds, before any edge is taken into account.
ABOVE, BELOW, WITHIN, NO_GAP, STRADDLES = "above", "below", "within", "no gap", "straddles"
# What a gap or fraction measured with an edge optimum is: at most the true one, at least, or
# neither (both ends on an edge); and the placements whose verdict that bound cannot overturn.
AT_MOST, AT_LEAST, UNBOUNDED = "at most", "at least", "neither"
SURVIVES = {AT_MOST: {BELOW, NO_GAP}, AT_LEAST: {ABOVE}, UNBOUNDED: set()}


def _result(spec: TunedSpec, settings: Settings) -> ClaimResult:
    rule = spec.rule.format(
        conf=settings.confidence, least=settings.min_seeds, most=MOST_OF_GAP, small=SMALL_GAP
    )
    return ClaimResult(spec.claim_id, spec.text, spec.statistic, spec.expected, rule=rule)


def _estimate(row: pd.Series, name: str, n: int) -> Estimate:
    return Estimate(float(row[name]), float(row[f"{name}_ci_low"]), float(row[f"{name}_ci_high"]), n)


def _lr_text(row: pd.Series) -> str:
    """The chosen LR, as a bound when it lies on an edge of the grid ("LR at least 0.08")."""
    bound = f"{row['bound']} " if isinstance(row["bound"], str) and row["bound"] else ""
    return f"LR {bound}{row['lr']:.3g}"


def _edge_sentence(row: pd.Series) -> str:
    if not (row["at_lower_edge"] or row["at_upper_edge"]):
        return ""
    edge = "largest" if row["at_upper_edge"] else "smallest"
    return (
        f" At B={int(row['batch_size'])} the best LR is the {edge} of the grid ({_lr_text(row)}): a better "
        "one may lie beyond it, so its test loss is only an upper bound on the tuned loss."
    )


def bounded(verdict: str, placement: str, bound: str | None) -> tuple[str, str]:
    """The verdict, kept when the edge `bound` (None: no edge) cannot overturn it, else
    inconclusive; and the sentence that says so."""
    if bound is None or placement in SURVIVES[bound] or verdict == stats.INCONCLUSIVE:
        return verdict, ""
    what = {AT_MOST: "at most", AT_LEAST: "at least", UNBOUNDED: "bounded neither way by"}[bound]
    return stats.INCONCLUSIVE, (
        f" The statistic is {what} the value measured (an optimum on an LR-grid edge), so '{verdict}' "
        "cannot be concluded: inconclusive."
    )


def _placement(est: Estimate, lower: float | None, upper: float | None) -> str:
    """Where the interval lies: ABOVE `upper` (or `lower` when there is no upper), BELOW `lower`,
    WITHIN both, NO_GAP (holds 0, upper end below `upper`: the equivalence answer), else STRADDLES."""
    low, high = est.ci_low, est.ci_high
    if not (math.isfinite(low) and math.isfinite(high)):
        return STRADDLES
    if upper is None:
        return ABOVE if low > lower else BELOW if high < lower else STRADDLES
    if low > upper:
        return ABOVE
    if high < lower:
        return BELOW
    if low > lower and high < upper:
        return WITHIN
    return NO_GAP if low <= lower <= high and high < upper else STRADDLES


def _fractions_text(per_batch: pd.DataFrame, base_batch_size: int) -> str:
    pieces = []
    for row in per_batch.itertuples():
        if math.isnan(row.linear_fraction):
            why = "base batch size, nothing scaled" if row.batch_size == base_batch_size else "undefined"
            pieces.append(f"B={row.batch_size}: – ({why})")
        else:
            est = Estimate(row.linear_fraction, row.linear_fraction_ci_low, row.linear_fraction_ci_high)
            pieces.append(f"B={row.batch_size}: {fmt_estimate(est)}")
    return ", ".join(pieces)


def decide_c7(study: TunedAnalysis, settings: Settings, base_batch_size: int) -> ClaimResult:
    """C7-tuned: the fraction of the tuned improvement the linear rule achieves at the largest batch."""
    result = _result(TUNED_CLAIMS["C7-tuned"], settings)
    table = study.per_batch
    if table.empty or table["none_test_loss"].isna().all() or table["linear_test_loss"].isna().all():
        result.summary = (
            "Not tested: needs a tuned sweep with a finite validation loss and the test losses of rules "
            "'none' and 'linear' (runs.csv: test_loss) at its batch sizes."
        )
        return result
    row = table.iloc[-1]
    est = _estimate(row, "linear_fraction", study.seeds)
    record(result, est)
    problem = too_little(study.seeds, len(table), settings)
    placement = _placement(est, MOST_OF_GAP, None)
    verdict = {ABOVE: stats.REPRODUCED, BELOW: stats.NOT_REPRODUCED}.get(placement, stats.INCONCLUSIVE)
    edge = AT_MOST if (row["at_lower_edge"] or row["at_upper_edge"]) else None
    verdict, overturned = bounded(verdict, placement, edge)
    result.verdict = stats.INCONCLUSIVE if problem else verdict
    large = int(row["batch_size"])
    share = fmt_estimate(est) if math.isfinite(est.value) else "an undefined share"
    losses = (
        f"Median test loss at B={large}: constant LR {row['none_test_loss']:.3f}, linear rule "
        f"{row['linear_test_loss']:.3f}, tuned ({_lr_text(row)}) {row['test_loss']:.3f}"
    )
    result.summary = (
        f"{losses}: the linear rule achieves {share} of the tuned improvement, over "
        f"{study.seeds} seeds. By batch size: {_fractions_text(table, base_batch_size)}."
    )
    result.summary += _edge_sentence(row) + overturned + inconclusive_text(problem)
    if not math.isfinite(est.value):
        result.summary += (
            " Tuning does not improve on the constant LR here: there is no improvement to share."
        )
    return result


def decide_c8(study: TunedAnalysis, settings: Settings) -> ClaimResult:
    """C8-tuned: the relative gap in test loss between the largest and smallest batch at their tuned LRs."""
    result = _result(TUNED_CLAIMS["C8-tuned"], settings)
    table = study.per_batch
    if len(table) < 2:
        result.summary = "Not tested: needs a tuned sweep with a finite validation loss at two batch sizes."
        return result
    small, large, est = table.iloc[0], table.iloc[-1], study.gap
    record(result, est)
    problem = too_little(study.seeds, len(table), settings)
    placement = _placement(est, 0.0, SMALL_GAP)
    verdicts = {WITHIN: stats.REPRODUCED, ABOVE: stats.NOT_REPRODUCED, BELOW: stats.NOT_REPRODUCED,
                NO_GAP: stats.NO_GAP}  # fmt: skip
    verdict = verdicts.get(placement, stats.INCONCLUSIVE)
    verdict, overturned = bounded(verdict, placement, _gap_bound(small, large))
    result.verdict = stats.INCONCLUSIVE if problem else verdict
    result.summary = (
        f"Median test loss at the tuned LR: B={int(small['batch_size'])} {small['test_loss']:.3f} "
        f"({_lr_text(small)}), B={int(large['batch_size'])} {large['test_loss']:.3f} ({_lr_text(large)}); "
        f"relative gap {fmt_estimate(est)} over {study.seeds} seeds."
    )
    if result.verdict == stats.NO_GAP:
        result.summary += (
            f" No gap detectable: the interval holds 0, and the gap is at most {est.ci_high:.3g} (the "
            f"interval's upper end), below the {SMALL_GAP:g} that counts as small."
        )
    result.summary += _edge_sentence(small) + _edge_sentence(large) + overturned + inconclusive_text(problem)
    return result


def _gap_bound(small: pd.Series, large: pd.Series) -> str | None:
    """What the edges make of the gap large/small - 1: an edge at the largest batch lowers its
    true loss (the gap is at most the one measured), at the smallest raises the gap (at least)."""
    at_edge = [bool(row["at_lower_edge"] or row["at_upper_edge"]) for row in (small, large)]
    bounds = {(False, False): None, (False, True): AT_MOST, (True, False): AT_LEAST, (True, True): UNBOUNDED}
    return bounds[tuple(at_edge)]


def decide_tuned(study: TunedAnalysis, settings: Settings, base_batch_size: int) -> list[dict]:
    """claims.csv's rows for C7-tuned and C8-tuned."""
    return [decide_c7(study, settings, base_batch_size).row(), decide_c8(study, settings).row()]
