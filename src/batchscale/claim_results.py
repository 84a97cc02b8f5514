"""What a decided claim is: its row of claims.csv (`ClaimResult`, `COLUMNS`), a part of it, the
bootstrap settings, and the sentences every decision uses (an estimate as text, why the data are
too few). `claims` (C1-C12) and `tuned_claims` (C7-tuned, C8-tuned) both build on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import pandas as pd

from batchscale import stats
from batchscale.claim_specs import SEEDS
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


NO_ESTIMATE = Estimate(math.nan, math.nan, math.nan, 0)


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
    part_list: list[PartResult] = field(default_factory=list)

    def row(self) -> dict:
        """The claim as one row of claims.csv (COLUMNS)."""
        row = {k: v for k, v in asdict(self).items() if k != "part_list"}
        for k in range(1, MAX_PARTS + 1):
            part = self.part_list[k - 1] if len(self.part_list) > 1 and k <= len(self.part_list) else None
            row[f"part{k}"] = part.name if part else ""
            est = part.est if part else NO_ESTIMATE
            row.update({f"part{k}_observed": est.value, f"part{k}_ci_low": est.ci_low,
                        f"part{k}_ci_high": est.ci_high, f"part{k}_n_seeds": est.n if part else None,
                        f"part{k}_verdict": part.verdict if part else ""})  # fmt: skip
        return row


@dataclass
class PartResult:
    """One part of a claim (`claim_specs.Part`) as decided: its name (the metric's column in
    runs.csv, or the LR rule), its estimate over `est.n` units and its own verdict."""

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


def fmt_estimate(est: Estimate) -> str:
    return f"{est.value:.3g} [{est.ci_low:.3g}, {est.ci_high:.3g}]"


def too_little(
    n_units: int, n_batches: int, settings: Settings, unit: str = SEEDS, min_batches: int = 2
) -> str | None:
    """Why `n_units` resampled units (those that enter the statistic) over `n_batches` batch
    sizes are too few for a verdict; None when they suffice."""
    if n_batches < min_batches:
        return f"needs at least {min_batches} batch sizes with a measured value, has {n_batches}"
    if n_units < settings.min_seeds:
        return f"needs at least {settings.min_seeds} {unit} entering the statistic, has {n_units}"
    return None


def record(result: ClaimResult, est: Estimate) -> None:
    result.observed, result.ci_low, result.ci_high = est.value, est.ci_low, est.ci_high
    result.n_seeds = est.n


def inconclusive_text(problem: str | None) -> str:
    return f" Inconclusive: {problem}." if problem else ""
