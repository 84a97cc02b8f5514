"""The HTML report: rendered by papermill + nbconvert from small tables, self-contained, code-free."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from batchscale import analysis, io, report, report_html, report_studies

from synthetic_study import NUM_TRAIN, WARMUP_EPOCHS, small_params, with_tuned, write_tables

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "workflow" / "notebooks" / "report.ipynb"


def render_fake(root: Path, probes: bool, tuned: bool = False) -> dict:
    params = with_tuned(small_params()) if tuned else small_params()
    # Without probes the tables are also old ones, from before steps to target were counted.
    tables, claims_csv = write_tables(root, params, probes=probes, steps=probes, tuned=tuned)
    info = {
        "num_classes": 10,
        "x_train_shape": [NUM_TRAIN, 40],
        "x_val_shape": [120, 40],
        "sha256": "ab" * 32,
    }
    (root / "data.json").write_text(json.dumps(info))
    out, executed = root / "reports" / "report.html", root / "results" / "report.executed.ipynb"
    report.render(NOTEBOOK, tables, claims_csv, params, executed, out, data_info=root / "data.json")
    return {
        "root": root,
        "tables": tables,
        "html": out.read_text(encoding="utf-8"),
        "executed": executed,
        "params": params,
        "claims": pd.read_csv(claims_csv).set_index("claim_id"),
    }


def section(page: str, claim_id: str) -> str:
    """The HTML of one claim's section: from its heading to the next one (or the end)."""
    start = page.index(f'<h2 id="{claim_id}">')
    following = page.find("<h2 ", start + 1)
    return page[start : following if following >= 0 else len(page)]


def images(fragment: str) -> int:
    return len(re.findall(r'<img\b[^>]*\bsrc="data:image/png;base64,', fragment))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    return render_fake(tmp_path_factory.mktemp("report"), probes=True)


def test_report_has_every_claim_at_the_top(rendered):
    page = rendered["html"]
    table = page[page.index('id="claims"') : page.index('id="setup"')]
    for i in range(1, 13):
        assert f'<a href="#C{i}">C{i}</a>' in table
        assert f'<h2 id="C{i}">' in page  # and a section of its own
    assert "bs-verdict" in table


def test_report_is_self_contained_and_code_free(rendered):
    page = rendered["html"]
    # nbconvert re-serialises the page with BeautifulSoup, which sorts attributes: alt comes before src.
    figures = re.findall(r'<img\b[^>]*\bsrc="data:image/png;base64,', page)
    assert len(figures) >= 5
    assert "No description has been provided" not in page  # every figure carries its caption as alt
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?https?:", page, re.IGNORECASE)
    assert report.external_references(page) == []
    # exclude_input: no code cells, no prompts, no source of the notebook's cells.
    for code in ('class="jp-InputArea', 'class="jp-InputPrompt', 'class="jp-OutputPrompt', "highlight hl-"):
        assert code not in page
    for source in ("pd.read_csv", "import pandas", "def section_figures", "papermill injects"):
        assert source not in page


def test_report_shows_setup_and_caveats(rendered):
    page = rendered["html"]
    assert "training examples" in page and ">480<" in page  # from the data description
    assert "LR 0.04" in page  # linear rule at B=128, from runs.csv
    assert "LR 0.01 → 0.04" in page and f"{WARMUP_EPOCHS}-epoch ramp" in page  # the warm-up cell
    # B=128's validation loss is still falling at the last epoch: the report must say so.
    assert "had not passed its minimum" in page


def test_executed_notebook_is_kept(rendered):
    import nbformat

    nb = nbformat.read(rendered["executed"], as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_probe_claims_are_decided_and_shown(rendered):
    page, decided = rendered["html"], rendered["claims"]
    # C5, C10-C12 are measured now: a verdict each, and no leftover "not measured" wording.
    for claim_id, figures in (("C5", 1), ("C10", 2), ("C11", 1), ("C12", 3)):
        assert decided.loc[claim_id, "verdict"] != "not tested", claim_id
        text = section(page, claim_id)
        assert images(text) == figures, claim_id
        assert "bs-verdict" in text and "verdict rule" in text and "summary" in text
    assert "context only" not in page and "not measured" not in page
    assert "No sharpness measurements" not in page and "No loss-landscape" not in page
    assert "symmetric-log" in section(page, "C5")  # the fake saddle is said, not hidden
    assert "pure noise would follow" in section(page, "C10")


def test_report_renders_without_probes(tmp_path):
    """The probe and landscape steps did not run: empty tables, a note in place of each figure."""
    done = render_fake(tmp_path, probes=False)
    page, decided = done["html"], done["claims"]
    assert (done["root"] / "reports" / "tables" / "contour.csv").exists()
    assert decided.loc["C5", "verdict"] == decided.loc["C12", "verdict"] == "not tested"
    assert images(section(page, "C5")) == 0 and "No sharpness measurements" in section(page, "C5")
    c12 = section(page, "C12")
    assert images(c12) == 0 and "No loss-landscape measurements" in c12
    assert "interpolation.csv" in c12 and "contour.csv" in c12
    assert images(section(page, "C10")) == 2  # gradient competition comes from training, not probes
    beyond = section(page, "beyond")  # old tables: no steps to target, no noise scale
    assert images(beyond) == 1  # the rules compared come from training alone
    assert "No steps to target" in beyond and "No gradient noise-scale measurements" in beyond
    assert "critical batch size of about" not in beyond


def test_beyond_the_article_section(rendered):
    page, tables = rendered["html"], rendered["tables"]
    beyond = section(page, "beyond")
    assert page.index('id="C12"') < page.index('id="beyond"')  # at the end, after C12
    assert images(beyond) == 3  # rules compared, steps to target, noise scale
    assert "No steps to target" not in beyond and "No gradient noise-scale" not in beyond
    assert f"over the first {WARMUP_EPOCHS} epochs" in beyond  # the caption explains the shaded ramp
    runs = pd.read_csv(tables / "runs.csv")
    assert f"target validation loss is {report_html.fmt_number(runs['target_val_loss'].iloc[0])}" in beyond
    assert "none/B=128 (3 of 3)" in beyond  # the constant LR at B=128 never gets there
    noise = pd.read_csv(tables / "noise.csv")
    left_out = f"{noise['b_simple'].isna().sum()} of {len(noise)} estimates are left out"
    assert left_out in beyond  # the fake |G|^2 that is not positive
    critical = analysis.critical_batch_size(noise)
    assert critical is not None and critical.value == pytest.approx(110.0)
    assert f"critical batch size of about <b>{report_html.fmt_number(critical.value)}</b>" in beyond
    departure = analysis.scaling_departure(runs)
    assert departure is not None and departure.first_beyond is None  # linear scales across this grid
    assert "lies beyond the grid" in beyond and "below that range" in beyond


def test_failed_render_leaves_no_report(rendered, tmp_path):
    import papermill

    broken = tmp_path / "tables"
    broken.mkdir()  # no tables at all: the notebook fails on its first read
    out = tmp_path / "report.html"
    with pytest.raises(papermill.PapermillExecutionError):
        report.render(
            NOTEBOOK, broken, tmp_path / "claims.csv", rendered["params"], tmp_path / "x.ipynb", out
        )
    assert not out.exists() and not list(tmp_path.glob(".report.html.*"))


def test_external_references_are_found():
    assert report.external_references('<script src="https://cdn.example/require.js"></script>')
    assert report.external_references('<link rel="stylesheet" href="//fonts.example/css">')
    assert not report.external_references('<a href="https://arxiv.org/abs/2012.08795">article</a>')


def test_unpassed_note_names_the_cells():
    runs = pd.DataFrame(
        {"rule": ["none", "none"], "batch_size": [32, 128], "seed": [0, 0], "epochs": [5, 5],
         "min_passed": [True, False]}
    )  # fmt: skip
    note = report_html.unpassed_note(runs)
    assert "none/B=128 (1 of 1 seeds)" in note and "B=32" not in note
    all_passed = report_html.unpassed_note(runs.assign(min_passed=True))
    assert "passed its minimum before the last epoch" in all_passed


def test_read_table_gives_an_empty_frame_for_absent_or_empty_tables(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("seed,alpha,train_loss\n")
    assert io.read_table(tmp_path / "absent.csv").empty
    assert io.read_table(tmp_path / "empty.csv").empty
    assert list(io.read_table(tmp_path / "header.csv").columns) == ["seed", "alpha", "train_loss"]


def test_contour_levels_start_at_zero_and_cover_the_largest_rise():
    from batchscale.figures import contour_levels

    levels = contour_levels(np.array([0.0, 0.02, 3.0]), count=10)
    assert levels[0] == 0.0 and levels[-1] >= 3.0 and len(levels) == 10
    assert np.all(np.diff(levels) > 0)
    flat = contour_levels(np.zeros(4))  # a flat surface still gets increasing levels
    assert np.all(np.diff(flat) > 0)


def steps_runs(steps: dict[int, list[float]], rule: str = "linear") -> pd.DataFrame:
    """runs.csv rows with steps to target: {batch size: steps per seed (NaN: never reached)}."""
    return pd.DataFrame(
        [
            {"rule": rule, "batch_size": b, "seed": i, "steps_to_target": v, "target_val_loss": 0.5}
            for b, values in steps.items()
            for i, v in enumerate(values)
        ]
    )


def test_scaling_departure_finds_where_steps_stop_halving():
    # Perfect scaling from B=32 is 1000, 500, 250, 125 steps: ratios 1, 1.04, 1.2, 2.08.
    runs = steps_runs({32: [990, 1000, 1010], 64: [520] * 3, 128: [300] * 3, 256: [250, 260, 270]})
    departure = analysis.scaling_departure(runs)
    assert (departure.last_within, departure.first_beyond) == (128, 256)
    assert departure.ratio == pytest.approx(260 / 125)
    within = analysis.scaling_departure(runs, factor=3.0)
    assert (within.last_within, within.first_beyond) == (256, None)
    # Runs that never reached the target count as infinitely many steps in the median.
    missed = steps_runs({32: [1000] * 3, 64: [500, np.nan, np.nan], 128: [250] * 3})
    departure = analysis.scaling_departure(missed)
    assert (departure.last_within, departure.first_beyond, departure.ratio) == (32, 64, np.inf)
    assert analysis.scaling_departure(runs.drop(columns="steps_to_target")) is None  # older tables
    assert analysis.scaling_departure(steps_runs({32: [1000] * 3})) is None  # nothing to compare


def test_critical_batch_size_is_the_median_best_b_simple_of_the_smallest_batch():
    rows = [
        {"rule": rule, "batch_size": b, "seed": seed, "weights": weights, "b_simple": value}
        for rule in ("none", "linear")
        for b in (32, 128)
        for seed, value in enumerate((80.0, 100.0, np.nan, 130.0))
        for weights in ("init", "best", "final")
    ]
    noise = pd.DataFrame(rows)
    noise.loc[noise["weights"] != "best", "b_simple"] *= 10  # only the best weights count
    critical = analysis.critical_batch_size(noise)
    assert (critical.value, critical.batch_size, critical.rule, critical.seeds) == (100.0, 32, "linear", 3)
    assert analysis.critical_batch_size(noise, "sqrt") is None
    assert analysis.critical_batch_size(pd.DataFrame()) is None


def test_critical_batch_sentence_compares_prediction_and_measurement():
    departure = analysis.Departure("linear", 2.0, last_within=128, first_beyond=256, ratio=2.4)
    sentence = report_html.critical_batch_sentence

    def critical(value: float) -> analysis.CriticalBatch:
        return analysis.CriticalBatch(value, 32, "linear", 3)

    assert "between 128 and 256" in sentence(critical(200), departure)
    assert "falls in that range" in sentence(critical(200), departure)
    assert "2x below that range" in sentence(critical(64), departure)
    assert "4x above that range" in sentence(critical(1024), departure)
    beyond = analysis.Departure("linear", 2.0, last_within=256, first_beyond=None, ratio=1.3)
    assert "beyond the grid" in sentence(critical(1000), beyond) and "falls in" in sentence(
        critical(1000), beyond
    )
    never = analysis.Departure("linear", 2.0, last_within=128, first_beyond=256, ratio=np.inf)
    assert "B=256 mostly never reached the target" in sentence(critical(200), never)
    assert "critical batch size of about" in sentence(critical(200), None)
    assert sentence(None, None) == ""


def test_lr_grid_marks_the_warmup_cells():
    runs = pd.DataFrame(
        {"rule": ["linear_warmup"] * 2 + ["linear"], "batch_size": [32, 256, 256], "seed": [0, 0, 0],
         "lr": [0.01, 0.08, 0.08]}
    )  # fmt: skip
    grid = report_html.lr_grid(runs, warmup_epochs=5, base_lr=0.01)
    assert grid.count("5-epoch ramp") == 1 and "LR 0.01 → 0.08" in grid  # B=32 starts at the base LR
    assert "ramp" not in report_html.lr_grid(runs)


def test_claims_of_every_study_are_set_side_by_side(tmp_path):
    """Three studies' claims.csv (results/<data>-<model>[-<optimizer>]/): one column each, this
    report's first, headed data set x model x optimizer, each cell the study's own verdict and statistic."""
    paths = []
    studies = {
        "mnist1d-cnn1d": ("reproduced", 0.9), "mnist-cnn2d": ("not reproduced", -0.4),
        "mnist1d-cnn1d-adam": ("inconclusive", 0.2),
    }  # fmt: skip
    for study, (verdict, observed) in studies.items():
        path = tmp_path / study / "claims.csv"
        path.parent.mkdir()
        claims_table = pd.DataFrame(
            {"claim_id": ["C1", "C7"], "verdict": [verdict, "inconclusive"], "observed": [observed, 0.5],
             "ci_low": [observed - 0.1, 0.1], "ci_high": [observed + 0.1, 0.9]}
        )  # fmt: skip
        claims_table.to_csv(path, index=False)
        paths.append(path)
    studies = report_studies.read_studies(paths)
    table = report_studies.studies_table(studies, current="mnist-cnn2d")
    header = table[: table.index("</tr>")]
    assert header.index("mnist &times; cnn2d &times; sgd (this report)") < header.index(
        "mnist1d &times; cnn1d &times; sgd"
    ) < header.index("mnist1d &times; cnn1d &times; adam")
    c1 = re.search(r'<tr><td><a href="#C1">C1</a></td>(.*?)</tr>', table).group(1)
    cells = re.findall(r"<td>(.*?)</td>", c1)
    assert "not reproduced" in cells[0] and "-0.4" in cells[0]
    assert ">reproduced<" in cells[1] and "0.9" in cells[1]
    assert "mnist1d &times; cnn1d &times; adam" in report_studies.studies_note(studies, "mnist-cnn2d")
    alone = studies[studies["study"] == "mnist-cnn2d"]
    assert "Only this study" in report_studies.studies_note(alone, "mnist-cnn2d")


def test_empty_settings_are_left_out_of_the_setup_lists():
    listed = report_html.definition_list({"data set": "mnist1d", "path": "", "seed": 42, "note": None})
    assert "data set" in listed and "seed" in listed
    assert "path" not in listed and "note" not in listed


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"name": "npz", "path": "elsewhere/mine.npz"}, "data/prepared/user_mine.json"),
        ({"name": "mnist1d", "path": ""}, "data/prepared/mnist1d.json"),
    ],
)
def test_the_default_data_description_is_the_one_the_data_step_prepares(monkeypatch, tmp_path, data,
                                                                       expected):  # fmt: skip
    """Without --data-info the report reads the .json beside the prepared .npz (config.prepared_path:
    user_<stem> for a user's file), not one named after data.name."""
    from batchscale.config import prepared_path

    assert expected == str(Path(prepared_path({"data": data})).with_suffix(".json"))
    seen = {}

    class Stop(Exception):
        pass

    def capture(tables, claims, params, data_info, studies=()):
        seen["data_info"] = data_info
        raise Stop

    monkeypatch.setattr(report, "notebook_parameters", capture)
    with pytest.raises(Stop):
        report.render(NOTEBOOK, tmp_path, tmp_path / "claims.csv", {"data": data}, tmp_path / "x.ipynb",
                      tmp_path / "report.html")  # fmt: skip
    assert seen["data_info"] == Path(expected)


def test_a_diverged_run_is_not_counted_as_one_that_had_not_passed_its_minimum():
    """A diverged run has no statistics (runs.csv: NaN), so no min_passed: the note on runs cut
    off by the epoch budget leaves it out, as the claims do, and the divergence note names it."""
    from batchscale.analysis import unpassed_runs
    from batchscale.report_html import diverged_note

    runs = pd.DataFrame(
        {
            "rule": ["none"] * 3,
            "batch_size": [32] * 3,
            "seed": [0, 1, 2],
            "epochs": [10] * 3,
            "min_passed": [True, True, float("nan")],
            "diverged_epoch": [-1, -1, 4],
        }
    )
    assert unpassed_runs(runs).empty
    runs.loc[1, "min_passed"] = False
    table = unpassed_runs(runs)
    assert table[["unpassed", "runs"]].values.tolist() == [[1, 2]]  # 1 of the 2 seeds that did not diverge
    note = diverged_note(runs)
    assert "none/B=32 seed 2 (epoch 4)" in note and "every claim's statistic" in note


@pytest.fixture(scope="module")
def rendered_tuned(tmp_path_factory) -> dict:
    return render_fake(tmp_path_factory.mktemp("report-tuned"), probes=True, tuned=True)


def test_the_tuned_sections_show_the_sweep_only_when_there_is_one(rendered, rendered_tuned):
    page, tables = rendered_tuned["html"], rendered_tuned["tables"]
    assert page.index('id="C12"') < page.index('id="tuned"') < page.index('id="critical-measured"')
    assert page.index('id="critical-measured"') < page.index('id="beyond"')
    tuned = section(page, "tuned")
    assert images(tuned) == 1 and "Best LR per batch size" in tuned
    tuned_lr = pd.read_csv(tables / "tuned_lr.csv")
    assert f"grows as B<sup>{report_html.fmt_number(tuned_lr['slope'].iloc[0])}</sup>" in tuned
    for row in tuned_lr.itertuples():  # the small table: every batch size with its LR and interval
        lr = f"{report_html.fmt_number(row.lr)} {report_html.fmt_interval(row.lr_ci_low, row.lr_ci_high)}"
        assert f"<th>{row.batch_size}</th>" in tuned and lr in tuned
    decided = rendered_tuned["claims"]
    for claim_id in ("C7-tuned", "C8-tuned"):  # in the table at the top and in the tuned section
        top = page[page.index('id="claims"') : page.index('id="setup"')]
        assert f'<a href="#{claim_id}">{claim_id}</a>' in top
        assert f'<h3 id="{claim_id}">' in tuned and report_html.esc(decided.loc[claim_id, "summary"]) in tuned
        assert f'<h2 id="{claim_id}">' not in page  # not again among C1-C12
    measured = section(page, "critical-measured")
    critical = pd.read_csv(tables / "critical_batch.csv").iloc[0]
    assert images(measured) == 1 and "The three estimates" in measured
    assert f"B = <b>{report_html.fmt_number(critical['critical_batch'])}</b>" in measured
    plain = rendered["html"]
    assert 'id="tuned"' not in plain and 'id="critical-measured"' not in plain and "C7-tuned" not in plain


def test_which_rule_closes_the_gap_leaves_diverged_seeds_out_of_its_number_and_says_so():
    """Relative gap in min val loss, largest / smallest batch - 1, per rule: none +50%, linear
    exactly 0 with one seed diverged at B=256 (left out of the number, and the sentence says so)."""
    from batchscale import analysis

    rows = []
    for seed in range(4):
        rows += [
            {"rule": "none", "batch_size": 32, "seed": seed, "min_val_loss": 0.2 + 0.01 * seed},
            {"rule": "none", "batch_size": 256, "seed": seed, "min_val_loss": 1.5 * (0.2 + 0.01 * seed)},
            {"rule": "linear", "batch_size": 32, "seed": seed, "min_val_loss": 0.2 + 0.01 * seed},
            {"rule": "linear", "batch_size": 256, "seed": seed,
             "min_val_loss": float("nan") if seed == 3 else 0.2 + 0.01 * seed},
        ]  # fmt: skip
    gaps = analysis.rule_gaps(pd.DataFrame(rows), reps=200, confidence=0.95, seed=0)
    assert [g.rule for g in gaps] == ["none", "linear"]
    none, linear = gaps
    assert none.value == pytest.approx(0.5) and not none.closed and none.left_out == 0
    assert linear.value == pytest.approx(0.0) and linear.closed
    assert (linear.seeds, linear.left_out) == (3, 1)
    sentence = report_html.rule_gaps_sentence(gaps)
    assert "none +50.0%" in sentence and "linear +0.0%" in sentence
    assert "(3 seeds, 1 diverged seed(s) left out)" in sentence
    assert "Closed (CI wholly within &plusmn;10%, C8's bound for small): linear; a gap remains" in sentence
    assert sentence.endswith("not within &plusmn;10%): none.</p>")
    reversed_gap = analysis.RuleGap("linear", 32, 256, -0.08, -0.15, -0.02, 8, 0)
    assert reversed_gap.outcome == "reversed" and not reversed_gap.closed
