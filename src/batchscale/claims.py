"""The article's claims C1-C12, each decided from the measurements by its spec (`claim_specs.CLAIMS`).

Nothing here fixes a verdict: every one comes out of `stats.sign_verdict` / `stats.combine`
applied to a bootstrap interval over seeds (or timing repeats). A claim the grid cannot test is
`not tested`; one with too few seeds or batch sizes is `inconclusive`. `decide` is the one path
from a spec to a claims.csv row: `decide_trend` or `decide_gap`, then the spec's notes. With a
tuned-LR sweep, `decide_all` appends C7-tuned and C8-tuned (`tuned_claims`). The names imported
`as` themselves from claim_specs and claim_results are re-exported: callers import them from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from batchscale import analysis, stats, tuned_claims
from batchscale.claim_results import COLUMNS as COLUMNS
from batchscale.claim_results import MAX_PARTS as MAX_PARTS
from batchscale.claim_results import NO_ESTIMATE as NO_ESTIMATE
from batchscale.claim_results import PART_COLUMNS as PART_COLUMNS
from batchscale.claim_results import PART_FIELDS as PART_FIELDS
from batchscale.claim_results import ClaimResult as ClaimResult
from batchscale.claim_results import PartResult as PartResult
from batchscale.claim_results import Settings as Settings
from batchscale.claim_results import fmt_estimate as _fmt
from batchscale.claim_results import inconclusive_text as _inconclusive
from batchscale.claim_results import record as _record
from batchscale.claim_results import too_little as _too_little
from batchscale.claim_specs import (
    ARTICLE_MIN_VAL_LOSS,
    CLAIMS,
    DIVERGED,
    DIVERGED_AT_ENDS,
    NO_GAIN,
    SEEDS,
    SPEEDUP,
    TIMING,
    UNPASSED,
    ClaimSpec,
    GapSpec,
    TrendSpec,
)
from batchscale.claim_specs import CLAIM_TEXT as CLAIM_TEXT
from batchscale.claim_specs import MOST_OF_GAP as MOST_OF_GAP
from batchscale.claim_specs import REPEATS as REPEATS
from batchscale.claim_specs import SMALL_GAP as SMALL_GAP
from batchscale.claim_specs import gap_closed as gap_closed
from batchscale.claim_specs import relative_scaled_gap as relative_scaled_gap
from batchscale.stats import Estimate
from batchscale.tuned_analysis import TunedAnalysis

TREND_RULE = (
    "Spearman's rho between batch size and the metric within each {one}, averaged over {unit}; "
    "{conf:.0%} bootstrap CI over {unit}. A {one} enters only with a finite value at every batch "
    "size and some variation across them{diverged}; at least {least} {unit} must enter, else "
    "inconclusive. Reproduced if the CI lies wholly {side} 0, not reproduced if wholly on the "
    "other side, else inconclusive."
)


def trend_rule(settings: Settings, side: str, unit: str = SEEDS) -> str:
    one = "seed" if unit == SEEDS else "repeat"
    diverged = " (a diverged run leaves its seed out)" if unit == SEEDS else ""
    return TREND_RULE.format(
        one=one, unit=unit, conf=settings.confidence, side=side, diverged=diverged, least=settings.min_seeds
    )


def _pivot(runs: pd.DataFrame, rule: str, metric: str) -> pd.DataFrame:
    """seeds x batch sizes table of `metric` for one scaling rule, as measured."""
    cell = runs[runs["rule"] == rule]
    return cell.pivot(index="seed", columns="batch_size", values=metric).sort_index(axis=1)


def _by_seed(runs: pd.DataFrame, rule: str, metric: str) -> pd.DataFrame:
    """seeds x batch sizes table of `metric` for one scaling rule, holding what a trend rests
    on: the batch sizes with any finite value, and the seeds finite at every one of them (a
    diverged run has NaN statistics, so its seed is left out: `stats.complete_rows`)."""
    table = _pivot(runs, rule, metric)
    table = table.loc[:, np.isfinite(table.to_numpy(dtype=float)).any(axis=0)]
    return stats.complete_rows(table) if table.shape[1] else table.iloc[:0]


def _timing_table(timing: pd.DataFrame, metric: str) -> pd.DataFrame | None:
    """repeats x batch sizes of a timing statistic: SPEEDUP (seconds per epoch at 1 thread over
    those at the most threads, repeat r paired with repeat r) or a timing.csv column at 1 thread
    (timed alone on the machine); None when the timings cannot give it."""
    if timing.empty:
        return None
    if metric == SPEEDUP:
        if timing["threads"].nunique() < 2:
            return None
        return analysis.speedup_by_repeat(timing)
    single = timing[timing["threads"] == 1]
    return stats.complete_rows(single.pivot(index="repeat", columns="batch_size", values=metric))


def _trend_verdict(
    table: pd.DataFrame, sign: int, settings: Settings, unit: str = SEEDS
) -> tuple[Estimate, str, str | None]:
    """Decide a trend of `sign` in `table` (resamples x batch sizes): the estimate, the
    verdict, and why the data are too few for one (None when they suffice). The units
    counted are those with a rho (`stats.per_seed_spearman`), i.e. those resampled."""
    est = settings.trend(table)
    problem = _too_little(est.n, table.shape[1], settings, unit)
    return est, stats.INCONCLUSIVE if problem else stats.sign_verdict(est, sign), problem


def _trend_tables(
    spec: TrendSpec, runs: pd.DataFrame, timing: pd.DataFrame
) -> tuple[list[pd.DataFrame], str]:
    """Each part's units x batch sizes table, or (no tables and) why the claim cannot be tested."""
    if spec.table == TIMING:
        tables = [_timing_table(timing, part.metric) for part in spec.parts]
        return ([], spec.untested) if any(t is None for t in tables) else (tables, "")
    metrics = dict.fromkeys(part.metric for part in spec.parts)
    unmeasured = [m for m in metrics if m not in runs or runs[m].isna().all()]
    if spec.unmeasured and unmeasured:
        return [], spec.unmeasured.format(metrics=", ".join(unmeasured))
    absent = [rule for rule in spec.rules if rule not in set(runs["rule"])]
    if absent:
        return [], spec.untested.format(rule=absent[0])
    return [_by_seed(runs, part.rule, part.metric) for part in spec.parts], ""


def _timing_context(timing: pd.DataFrame) -> dict:
    device = ", ".join(sorted(set(timing["device"]))) if "device" in timing else "cpu"
    return {"most": timing["threads"].max(), "device": device}


def decide_trend(
    spec: TrendSpec, runs: pd.DataFrame, timing: pd.DataFrame, settings: Settings
) -> ClaimResult:
    """Any trend claim: each part's mean per-unit rho(batch size, metric) with its bootstrap CI
    over `spec.unit`, decided on its sign; the claim holds only if every part does (`stats.combine`)."""
    result = ClaimResult(
        spec.claim_id, spec.text, spec.metric, spec.expected_text,
        rule=trend_rule(settings, spec.side_text, spec.unit) + spec.rule_note, unit=spec.unit,
        part_list=[PartResult(part.name, NO_ESTIMATE) for part in spec.parts],
    )  # fmt: skip
    tables, untested = _trend_tables(spec, runs, timing)
    if untested:
        result.summary = f"Not tested: {untested}."
        return result
    context = _timing_context(timing) if spec.table == TIMING else {}
    pieces, estimates = [], []
    for part, record, table in zip(spec.parts, result.part_list, tables, strict=True):
        record.est, record.verdict, problem = _trend_verdict(table, part.sign, settings, spec.unit)
        averages = getattr(table, spec.average)()
        values = ", ".join(f"B={b}: " + spec.value.format(v=v, ms=v * 1000) for b, v in averages.items())
        est, n = _fmt(record.est), record.est.n
        why = f"; {problem}" if problem else ""
        pieces.append(spec.piece.format(
            **context, text=part.text, Text=part.text.capitalize(), label=part.words, values=values, est=est,
            n=n, rows=len(table), unit=spec.unit, verdict=record.verdict, why=why,
            inconclusive=_inconclusive(problem),
        ))  # fmt: skip
        estimates.append(f"{part.words}: {est}, {n} {spec.unit} ({record.verdict})")
    _record(result, result.part_list[0].est)
    result.verdict = stats.combine([part.verdict for part in result.part_list])
    if len(spec.parts) > 1:
        result.parts = " | ".join(estimates)
    result.summary = spec.summary.format(pieces=" | ".join(pieces))
    return result


def _gap_tables(runs: pd.DataFrame) -> tuple[pd.DataFrame, int, int] | None:
    """seeds x (none@Bmin, none@Bmax, linear@Bmin, linear@Bmax) min validation losses, for
    the seeds finite in all four cells (`stats.complete_rows`: a diverged run leaves its
    seed out, since the bootstrap pairs the four cells by seed)."""
    rules = set(runs["rule"])
    if not {"none", "linear"} <= rules:
        return None
    sizes = sorted(runs["batch_size"].unique())
    if len(sizes) < 2:
        return None
    small, large = sizes[0], sizes[-1]
    table = pd.DataFrame(
        {
            f"{rule}@{b}": _pivot(runs, rule, "min_val_loss").get(b, pd.Series(dtype=float))
            for rule in ("none", "linear")
            for b in (small, large)
        }
    )
    return stats.complete_rows(table), small, large


def decide_gap(spec: GapSpec, runs: pd.DataFrame, settings: Settings) -> ClaimResult:
    """A bound on a fraction of the min-val-loss gap between the smallest and largest batch (C7,
    C8): `spec.gap` with its paired bootstrap CI over seeds, reproduced if wholly inside
    (lower, upper), not reproduced if wholly outside a bound, else inconclusive."""
    result = ClaimResult(
        spec.claim_id, spec.text, spec.metric, spec.expected_text,
        rule=spec.rule.format(lower=spec.lower, upper=spec.upper), article=spec.article_text,
    )  # fmt: skip
    found = _gap_tables(runs)
    if found is None:
        result.summary = f"Not tested: {spec.untested}."
        return result
    table, small, large = found
    problem = _too_little(len(table), table.shape[1], settings, min_batches=1)
    est = settings.bootstrap(table, lambda t: spec.gap(t, small, large))
    _record(result, est)
    bounds = [stats.sign_verdict(est, +1, spec.lower)] if spec.lower is not None else []
    bounds += [stats.sign_verdict(est, -1, spec.upper)] if spec.upper is not None else []
    result.verdict = stats.INCONCLUSIVE if problem else stats.combine(bounds)
    m = table.mean()
    means = {f"{rule}_{end}": m[f"{rule}@{b}"] for rule in ("none", "linear")
             for end, b in (("small", small), ("large", large))}  # fmt: skip
    result.summary = spec.summary.format(
        n=len(table), small=small, large=large, est=_fmt(est), article=spec.article_value, **means
    ) + _inconclusive(problem)
    if not math.isfinite(est.value):
        result.summary += spec.undefined
    return result


def _cells_text(runs: pd.DataFrame) -> str:
    cells = sorted({(r, b) for r, b in zip(runs["rule"], runs["batch_size"], strict=True)})
    return ", ".join(f"{r}/bs{b}" for r, b in cells)


def _unpassed_note(spec: ClaimSpec, runs: pd.DataFrame) -> str:
    """The runs under the claim's rules that had not passed their minimum by the last epoch (a
    diverged run has no minimum to pass): the ones whose epoch of the minimum is cut off."""
    unpassed = runs[analysis.cut_off(runs) & runs["rule"].isin(spec.rules)]
    if not len(unpassed):
        return ""
    return (
        f" {len(unpassed)} runs ({_cells_text(unpassed)}) had not passed their minimum by the last "
        "epoch: their epoch of the minimum is a lower bound."
    )


def _diverged_note(spec: ClaimSpec, runs: pd.DataFrame, ends_only: bool = False) -> str:
    """The diverged runs under the claim's rules (`ends_only`: at the smallest and largest batch,
    the only ones a gap compares), which the statistic leaves out with their seeds."""
    hit = runs[analysis.diverged(runs) & runs["rule"].isin(spec.rules)]
    if ends_only:
        hit = hit[hit["batch_size"].isin([runs["batch_size"].min(), runs["batch_size"].max()])]
    if not len(hit):
        return ""
    return (
        f" {len(hit)} diverged runs ({_cells_text(hit)}) are left out of this statistic, and with "
        "them their seeds (a seed enters only with a value in every cell it is compared across): "
        "the loss of a diverged member says nothing about the claim."
    )


def _no_gain_note(spec: ClaimSpec, runs: pd.DataFrame, timing: pd.DataFrame) -> str:
    """C11 asks whether the speed-up from threads grows with batch size; when no batch size ran
    faster on all threads than on one, say so: the trend is then a shrinking loss, not a gain."""
    speedup = _timing_table(timing, SPEEDUP)
    if speedup is None or speedup.empty:
        return ""
    medians = speedup.median()
    if (medians > 1).any():
        return ""
    return (
        f" No batch size ran faster on {timing['threads'].max()} threads than on 1 (median speed-ups "
        f"at most {medians.max():.2f}x): what rises with batch size is how little the threads cost, "
        "not a gain from them."
    )


# What each of a spec's `notes` appends to its summary, whatever the verdict.
NOTES: dict[str, Callable[[ClaimSpec, pd.DataFrame, pd.DataFrame], str]] = {
    UNPASSED: lambda spec, runs, timing: _unpassed_note(spec, runs),
    DIVERGED: lambda spec, runs, timing: _diverged_note(spec, runs),
    DIVERGED_AT_ENDS: lambda spec, runs, timing: _diverged_note(spec, runs, ends_only=True),
    NO_GAIN: _no_gain_note,
}
# The LR rules whose runs each run-based claim is decided on (C3 and C11 rest on timings).
RUN_CLAIM_RULES = {claim_id: spec.rules for claim_id, spec in CLAIMS.items() if spec.rules}


def decide(spec: ClaimSpec, runs: pd.DataFrame, timing: pd.DataFrame, settings: Settings) -> ClaimResult:
    """The claim `spec` describes, decided, with its notes appended to the summary."""
    if isinstance(spec, GapSpec):
        result = decide_gap(spec, runs, settings)
    else:
        result = decide_trend(spec, runs, timing, settings)
    result.summary += "".join(NOTES[note](spec, runs, timing) for note in spec.notes)
    return result


def timing_claim(timing: pd.DataFrame, settings: Settings) -> ClaimResult:
    """C3 alone: it rests on the timings only."""
    return decide(CLAIMS["C3"], pd.DataFrame(), timing, settings)


def speedup_claim(timing: pd.DataFrame, settings: Settings) -> ClaimResult:
    """C11 alone: it rests on the timings only."""
    return decide(CLAIMS["C11"], pd.DataFrame(), timing, settings)


def decide_all(
    runs: pd.DataFrame, timing: pd.DataFrame, params: dict, tuned: TunedAnalysis | None = None
) -> pd.DataFrame:
    """Every claim in `CLAIMS` with its statistic, interval and verdict, in claim order; with a
    tuned sweep (`tuned_analysis.analyse`, None without one) C7-tuned and C8-tuned after them."""
    settings = Settings.from_params(params)
    rows = [decide(spec, runs, timing, settings).row() for spec in CLAIMS.values()]
    if tuned is not None:
        rows += tuned_claims.decide_tuned(tuned, settings, params["train"]["base_batch_size"])
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.astype({f"part{k}_n_seeds": "Int64" for k in range(1, MAX_PARTS + 1)})


RULE_WORDS = {"none": "unscaled", "linear": "scaled (linear)"}


def article_comparison(runs: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """The article's numbers and ours, with CIs over seeds: its min val losses
    (`claim_specs.ARTICLE_MIN_VAL_LOSS`), then every gap claim's statistic."""
    found = _gap_tables(runs)
    if found is None:
        return pd.DataFrame(columns=["quantity", "article", "ours", "ci_low", "ci_high"])
    table, small, large = found
    out = []
    for (rule, end), article in ARTICLE_MIN_VAL_LOSS.items():
        b = small if end == "small" else large
        est = settings.bootstrap(table, lambda t, c=f"{rule}@{b}": float(t[c].mean()))
        out.append(
            (f"min val loss, B={b}, LR {RULE_WORDS[rule]}", article, est.value, est.ci_low, est.ci_high)
        )
    for spec in CLAIMS.values():
        if isinstance(spec, GapSpec):
            est = settings.bootstrap(table, lambda t, gap=spec.gap: gap(t, small, large))
            out.append((spec.quantity, spec.article_value, est.value, est.ci_low, est.ci_high))
    return pd.DataFrame(out, columns=["quantity", "article", "ours", "ci_low", "ci_high"])


def headline_metrics(claims: pd.DataFrame, runs: pd.DataFrame) -> dict:
    """reports/metrics.json: the numbers `dvc metrics show` and `dvc exp show` list."""
    metrics: dict = {"claims": {}, "min_val_loss": {}, "verdicts": {}}
    for row in claims.itertuples():
        if row.verdict == stats.NOT_TESTED:
            continue
        metrics["claims"][row.claim_id] = {
            "observed": _finite_or_none(row.observed),
            "ci_low": _finite_or_none(row.ci_low),
            "ci_high": _finite_or_none(row.ci_high),
            "reproduced": int(row.verdict == stats.REPRODUCED),
        }
        parts = _part_metrics(row)
        if parts:
            metrics["claims"][row.claim_id]["parts"] = parts
    cell_means = runs.groupby(["rule", "batch_size"])["min_val_loss"].mean()
    for (rule, batch_size), value in cell_means.items():
        # A cell whose every run diverged has no mean: null (JSON has no NaN).
        mean = _finite_or_none(value)
        metrics["min_val_loss"][f"{rule}_bs{batch_size}"] = None if mean is None else round(mean, 5)
    for verdict in stats.VERDICTS:
        metrics["verdicts"][verdict.replace(" ", "_")] = int((claims["verdict"] == verdict).sum())
    return metrics


def _part_metrics(row) -> dict:
    """claims.<id>.parts.<part>: every part's statistic, CI, seeds and verdict, by its name
    (e.g. claims.C9.parts.none, claims.C5.parts.top_eigenvalue_best); empty for one part."""
    parts = {}
    for k in range(1, MAX_PARTS + 1):
        name = getattr(row, f"part{k}", "")
        if not isinstance(name, str) or not name:
            continue
        verdict = getattr(row, f"part{k}_verdict")
        n = getattr(row, f"part{k}_n_seeds")
        parts[name] = {
            "observed": _finite_or_none(getattr(row, f"part{k}_observed")),
            "ci_low": _finite_or_none(getattr(row, f"part{k}_ci_low")),
            "ci_high": _finite_or_none(getattr(row, f"part{k}_ci_high")),
            "n_seeds": None if pd.isna(n) else int(n),
            "reproduced": int(verdict == stats.REPRODUCED),
            "verdict": verdict,
        }
    return parts


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
