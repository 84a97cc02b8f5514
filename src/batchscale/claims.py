"""The article's claims C1-C12, each decided from the measurements by a written rule.

Nothing here fixes a verdict: every one comes out of `stats.sign_verdict` / `stats.combine`
applied to a bootstrap interval over seeds. A claim the grid cannot test is `not tested`;
one with too few seeds or batch sizes is `inconclusive`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from batchscale import stats
from batchscale.stats import Estimate

# A claim resting on several statistics (C5, C9, C10) has, besides the first part's numbers in
# observed/ci_low/ci_high/n_seeds, every part's in part<k>_* (k = 1, 2); part<k> names the part
# (the metric's column in runs.csv, or the LR rule for C9) and `parts` says it in words.
MAX_PARTS = 2
PART_FIELDS = ("observed", "ci_low", "ci_high", "n_seeds", "verdict")
PART_COLUMNS = [f"part{k}{suffix}" for k in range(1, MAX_PARTS + 1)
                for suffix in ("", *(f"_{f}" for f in PART_FIELDS))]  # fmt: skip
COLUMNS = [
    "claim_id", "claim", "metric", "expected", "observed", "ci_low", "ci_high",
    "n_seeds", "verdict", "rule", "article", "summary", "parts", "unit", *PART_COLUMNS,
]  # fmt: skip

# What a trend's bootstrap resamples: seeds (runs) or, for C3 and C11, timing repeats. The
# column n_seeds counts these units; `unit` names them.
SEEDS, REPEATS = "seeds", "repeats"

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


# C8: how small "small" is, relative to the smallest batch's minimum validation loss.
SMALL_GAP = 0.10
# C7: "most of the gap" means more than this fraction of it.
MOST_OF_GAP = 0.5

CLAIM_TEXT = {
    "C1": "The larger the batch, the slower the training loss decreases.",
    "C2": "The larger the batch, the higher the minimum validation loss.",
    "C3": "The larger the batch, the less time each epoch takes.",
    "C4": "The larger the batch, the more epochs it takes to reach the minimum validation loss.",
    "C5": "Small batches converge to flat minimisers, large batches to sharp ones.",
    "C6": "Small-batch training finds minima farther from the initial weights.",
    "C7": "The linear scaling rule removes most of the gap between small and large batches.",
    "C8": "With the scaled LR a slight, small gap remains between the smallest and largest batch.",
    "C9": "Unscaled, large batches take longer to converge in wall-clock time; scaled, they train faster.",
    "C10": "Larger batches apply smaller updates, because gradients inside a batch compete.",
    "C11": "Large batches profit more from parallel hardware.",
    "C12": "Loss-landscape pictures show the sharp vs flat difference.",
}


@dataclass
class ClaimResult:
    claim_id: str
    claim: str
    metric: str
    expected: str
    observed: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    # How many units entered the statistic (seeds, or timing repeats: see `unit`).
    n_seeds: int = 0
    verdict: str = stats.NOT_TESTED
    rule: str = ""
    article: str = ""
    summary: str = ""
    # A claim resting on several statistics: each one's estimate and verdict in words
    # ("a | b"); the observed/ci/n_seeds columns hold the first part only, and every part's
    # numbers are in part<k>_* (see `row`).
    parts: str = ""
    unit: str = SEEDS
    part_list: list[Part] = field(default_factory=list)

    def row(self) -> dict:
        """The claim as one row of claims.csv (COLUMNS)."""
        row = {k: v for k, v in asdict(self).items() if k != "part_list"}
        for k in range(1, MAX_PARTS + 1):
            part = self.part_list[k - 1] if len(self.part_list) > 1 and k <= len(self.part_list) else None
            row[f"part{k}"] = part.name if part else ""
            est = part.est if part else Estimate(math.nan, math.nan, math.nan, 0)
            row.update({f"part{k}_observed": est.value, f"part{k}_ci_low": est.ci_low,
                        f"part{k}_ci_high": est.ci_high, f"part{k}_n_seeds": est.n if part else None,
                        f"part{k}_verdict": part.verdict if part else ""})  # fmt: skip
        return row


@dataclass
class Part:
    """One statistic of a claim resting on several: its name (the metric's column in runs.csv,
    or the LR rule), its estimate over `est.n` units and its own verdict."""

    name: str
    est: Estimate
    verdict: str = stats.NOT_TESTED


@dataclass(frozen=True)
class Settings:
    reps: int
    confidence: float
    seed: int
    min_seeds: int

    @classmethod
    def from_params(cls, params: dict) -> Settings:
        s = params["stats"]
        return cls(s["bootstrap"], s["confidence"], s["seed"], s["min_seeds"])

    def bootstrap(self, table: pd.DataFrame, statistic: Callable[[pd.DataFrame], float]) -> Estimate:
        return stats.paired_bootstrap(table, statistic, self.reps, self.confidence, self.seed)

    def trend(self, table: pd.DataFrame) -> Estimate:
        return stats.rank_trend(table, self.reps, self.confidence, self.seed)


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


def _fmt(est: Estimate) -> str:
    return f"{est.value:.3g} [{est.ci_low:.3g}, {est.ci_high:.3g}]"


def _too_little(
    n_units: int, n_batches: int, settings: Settings, unit: str = SEEDS, min_batches: int = 2
) -> str | None:
    """Why `n_units` resampled units (those that enter the statistic) over `n_batches` batch
    sizes are too few for a verdict; None when they suffice."""
    if n_batches < min_batches:
        return f"needs at least {min_batches} batch sizes with a measured value, has {n_batches}"
    if n_units < settings.min_seeds:
        return f"needs at least {settings.min_seeds} {unit} entering the statistic, has {n_units}"
    return None


def _decide_trend(
    table: pd.DataFrame, sign: int, settings: Settings, unit: str = SEEDS
) -> tuple[Estimate, str, str | None]:
    """Decide a trend of `sign` in `table` (resamples x batch sizes): the estimate, the
    verdict, and why the data are too few for one (None when they suffice). The units
    counted are those with a rho (`stats.per_seed_spearman`), i.e. those resampled."""
    est = settings.trend(table)
    problem = _too_little(est.n, table.shape[1], settings, unit)
    return est, stats.INCONCLUSIVE if problem else stats.sign_verdict(est, sign), problem


def _record(result: ClaimResult, est: Estimate) -> None:
    result.observed, result.ci_low, result.ci_high = est.value, est.ci_low, est.ci_high
    result.n_seeds = est.n


def _inconclusive(problem: str | None) -> str:
    return f" Inconclusive: {problem}." if problem else ""


def trend_claim(
    claim_id: str,
    runs: pd.DataFrame,
    metric: str,
    metric_text: str,
    expected_sign: int,
    settings: Settings,
    rule: str = "none",
) -> ClaimResult:
    """A claim that `metric` rises (expected_sign +1) or falls (-1) with batch size."""
    side = "above" if expected_sign > 0 else "below"
    result = ClaimResult(
        claim_id,
        CLAIM_TEXT[claim_id],
        f"mean Spearman rho(batch size, {metric_text}), LR rule '{rule}'",
        f"rho {'>' if expected_sign > 0 else '<'} 0",
        rule=trend_rule(settings, side),
    )
    if rule not in set(runs["rule"]):
        result.summary = f"Not tested: the grid has no runs with LR rule '{rule}'."
        return result
    table = _by_seed(runs, rule, metric)
    est, result.verdict, problem = _decide_trend(table, expected_sign, settings)
    _record(result, est)
    means = table.mean()
    shown = ", ".join(f"B={b}: {v:.3g}" for b, v in means.items())
    result.summary = (
        f"{metric_text.capitalize()} (mean over the {len(table)} seeds finite at every batch size) {shown}; "
        f"rho = {_fmt(est)} over {est.n} seeds." + _inconclusive(problem)
    )
    return result


@dataclass(frozen=True)
class TrendPart:
    """One measured trend a claim rests on: `metric` should move with batch size as `sign`."""

    metric: str
    text: str
    sign: int


def trend_parts_claim(
    claim_id: str, runs: pd.DataFrame, parts: list[TrendPart], settings: Settings, rule: str = "none"
) -> ClaimResult:
    """A claim resting on several trends (e.g. two sharpness measures): each part is decided
    like `trend_claim`; the claim holds only if every part does (`stats.combine`)."""
    first = parts[0]
    result = ClaimResult(
        claim_id,
        CLAIM_TEXT[claim_id],
        "mean Spearman rho(batch size, " + " | ".join(p.text for p in parts) + f"), LR rule '{rule}'",
        " and ".join(f"rho {'>' if p.sign > 0 else '<'} 0" for p in parts),
        rule=trend_rule(settings, "on the claimed side of")
        + (" Every part must hold; observed/CI/seeds are the first part's." if len(parts) > 1 else ""),
        part_list=[Part(p.metric, Estimate(math.nan, math.nan, math.nan, 0)) for p in parts],
    )
    missing = [p.metric for p in parts if p.metric not in runs or runs[p.metric].isna().all()]
    if missing or rule not in set(runs["rule"]):
        what = f"no measurements of {', '.join(missing)}" if missing else f"no runs with LR rule '{rule}'"
        result.summary = f"Not tested: {what}."
        return result
    verdicts, pieces, estimates = [], [], []
    for part, record in zip(parts, result.part_list, strict=True):
        table = _by_seed(runs, rule, part.metric)
        est, verdict, problem = _decide_trend(table, part.sign, settings)
        record.est, record.verdict = est, verdict
        verdicts.append(verdict)
        means = ", ".join(f"B={b}: {v:.3g}" for b, v in table.mean().items())
        why = f"; {problem}" if problem else ""
        pieces.append(f"{part.text} {means}; rho = {_fmt(est)}, {est.n} seeds ({verdict}{why})")
        estimates.append(f"{part.text}: {_fmt(est)}, {est.n} seeds ({verdict})")
        if part is first:
            _record(result, est)
    result.verdict = stats.combine(verdicts)
    if len(parts) > 1:
        result.parts = " | ".join(estimates)
    result.summary = "Mean over the seeds finite at every batch size: " + " | ".join(pieces) + "."
    return result


def speedup_claim(timing: pd.DataFrame, settings: Settings) -> ClaimResult:
    """C11: the speed-up from using all threads instead of one grows with batch size."""
    result = ClaimResult(
        "C11",
        CLAIM_TEXT["C11"],
        "mean Spearman rho(batch size, speed-up = seconds per epoch at 1 thread / at all threads)",
        "rho > 0",
        rule=trend_rule(settings, "above", REPEATS)
        + " Resamples are timing repeats, not seeds (repeat r at 1 thread paired with repeat r at all "
        "threads); the seeds column counts repeats.",
        unit=REPEATS,
    )
    if timing.empty or timing["threads"].nunique() < 2:
        result.summary = "Not tested: epochs were timed at one thread count only (a 1-CPU machine)."
        return result
    most = timing["threads"].max()
    times = timing.pivot_table(index=["repeat", "batch_size"], columns="threads", values="epoch_seconds")
    speedup = stats.complete_rows((times[1] / times[most]).unstack("batch_size"))
    est, result.verdict, problem = _decide_trend(speedup, +1, settings, REPEATS)
    _record(result, est)
    shown = ", ".join(f"B={b}: {v:.2f}x" for b, v in speedup.median().items())
    device = ", ".join(sorted(set(timing["device"]))) if "device" in timing else "cpu"
    result.summary = (
        f"Median speed-up of {most} threads over 1 on {device}: {shown}; rho = {_fmt(est)} over "
        f"{est.n} timing repeats." + _inconclusive(problem)
    )
    return result


def timing_claim(timing: pd.DataFrame, settings: Settings) -> ClaimResult:
    """C3: seconds per epoch fall with batch size (timed alone on the machine, one thread)."""
    result = ClaimResult(
        "C3",
        CLAIM_TEXT["C3"],
        "mean Spearman rho(batch size, seconds per epoch), 1 thread, timed alone on the machine",
        "rho < 0",
        rule=trend_rule(settings, "below", REPEATS)
        + " Resamples are timing repeats rather than seeds; the seeds column counts repeats.",
        unit=REPEATS,
    )
    if timing.empty:
        result.summary = "Not tested: no timing measurements."
        return result
    single = timing[timing["threads"] == 1]
    table = stats.complete_rows(single.pivot(index="repeat", columns="batch_size", values="epoch_seconds"))
    est, result.verdict, problem = _decide_trend(table, -1, settings, REPEATS)
    _record(result, est)
    medians = table.median()
    shown = ", ".join(f"B={b}: {v * 1000:.0f} ms" for b, v in medians.items())
    result.summary = (
        f"Median seconds per epoch {shown}; rho = {_fmt(est)} over {est.n} timing repeats."
        + _inconclusive(problem)
    )
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


def gap_closed(table: pd.DataFrame, small: int, large: int) -> float:
    """Fraction of the unscaled large-vs-small gap in min validation loss that scaling closes."""
    m = table.mean()
    gap = m[f"none@{large}"] - m[f"none@{small}"]
    if gap <= 0:
        return float("nan")
    return float((m[f"none@{large}"] - m[f"linear@{large}"]) / gap)


def relative_scaled_gap(table: pd.DataFrame, small: int, large: int) -> float:
    """(scaled large-batch loss - scaled small-batch loss) / scaled small-batch loss."""
    m = table.mean()
    return float(m[f"linear@{large}"] / m[f"linear@{small}"] - 1)


def gap_claims(runs: pd.DataFrame, settings: Settings) -> list[ClaimResult]:
    """C7 (most of the gap closed) and C8 (a slight gap remains)."""
    c7 = ClaimResult(
        "C7",
        CLAIM_TEXT["C7"],
        "fraction of the unscaled min-val-loss gap (largest vs smallest batch) closed by linear scaling",
        f"> {MOST_OF_GAP}",
        rule=f"Paired bootstrap CI over seeds. Reproduced if the CI lies wholly above {MOST_OF_GAP}, "
        f"not reproduced if wholly below, else inconclusive (also when there is no unscaled gap to close).",
        article="0.86 (0.395 -> 0.352 vs 0.345)",
    )
    c8 = ClaimResult(
        "C8",
        CLAIM_TEXT["C8"],
        "relative gap in min val loss, linear rule: largest / smallest batch - 1",
        f"> 0 and < {SMALL_GAP}",
        rule=f"Paired bootstrap CI over seeds. Reproduced if the CI lies wholly within (0, {SMALL_GAP}); "
        f"not reproduced if wholly below 0 or wholly above {SMALL_GAP}; else inconclusive.",
        article="0.026 (0.352 vs 0.343)",
    )
    found = _gap_tables(runs)
    if found is None:
        for c in (c7, c8):
            c.summary = "Not tested: needs rules 'none' and 'linear' and at least two batch sizes."
        return [c7, c8]
    table, small, large = found
    m = table.mean()
    for c in (c7, c8):
        c.n_seeds = len(table)
    problem = _too_little(len(table), table.shape[1], settings, min_batches=1)

    est7 = settings.bootstrap(table, lambda t: gap_closed(t, small, large))
    c7.observed, c7.ci_low, c7.ci_high = est7.value, est7.ci_low, est7.ci_high
    c7.verdict = stats.INCONCLUSIVE if problem else stats.sign_verdict(est7, +1, MOST_OF_GAP)
    c7.summary = (
        f"Min val loss (mean over {len(table)} seeds) B={small}: {m[f'none@{small}']:.3f}; "
        f"B={large} unscaled {m[f'none@{large}']:.3f}, scaled {m[f'linear@{large}']:.3f}: "
        f"{_fmt(est7)} of the gap closed (article: 0.86)." + _inconclusive(problem)
    )
    if not math.isfinite(est7.value):
        c7.summary += " The unscaled large batch is not worse here, so there is no gap to close."

    est8 = settings.bootstrap(table, lambda t: relative_scaled_gap(t, small, large))
    c8.observed, c8.ci_low, c8.ci_high = est8.value, est8.ci_low, est8.ci_high
    above_zero = stats.sign_verdict(est8, +1, 0.0)
    below_small = stats.sign_verdict(est8, -1, SMALL_GAP)
    c8.verdict = stats.INCONCLUSIVE if problem else stats.combine([above_zero, below_small])
    c8.summary = (
        f"Scaled LR: min val loss B={small} {m[f'linear@{small}']:.3f} vs B={large} "
        f"{m[f'linear@{large}']:.3f}, relative gap {_fmt(est8)} (article: 0.026)." + _inconclusive(problem)
    )
    return [c7, c8]


def wallclock_claim(runs: pd.DataFrame, settings: Settings) -> ClaimResult:
    """C9: time to the minimum rises with batch size unscaled and falls with it scaled."""
    result = ClaimResult(
        "C9",
        CLAIM_TEXT["C9"],
        "mean Spearman rho(batch size, wall-clock seconds to min val loss), LR rules 'none' | 'linear'",
        "rho > 0 unscaled and rho < 0 scaled",
        rule=trend_rule(settings, "above/below")
        + " Both parts must hold; observed/CI/seeds are the first part's (unscaled, 'none'); time = "
        "epoch of the minimum x timed seconds per epoch (1 thread).",
        part_list=[Part(rule, Estimate(math.nan, math.nan, math.nan, 0)) for rule in ("none", "linear")],
    )
    if not {"none", "linear"} <= set(runs["rule"]) or runs["time_to_min_s"].isna().all():
        result.summary = "Not tested: needs rules 'none' and 'linear' and epoch timings."
        return result
    pieces, estimates = [], []
    for part, sign in zip(result.part_list, (+1, -1), strict=True):
        table = _by_seed(runs, part.name, "time_to_min_s")
        part.est, part.verdict, problem = _decide_trend(table, sign, settings)
        estimates.append(f"{part.name}: {_fmt(part.est)}, {part.est.n} seeds ({part.verdict})")
        means = ", ".join(f"B={b}: {v:.1f}s" for b, v in table.mean().items())
        why = f"; {problem}" if problem else ""
        pieces.append(f"{part.name}: {means}; rho = {_fmt(part.est)}, {part.est.n} seeds "
                      f"({part.verdict}{why})")  # fmt: skip
    _record(result, result.part_list[0].est)
    result.verdict = stats.combine([part.verdict for part in result.part_list])
    result.parts = " | ".join(estimates)
    result.summary = "Seconds to min val loss (mean over the seeds finite at every batch size), " + (
        " | ".join(pieces) + "."
    )
    return result


# The LR rules whose runs each run-based claim is decided on (C3 and C11 rest on timings).
RUN_CLAIM_RULES = {
    **{c: ("none",) for c in ("C1", "C2", "C4", "C5", "C6", "C10", "C12")},
    **{c: ("none", "linear") for c in ("C7", "C8", "C9")},
}


def _cells_text(runs: pd.DataFrame) -> str:
    cells = sorted({(r, b) for r, b in zip(runs["rule"], runs["batch_size"], strict=True)})
    return ", ".join(f"{r}/bs{b}" for r, b in cells)


def decide_all(runs: pd.DataFrame, timing: pd.DataFrame, params: dict) -> pd.DataFrame:
    """Every claim C1-C12 with its statistic, interval and verdict, in claim order."""
    settings = Settings.from_params(params)
    results = {
        "C1": trend_claim("C1", runs, "train_loss_auc", "mean training loss over epochs", +1, settings),
        "C2": trend_claim("C2", runs, "min_val_loss", "minimum validation loss", +1, settings),
        "C3": timing_claim(timing, settings),
        "C4": trend_claim("C4", runs, "best_epoch", "epoch of minimum validation loss", +1, settings),
        "C6": trend_claim("C6", runs, "dist_final", "L2 distance of final weights from init", -1, settings),
        "C9": wallclock_claim(runs, settings),
    }
    results.update({c.claim_id: c for c in gap_claims(runs, settings)})
    results["C5"] = trend_parts_claim(
        "C5",
        runs,
        [
            TrendPart("top_eigenvalue_best", "top Hessian eigenvalue (best weights)", +1),
            TrendPart("eps_sharpness_best", "epsilon-sharpness (best weights)", +1),
        ],
        settings,
    )
    results["C10"] = trend_parts_claim(
        "C10",
        runs,
        [
            TrendPart("mean_update_norm", "norm of an epoch's weight update", -1),
            TrendPart("grad_competition", "|mean gradient| / mean |gradient| in a batch", -1),
        ],
        settings,
    )
    results["C11"] = speedup_claim(timing, settings)
    results["C12"] = trend_parts_claim(
        "C12",
        runs,
        [TrendPart("slice_curvature", "curvature at the solution of a filter-normalised 1-D slice", +1)],
        settings,
    )
    diverged = runs["diverged_epoch"] >= 0 if "diverged_epoch" in runs else pd.Series(False, index=runs.index)
    passed = runs["min_passed"].astype("boolean").fillna(False).astype(bool)
    unpassed = runs[~passed & ~diverged]
    if len(unpassed):
        results["C4"].summary += (
            f" {len(unpassed)} runs ({_cells_text(unpassed)}) had not passed their minimum by the last "
            "epoch: their epoch of the minimum is a lower bound."
        )
    ends = [runs["batch_size"].min(), runs["batch_size"].max()] if len(runs) else []
    for claim_id, rules in RUN_CLAIM_RULES.items():
        hit = runs[diverged & runs["rule"].isin(rules)]
        if claim_id in ("C7", "C8"):  # the gap is between the smallest and the largest batch only
            hit = hit[hit["batch_size"].isin(ends)]
        if len(hit):
            results[claim_id].summary += (
                f" {len(hit)} diverged runs ({_cells_text(hit)}) are left out of this statistic, and with "
                "them their seeds (a seed enters only with a value in every cell it is compared across): "
                "the loss of a diverged member says nothing about the claim."
            )
    table = pd.DataFrame([results[f"C{i}"].row() for i in range(1, 13)], columns=COLUMNS)
    return table.astype({f"part{k}_n_seeds": "Int64" for k in range(1, MAX_PARTS + 1)})


def article_comparison(runs: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """C7/C8 side by side: the article's numbers and ours, with CIs over seeds."""
    found = _gap_tables(runs)
    if found is None:
        return pd.DataFrame(columns=["quantity", "article", "ours", "ci_low", "ci_high"])
    table, small, large = found
    rows = [
        (f"min val loss, B={small}, LR unscaled", 0.345, f"none@{small}"),
        (f"min val loss, B={large}, LR unscaled", 0.395, f"none@{large}"),
        (f"min val loss, B={large}, LR scaled (linear)", 0.352, f"linear@{large}"),
        (f"min val loss, B={small}, LR scaled (linear)", 0.343, f"linear@{small}"),
    ]
    out = []
    for label, article, column in rows:
        est = settings.bootstrap(table, lambda t, c=column: float(t[c].mean()))
        out.append((label, article, est.value, est.ci_low, est.ci_high))
    est = settings.bootstrap(table, lambda t: gap_closed(t, small, large))
    out.append(("fraction of the gap closed by scaling", 0.86, est.value, est.ci_low, est.ci_high))
    est = settings.bootstrap(table, lambda t: relative_scaled_gap(t, small, large))
    out.append(
        ("relative gap remaining, scaled LR", round(0.352 / 0.343 - 1, 3), est.value, est.ci_low, est.ci_high)
    )
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
