"""The claims C1-C12 as data: what each rests on, how it is decided and said, and the article's numbers.

`claims.decide` reads a spec and nothing else, so adding a claim is one entry in `CLAIMS` (plus a
decide function in `claims` only for a new kind of statistic). Two kinds exist:

- `TrendSpec`: every part (a metric under an LR rule) rises or falls with batch size; decided by
  `claims.decide_trend` on the mean per-unit Spearman rho, over seeds (runs.csv) or timing repeats.
- `GapSpec`: a fraction of the min-val-loss gap between the smallest and largest batch lies within
  bounds; decided by `claims.decide_gap` with a paired bootstrap over seeds (C7, C8).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

# What a trend's bootstrap resamples: seeds (runs) or, for C3 and C11, timing repeats. The
# column n_seeds counts these units; `unit` names them.
SEEDS, REPEATS = "seeds", "repeats"
# Where a trend's parts are read: runs.csv (seeds x batch sizes per LR rule) or timing.csv
# (repeats x batch sizes: a column at 1 thread, or SPEEDUP, 1 thread over all of them).
RUNS, TIMING = "runs", "timing"
SPEEDUP = "speedup"
# The sentences a claim's summary ends with, in the order its spec lists them (`claims.NOTES`):
UNPASSED = "unpassed minimum"  # runs under the claim's rules that had not passed their minimum in time
DIVERGED = "diverged runs"  # the diverged runs under the claim's rules, left out of it
DIVERGED_AT_ENDS = "diverged runs at the smallest and largest batch"  # the same, for a gap
NO_GAIN = "no batch size gains"  # C11: when no batch size ran faster on all threads than on one

# C7: "most of the gap" means more than this fraction of it.
MOST_OF_GAP = 0.5
# C8: how small "small" is, relative to the smallest batch's minimum validation loss.
SMALL_GAP = 0.10

# The article's numbers, all of them: its minimum validation losses at the smallest and the
# largest batch, unscaled ('none') and scaled ('linear'). C7's and C8's figures follow from them
# by the claims' own statistics (`GapSpec.article_value`).
ARTICLE_MIN_VAL_LOSS = {
    ("none", "small"): 0.345,
    ("none", "large"): 0.395,
    ("linear", "large"): 0.352,
    ("linear", "small"): 0.343,
}


def gap_closed(table: pd.DataFrame, small, large) -> float:
    """Fraction of the unscaled large-vs-small gap in min validation loss that scaling closes."""
    m = table.mean()
    gap = m[f"none@{large}"] - m[f"none@{small}"]
    if gap <= 0:
        return float("nan")
    return float((m[f"none@{large}"] - m[f"linear@{large}"]) / gap)


def relative_scaled_gap(table: pd.DataFrame, small, large) -> float:
    """(scaled large-batch loss - scaled small-batch loss) / scaled small-batch loss."""
    m = table.mean()
    return float(m[f"linear@{large}"] / m[f"linear@{small}"] - 1)


@dataclass(frozen=True)
class Part:
    """One trend a claim rests on: `metric` (a runs.csv column under LR `rule`, or a timing
    statistic) rises with batch size (sign +1) or falls (-1). `label` names the part in claims.csv
    (part<k>) and in the summary; without one, claims.csv names it by its metric, the summary by `text`."""

    metric: str
    text: str
    sign: int
    rule: str = "none"
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.metric

    @property
    def words(self) -> str:
        return self.label or self.text


@dataclass(frozen=True)
class ClaimSpec:
    """What every claim has: its id, its text in the article's words, and the sentences its summary
    ends with (`notes`: UNPASSED, DIVERGED, DIVERGED_AT_ENDS), appended by `claims.decide`."""

    claim_id: str
    text: str
    notes: tuple[str, ...] = ()

    @property
    def rules(self) -> tuple[str, ...]:
        """The LR rules whose runs the claim is decided on (none: it rests on timings)."""
        return ()


# A trend's summary is `summary` with {pieces}: one `piece` per part, joined by " | ". A piece may
# use {text} and {Text} (the part's metric in words), {label} (`Part.words`), {values} ("B=b: x, ...",
# the mean over seeds or median over repeats per batch size, each x as `value` formats {v}, or {ms}
# = v x 1000), {est} (rho [CI]), {n} (units with a rho), {rows} (units in the table), {unit},
# {verdict}, {why} ("; why too few" or ""), {inconclusive} (" Inconclusive: why too few." or ""),
# and for timings {most} (the most threads) and {device}.
ONE_TREND = (
    "{Text} (mean over the {rows} seeds finite at every batch size) {values}; rho = {est} over {n} seeds."
    "{inconclusive}"
)
PART_TREND = "{label} {values}; rho = {est}, {n} {unit} ({verdict}{why})"
EVERY_PART_HOLDS = " Every part must hold; observed/CI/seeds are the first part's."
# C5, C10, C12: metrics only some studies measure (probes), summarised part by part.
PER_PART = {
    "side": "on the claimed side of",
    "summary": "Mean over the seeds finite at every batch size: {pieces}.",
    "piece": PART_TREND,
    "unmeasured": "no measurements of {metrics}",
    "untested": "no runs with LR rule '{rule}'",
}


@dataclass(frozen=True, kw_only=True)
class TrendSpec(ClaimSpec):
    """A claim that each of `parts` moves with batch size its way; it holds if every part does."""

    parts: tuple[Part, ...]
    table: str = RUNS  # where the parts are read: RUNS or TIMING
    unit: str = SEEDS  # what the bootstrap resamples
    statistic: str = ""  # claims.csv's metric column; default: from the parts
    expected: str = ""  # claims.csv's expected column; default: from the parts' signs
    side: str = ""  # "reproduced if the CI lies wholly {side} 0"; default: above / below
    rule_note: str = ""  # appended to the written rule (`claims.TREND_RULE`)
    summary: str = "{pieces}"
    piece: str = ONE_TREND
    value: str = "{v:.3g}"
    # Why it is not tested: no runs under a rule ({rule}), or no timings for a TIMING table; and,
    # if set, when a part's metric was never measured ({metrics}; unset: such a part is inconclusive).
    untested: str = "the grid has no runs with LR rule '{rule}'"
    unmeasured: str = ""
    notes: tuple[str, ...] = (DIVERGED,)

    @property
    def rules(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.rule for p in self.parts)) if self.table == RUNS else ()

    @property
    def metric(self) -> str:
        if self.statistic:
            return self.statistic
        texts = " | ".join(dict.fromkeys(p.text for p in self.parts))
        if self.table == TIMING:
            return f"mean Spearman rho(batch size, {texts})"
        rules = " | ".join(f"'{rule}'" for rule in self.rules)
        return f"mean Spearman rho(batch size, {texts}), LR rule{'s' if len(self.rules) > 1 else ''} {rules}"

    @property
    def expected_text(self) -> str:
        return self.expected or " and ".join(f"rho {'>' if p.sign > 0 else '<'} 0" for p in self.parts)

    @property
    def side_text(self) -> str:
        return self.side or ("above" if self.parts[0].sign > 0 else "below")

    @property
    def average(self) -> str:
        """How the summary averages a batch size's values: mean over seeds, median over repeats."""
        return "median" if self.table == TIMING else "mean"


@dataclass(frozen=True, kw_only=True)
class GapSpec(ClaimSpec):
    """A claim that `gap` (of the seeds x {none,linear}@{smallest,largest batch} min-val-loss
    table) lies above `lower` and below `upper` (None: unbounded). The templates `rule` (with
    {lower}, {upper}), `summary` and `article` may use {none_small}, {none_large}, {linear_small},
    {linear_large} (ours in `summary`, the article's in `article`), {article} (`article_value`), and
    in `summary` {n} (seeds), {small}, {large} (batch sizes) and {est} (value [CI])."""

    statistic: str
    gap: Callable[[pd.DataFrame, object, object], float]
    lower: float | None = None
    upper: float | None = None
    rule: str
    summary: str
    article: str
    quantity: str  # its row in article_comparison.csv
    undefined: str = ""  # appended to the summary when the statistic is undefined
    untested: str = "needs rules 'none' and 'linear' and at least two batch sizes"
    notes: tuple[str, ...] = (DIVERGED_AT_ENDS,)

    @property
    def rules(self) -> tuple[str, ...]:
        return ("none", "linear")

    @property
    def metric(self) -> str:
        return self.statistic

    @property
    def expected_text(self) -> str:
        bounds = [f"> {self.lower:g}"] if self.lower is not None else []
        return " and ".join(bounds + ([f"< {self.upper:g}"] if self.upper is not None else []))

    @property
    def article_value(self) -> float:
        """The article's figure for this statistic, from its losses (`ARTICLE_MIN_VAL_LOSS`)."""
        losses = pd.DataFrame([{f"{rule}@{end}": v for (rule, end), v in ARTICLE_MIN_VAL_LOSS.items()}])
        return round(self.gap(losses, "small", "large"), 3)

    @property
    def article_text(self) -> str:
        losses = {f"{rule}_{end}": v for (rule, end), v in ARTICLE_MIN_VAL_LOSS.items()}
        return self.article.format(article=self.article_value, **losses)


def registry(*specs: ClaimSpec) -> dict[str, ClaimSpec]:
    """Specs by claim id, in the order given; one spec per claim."""
    ids = [spec.claim_id for spec in specs]
    if len(set(ids)) < len(ids):
        raise ValueError(f"a claim has more than one spec: {sorted(i for i in set(ids) if ids.count(i) > 1)}")
    return {spec.claim_id: spec for spec in specs}


CLAIMS: dict[str, ClaimSpec] = registry(
    TrendSpec(
        "C1", "The larger the batch, the slower the training loss decreases.",
        parts=(Part("train_loss_auc", "mean training loss over epochs", +1),),
    ),
    TrendSpec(
        "C2", "The larger the batch, the higher the minimum validation loss.",
        parts=(Part("min_val_loss", "minimum validation loss", +1),),
    ),
    TrendSpec(
        "C3", "The larger the batch, the less time each epoch takes.",
        parts=(Part("epoch_seconds", "seconds per epoch", -1),),
        table=TIMING, unit=REPEATS,
        statistic="mean Spearman rho(batch size, seconds per epoch), 1 thread, timed alone on the machine",
        rule_note=" Resamples are timing repeats rather than seeds; the seeds column counts repeats.",
        piece="Median seconds per epoch {values}; rho = {est} over {n} timing repeats.{inconclusive}",
        value="{ms:.0f} ms", untested="no timing measurements", notes=(),
    ),
    TrendSpec(
        "C4", "The larger the batch, the more epochs it takes to reach the minimum validation loss.",
        parts=(Part("best_epoch", "epoch of minimum validation loss", +1),),
        notes=(UNPASSED, DIVERGED),
    ),
    TrendSpec(
        "C5", "Small batches converge to flat minimisers, large batches to sharp ones.",
        parts=(Part("top_eigenvalue_best", "top Hessian eigenvalue (best weights)", +1),
               Part("eps_sharpness_best", "epsilon-sharpness (best weights)", +1)),
        rule_note=EVERY_PART_HOLDS, **PER_PART,
    ),
    TrendSpec(
        "C6", "Small-batch training finds minima farther from the initial weights.",
        parts=(Part("dist_final", "L2 distance of final weights from init", -1),),
    ),
    GapSpec(
        "C7", "The linear scaling rule removes most of the gap between small and large batches.",
        statistic="fraction of the unscaled min-val-loss gap (largest vs smallest batch) closed by linear "
        "scaling",
        gap=gap_closed, lower=MOST_OF_GAP,
        rule="Paired bootstrap CI over seeds. Reproduced if the CI lies wholly above {lower:g}, not "
        "reproduced if wholly below, else inconclusive (also when there is no unscaled gap to close).",
        summary="Min val loss (mean over {n} seeds) B={small}: {none_small:.3f}; B={large} unscaled "
        "{none_large:.3f}, scaled {linear_large:.3f}: {est} of the gap closed (article: {article:g}).",
        undefined=" The unscaled large batch is not worse here, so there is no gap to close.",
        article="{article:g} ({none_large:g} -> {linear_large:g} vs {none_small:g})",
        quantity="fraction of the gap closed by scaling",
    ),
    GapSpec(
        "C8", "With the scaled LR a slight, small gap remains between the smallest and largest batch.",
        statistic="relative gap in min val loss, linear rule: largest / smallest batch - 1",
        gap=relative_scaled_gap, lower=0, upper=SMALL_GAP,
        rule="Paired bootstrap CI over seeds. Reproduced if the CI lies wholly within ({lower:g}, "
        "{upper:g}); not reproduced if wholly below {lower:g} or wholly above {upper:g}; else inconclusive.",
        summary="Scaled LR: min val loss B={small} {linear_small:.3f} vs B={large} {linear_large:.3f}, "
        "relative gap {est} (article: {article:g}).",
        article="{article:g} ({linear_large:g} vs {linear_small:g})",
        quantity="relative gap remaining, scaled LR",
    ),
    TrendSpec(
        "C9",
        "Unscaled, large batches take longer to converge in wall-clock time; scaled, they train faster.",
        parts=(Part("time_to_min_s", "wall-clock seconds to min val loss", +1, "none", label="none"),
               Part("time_to_min_s", "wall-clock seconds to min val loss", -1, "linear", label="linear")),
        expected="rho > 0 unscaled and rho < 0 scaled", side="above/below",
        rule_note=" Both parts must hold; observed/CI/seeds are the first part's (unscaled, 'none'); time = "
        "epoch of the minimum x timed seconds per epoch (1 thread).",
        summary="Seconds to min val loss (mean over the seeds finite at every batch size), {pieces}.",
        piece="{label}: {values}; rho = {est}, {n} {unit} ({verdict}{why})", value="{v:.1f}s",
        unmeasured="needs rules 'none' and 'linear' and epoch timings",
        untested="needs rules 'none' and 'linear' and epoch timings",
    ),
    TrendSpec(
        "C10", "Larger batches apply smaller updates, because gradients inside a batch compete.",
        parts=(Part("mean_update_norm", "norm of an epoch's weight update", -1),
               Part("grad_competition", "|mean gradient| / mean |gradient| in a batch", -1)),
        rule_note=EVERY_PART_HOLDS, **PER_PART,
    ),
    TrendSpec(
        "C11", "Large batches profit more from parallel hardware.",
        parts=(Part(SPEEDUP, "speed-up = seconds per epoch at 1 thread / at all threads", +1),),
        table=TIMING, unit=REPEATS,
        rule_note=" Resamples are timing repeats, not seeds (repeat r at 1 thread paired with repeat r at "
        "all threads); the seeds column counts repeats.",
        piece="Median speed-up of {most} threads over 1 on {device}: {values}; rho = {est} over {n} timing "
        "repeats.{inconclusive}",
        value="{v:.2f}x", untested="epochs were timed at one thread count only (a 1-CPU machine)",
        notes=(NO_GAIN,),
    ),
    TrendSpec(
        "C12", "Loss-landscape pictures show the sharp vs flat difference.",
        parts=(Part("slice_curvature", "curvature at the solution of a filter-normalised 1-D slice", +1),),
        **PER_PART,
    ),
)  # fmt: skip

CLAIM_TEXT = {claim_id: spec.text for claim_id, spec in CLAIMS.items()}


@dataclass(frozen=True)
class TunedSpec:
    """A claim asked again with every batch size at its own tuned LR (`tuned_claims` decides
    it from `tuned_analysis`): its id, text, statistic, expected value and written rule
    ({conf}, {least}, {most}, {small} fill in the confidence, stats.min_seeds, MOST_OF_GAP and
    SMALL_GAP)."""

    claim_id: str
    text: str
    statistic: str
    expected: str
    rule: str


SELECTION_AWARE = (
    "{conf:.0%} selection-aware bootstrap CI over seeds: each resample draws seeds with replacement "
    "and chooses every batch size's LR again on its median minimum validation loss, so the interval "
    "carries the choice; at least {least} seeds must enter, else inconclusive."
)
ON_TEST = "judged on the test split at LRs chosen on the validation split (medians over seeds)"
TUNED_CLAIMS: dict[str, TunedSpec] = {
    spec.claim_id: spec
    for spec in (
        TunedSpec(
            "C7-tuned",
            "The linear scaling rule removes most of the gap between small and large batches, measured "
            "against every batch size at its tuned LR.",
            statistic="fraction of the tuned LR's improvement over the constant LR that the linear rule "
            "achieves at the largest batch, (L_none - L_linear) / (L_none - L_tuned) in test loss; "
            + ON_TEST,
            expected=f"> {MOST_OF_GAP:g}",
            rule=SELECTION_AWARE + " Reproduced if the CI lies wholly above {most:g}, not reproduced if "
            "wholly below, else inconclusive; inconclusive also when the fraction is undefined (tuning does "
            "not improve on the constant LR). When the largest batch's best LR lies on an edge of the LR "
            "grid, a better LR may lie beyond it, so the fraction is at most the one measured: a CI wholly "
            "above {most:g} is then inconclusive, one wholly below still not reproduced.",
        ),
        TunedSpec(
            "C8-tuned",
            "With the LR tuned at every batch size, a slight, small gap remains between the smallest and "
            "largest batch.",
            statistic="relative gap in test loss at the tuned LRs: largest / smallest batch - 1; " + ON_TEST,
            expected=f"> 0 and < {SMALL_GAP:g}",
            rule=SELECTION_AWARE + " Reproduced if the CI lies wholly within (0, {small:g}); not reproduced "
            "if wholly above {small:g} or wholly below 0; no gap detectable (at most the CI's upper end) if "
            "the CI holds 0 and its upper end is below {small:g}; else inconclusive. A best LR on an edge of "
            "the LR grid makes that end's loss an upper bound: at the largest batch the gap is then at most "
            "the one measured (only 'not reproduced' from below 0 and 'no gap detectable' stand), at the "
            "smallest at least (only 'not reproduced' from above {small:g} stands), at both neither; any "
            "other verdict becomes inconclusive.",
        ),
    )
}
