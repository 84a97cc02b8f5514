"""The figure files (`batchscale figures`): the report's figures as PNGs for Snakemake's report."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pandas as pd
import pytest

from batchscale import cli, figures

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "workflow" / "rules" / "figures.smk"
NOTEBOOK = ROOT / "workflow" / "notebooks" / "report.ipynb"
DRAWING = ["figures_style", "figures_claims", "figures_landscape", "figures_beyond", "figures_tuned"]
TUNED_FIGURES = {"tuned_lr", "critical_batch_measured"}


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def entry(stem: str) -> figures.FigureEntry:
    return next(e for e in figures.REGISTRY if e.stem == stem)


def caption(stem: str, tables: dict, params: dict | None = None) -> str:
    """The registry's caption of a figure drawn from `tables` (name -> frame)."""
    return entry(stem).caption(tables, params or small_params())


def small_params() -> dict:
    from synthetic_study import small_params

    return small_params()


def drawing_functions() -> set[str]:
    """The public functions of the drawing modules that return a figure."""
    import importlib
    import inspect

    names = set()
    for name in DRAWING:
        module = importlib.import_module(f"batchscale.{name}")
        for attr, value in vars(module).items():
            if inspect.isfunction(value) and value.__module__ == module.__name__ and not attr.startswith("_"):
                if "Figure" in str(inspect.signature(value).return_annotation):
                    names.add(attr)
    return names


def test_each_figure_is_declared_once_with_everything_about_it():
    stems = [e.stem for e in figures.REGISTRY]
    assert len(stems) == len(set(stems)), stems
    claims = {f"C{i}" for i in range(1, 13)}
    sections = {"curves", "beyond-rules", "beyond-steps", "beyond-noise", "tuned", "critical-measured"}
    sections.add("speed")
    for e in figures.REGISTRY:
        assert re.fullmatch(r"[a-z0-9_]+", e.stem) and e.category and e.title, e
        assert e.section in claims | sections, e
        assert callable(e.draw) and callable(e.caption) and callable(e.missing) and callable(e.made), e
    # The old names still read as the module's: the notebook and the tests call them so.
    for name in drawing_functions():
        assert callable(getattr(figures, name)), name
    with pytest.raises(AttributeError):
        figures.no_such_figure  # noqa: B018
    # Only the landscape figures and the tuned sweep's depend on the grid: the landscape needs two
    # batch sizes under one rule, the tuned figures the rule 'tuned'.
    from synthetic_study import with_tuned

    params = small_params()
    assert [e.stem for e in figures.made(with_tuned(params))] == stems
    assert set(stems) - {e.stem for e in figures.made(params)} == TUNED_FIGURES
    single = {**params, "grid": {**params["grid"], "lr_rules": ["none"], "batch_sizes": [32]}}
    landscape = {"c12_interpolation", "c12_contour"}
    assert set(stems) - {e.stem for e in figures.made(single)} == landscape | TUNED_FIGURES


def notebook_source() -> str:
    """The notebook's code, with adjacent string literals joined (as Python joins a caption's lines)."""
    import nbformat

    source = "\n".join(cell.source for cell in nbformat.read(NOTEBOOK, as_version=4).cells)
    return re.sub(r'"\s*\n\s*f?"', "", source)


def test_the_registry_drives_the_rule_and_the_notebook():
    """No figure is named outside the registry: the rule builds its outputs, categories, labels and
    captions from it, and the notebook shows each section's entries without drawing any itself."""
    rule = RULES.read_text()
    assert "bs_figures.made(PARAMS)" in rule
    source = notebook_source()
    for text in (rule, source):
        named = [e.stem for e in figures.REGISTRY if re.search(rf"[\"']{e.stem}[\"']|\b{e.stem}\.png", text)]
        assert not named, named
    called = sorted(name for name in drawing_functions() if re.search(rf"\b{name}\(", source))
    assert not called, called
    assert not re.search(r"\bcaption\s*=|_caption\(", source), "captions belong to the registry"
    # Every section of the registry is one the notebook shows.
    shown = set(re.findall(r'show_figures\("([\w-]+)"\)', source))
    assert 'show_figures(claim["claim_id"])' in source
    assert {e.section for e in figures.REGISTRY} - {f"C{i}" for i in range(1, 13)} == shown


def test_a_new_registry_entry_is_drawn_and_captioned_by_the_command(tmp_path, monkeypatch):
    """Adding a figure is one entry: `batchscale figures` draws it and writes its caption, and
    the notebook's section lists it."""
    throwaway = figures.FigureEntry(
        "throwaway", "C3", "C03 time per epoch", "a throwaway figure",
        lambda tables, params: figures.not_measured(f"{len(tables['runs'])} runs"),
        lambda tables, params: "A throwaway caption with |G|&sup2; and B_simple.",
    )  # fmt: skip
    monkeypatch.setattr(figures, "REGISTRY", (*figures.REGISTRY, throwaway))
    pd.DataFrame({"seed": [0, 1]}).to_csv(tmp_path / "runs.csv", index=False)
    outs = [tmp_path / "throwaway.png", tmp_path / "throwaway.rst"]
    assert cli.main(["figures", "--tables", str(tmp_path), "--out", *map(str, outs)]) == 0
    assert png_size(outs[0].read_bytes())[0] > 100
    rst = outs[1].read_text()
    assert rst.startswith("{% raw %}**C03 time per epoch: a throwaway figure.**"), rst
    assert rst.endswith("{% endraw %}\n"), rst
    # HTML entities become text, and rst's markup characters are escaped.
    assert "A throwaway caption with \\|G\\|\u00b2 and B\\_simple." in rst
    assert throwaway in figures.in_section("C3", small_params())


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # docutils: writer_name, as Snakemake
def test_a_caption_is_rst_that_docutils_renders_as_the_html_reports_text():
    from docutils.core import publish_parts

    timing = skewed_timing()
    rst = figures.caption_rst(entry("c11_parallel_speedup"), {"timing": timing}, {})
    body = publish_parts(rst.replace("{% raw %}", "").replace("{% endraw %}", ""), writer_name="html")["body"]
    assert "<strong>C11 parallel hardware: speed-up from all threads.</strong>" in body
    assert "Points: one per timing repeat" in body and "system-message" not in body
    # Nothing to draw: the caption says what the figure file says instead.
    one_count = {"timing": timing[timing["threads"] == 1]}
    single = figures.caption_rst(entry("c11_parallel_speedup"), one_count, {})
    assert "timed at one thread count only" in single


def test_figure_files_are_drawn_from_the_tables(tmp_path):
    from synthetic_study import small_params, write_tables

    params = small_params()
    tables, _ = write_tables(tmp_path, params)  # no bench.csv: that figure says so instead
    outs = [tmp_path / "figures" / f"{e.stem}.png" for e in figures.REGISTRY]
    assert cli.main(["figures", "--params", "{}", "--tables", str(tables), "--out", *map(str, outs)]) == 0
    sizes = {out.stem: png_size(out.read_bytes()) for out in outs}
    assert all(width > 300 and height > 100 for width, height in sizes.values()), sizes
    # The note in place of the missing benchmark is a short strip, the learning curves a figure.
    assert sizes["bench"][1] < 200 < sizes["learning_curves"][1]
    assert not list((tmp_path / "figures").glob(".*")), "no temp files left behind"


def test_an_unknown_figure_name_is_refused_before_anything_is_drawn(tmp_path, capsys):
    outs = [tmp_path / "learning_curves.png", tmp_path / "pie_chart.png"]
    assert cli.main(["figures", "--tables", str(tmp_path), "--out", *map(str, outs)]) == 2
    assert "pie_chart" in capsys.readouterr().err
    assert not any(out.exists() for out in outs)


@pytest.mark.parametrize("stem", ["c11_parallel_speedup", "steps_to_target", "c5_sharpness"])
def test_a_figure_without_its_measurements_is_a_note(tmp_path, stem):
    from synthetic_study import small_params, write_tables

    params = small_params()
    tables, _ = write_tables(tmp_path, params, probes=False, steps=False)
    timing = tables / "timing.csv"
    single = pd.read_csv(timing)  # timed at one thread count
    single[single["threads"] == 1].to_csv(timing, index=False)
    out = tmp_path / f"{stem}.png"
    figures.write_figure_files(tables, params, [out])
    assert png_size(out.read_bytes())[1] < 200


# --- what the figures say must be what the claims compute ---------------------------------


def legend_labels(fig) -> list[str]:
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def test_the_ci_label_is_the_configured_confidence():
    comparison = pd.DataFrame(
        [
            ("min val loss, B=32", 0.3, 0.31, 0.29, 0.33),
            ("fraction of the gap closed by scaling", 0.86, 0.7, 0.5, 0.9),
        ],
        columns=["quantity", "article", "ours", "ci_low", "ci_high"],
    )
    labels = legend_labels(figures.article_vs_ours(comparison, 0.5, 0.1, confidence=0.9))
    assert "ours (90% CI)" in labels and not any("95%" in label for label in labels), labels
    # The figure file reads it from the parameters, which the figures rule passes it.
    params = {"stats": {"confidence": 0.8}}
    fig = figures.draw(entry("c7_article_vs_ours"), {"article_comparison": comparison}, params)
    assert "ours (80% CI)" in legend_labels(fig)
    sections = re.search(r"sections=sections_json\(([^)]*)\)", RULES.read_text())
    assert sections and '"stats"' in sections.group(1), "the figures rule must pass the stats section"
    assert "80% confidence intervals" in caption("c7_article_vs_ours", {}, params)
    # No figure, caption or notebook text fixes the level of the intervals.
    package = Path(figures.__file__).parent
    sources = ["figures", "figure_captions", *DRAWING]
    texts = {f"{name}.py": (package / f"{name}.py").read_text() for name in sources}
    texts["report.ipynb"] = notebook_source()
    assert not [name for name, text in texts.items() if re.search(r"\b95 ?%", text)]


def skewed_timing() -> pd.DataFrame:
    """Three rounds at 1 and 4 threads where, at B=32, the median of the per-repeat speed-ups
    (1.0) is not the ratio of the median times (2.0); at B=128 both are 2."""
    seconds = {(32, 1): [1.0, 2.0, 3.0], (32, 4): [1.0, 4.0, 1.0], (128, 1): [2.0, 2.2, 2.4],
               (128, 4): [1.0, 1.1, 1.2]}  # fmt: skip
    rows = [
        {"batch_size": b, "threads": t, "repeat": r, "epoch_seconds": s, "device": "cpu"}
        for (b, t), times in seconds.items()
        for r, s in enumerate(times)
    ]
    return pd.DataFrame(rows)


def claimed_speedups(timing: pd.DataFrame) -> dict[int, float]:
    """The median speed-up per batch size in C11's summary (two decimals)."""
    from batchscale import claims

    result = claims.speedup_claim(timing, claims.Settings(reps=50, confidence=0.9, seed=0, min_seeds=2))
    return {int(b): float(v) for b, v in re.findall(r"B=(\d+): ([\d.]+)x", result.summary)}


def plotted_speedups(timing: pd.DataFrame) -> dict[int, float]:
    """The line of the C11 figure file: batch size -> speed-up."""
    line = figures.draw(entry("c11_parallel_speedup"), {"timing": timing}, {}).axes[0].get_lines()[0]
    return dict(zip(map(int, line.get_xdata()), line.get_ydata(), strict=True))


def test_the_speedup_figure_shows_the_claims_per_repeat_speedups():
    timing = skewed_timing()
    medians = timing.groupby(["batch_size", "threads"])["epoch_seconds"].median().unstack("threads")
    assert (medians[1] / medians[4]).loc[32] == pytest.approx(2.0)  # what a ratio of medians would show
    claimed = claimed_speedups(timing)
    assert claimed == {32: 1.0, 128: 2.0}
    assert plotted_speedups(timing) == pytest.approx(claimed, abs=0.005)
    # A repeat timed at one batch size only pairs with nothing: the claim leaves it out, so does the figure.
    extra = pd.DataFrame([{"batch_size": 32, "threads": t, "repeat": 3, "epoch_seconds": s, "device": "cpu"}
                          for t, s in ((1, 5.0), (4, 1.0))])  # fmt: skip
    partial = pd.concat([timing, extra], ignore_index=True)
    assert plotted_speedups(partial) == pytest.approx(claimed_speedups(partial), abs=0.005)
    # The caption says so too: per-repeat ratios and their median, not a ratio of median times.
    text = caption("c11_parallel_speedup", {"timing": timing})
    assert "one per timing repeat" in text and "their median" in text, text
    assert not re.search(r"median seconds at 1 thread\s*/\s*median", text), text


def timing_by_threads() -> pd.DataFrame:
    """Epochs that get faster with batch size at 1 thread and slower at 4 threads."""
    rows = [
        {"batch_size": b, "threads": t, "repeat": r, "device": "cpu",
         "epoch_seconds": (1.0 / b if t == 1 else b / 100.0) * (1 + 0.01 * r)}
        for b in (16, 32, 64) for t in (1, 4) for r in range(4)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def verdict_threads(caption: str) -> str:
    found = re.search(r"[Tt]he verdicts? uses? ([^.]*)\.", caption)
    assert found, caption
    return found.group(1)


def test_the_timing_captions_name_the_thread_count_the_claims_use():
    from batchscale import aggregate, claims

    timing = timing_by_threads()
    settings = claims.Settings(reps=50, confidence=0.9, seed=0, min_seeds=2)
    rho = claims.timing_claim(timing, settings).observed  # -1 from the 1-thread epochs, +1 from 4 threads
    uses = 1 if rho < 0 else int(timing["threads"].max())
    expected = "1 thread" if uses == 1 else "the most threads"
    phrase = verdict_threads(caption("c3_epoch_seconds", {"timing": timing}))
    assert expected in phrase and ("most threads" in phrase) == (uses != 1), phrase
    # C9's wall-clock times use aggregate.seconds_per_epoch: the same single-thread medians.
    single = timing[timing["threads"] == uses].groupby("batch_size")["epoch_seconds"].median()
    pd.testing.assert_series_equal(aggregate.seconds_per_epoch(timing), single)
    text = caption("c9_time_to_min", {"runs": pd.DataFrame({"seed": [0, 1]})})
    assert f"seconds per epoch at {expected}" in text, text


# --- the tuned-LR study's figures --------------------------------------------------------------


def test_the_tuned_figures_are_drawn_from_a_sweep_and_say_so_without_one(tmp_path):
    from synthetic_study import small_params, with_tuned, write_tables

    params = with_tuned(small_params())
    tables, _ = write_tables(tmp_path / "tuned", params, tuned=True)
    outs = [
        tmp_path / "figures" / f"{stem}{suffix}"
        for stem in sorted(TUNED_FIGURES)
        for suffix in (".png", ".rst")
    ]
    figures.write_figure_files(tables, params, outs)
    for png in outs[::2]:
        width, height = png_size(png.read_bytes())
        assert width > 600 and height > 300, png.name
    tuned_lr = pd.read_csv(tables / "tuned_lr.csv")
    slope = tuned_lr["slope"].iloc[0]
    from batchscale.report_html import fmt_number

    assert (
        f"interior optima, slope {fmt_number(slope)} [" in (tmp_path / "figures" / "tuned_lr.rst").read_text()
    )
    critical = pd.read_csv(tables / "critical_batch.csv").iloc[0]
    text = (tmp_path / "figures" / "critical_batch_measured.rst").read_text()
    assert f"B\\_noise = {critical['b_noise']:.3g}" in text and "The three estimates" in text
    # No sweep: a short strip saying so, as for any figure without its measurements.
    plain, _ = write_tables(tmp_path / "plain", small_params())
    empty = tmp_path / "plain" / "tuned_lr.png"
    figures.write_figure_files(plain, params, [empty])
    assert png_size(empty.read_bytes())[1] < 200
    assert "No tuned-LR sweep" in entry("tuned_lr").missing(figures.Tables(plain), params)


def test_an_edge_optimum_is_drawn_as_a_bound_and_beyond_the_grid_as_an_arrow():
    from batchscale import tuned_analysis
    from batchscale.config import validate

    from synthetic_study import TunedWorld

    grid = [0.01 * 2**k for k in range(-2, 3)]  # at B=512 the best LR, 0.04 sqrt 2, is above it
    world = TunedWorld(sizes=(32, 64, 128, 512), lrs=lambda b: grid)
    params = validate({"stats": {"bootstrap": 100}})
    done = tuned_analysis.analyse(world.sweep(), world.fixed_runs(), pd.DataFrame(), params)
    assert done.per_batch["bound"].tolist()[-1] == "at least"
    labels = legend_texts(figures.tuned_lr_vs_batch(done.per_batch, 32, 0.95).axes[0])
    assert "largest LR tried: the best is at least this" in labels
    assert any(label.startswith("fitted over 3 interior optima: slope") for label in labels), labels
    beyond = done.critical.assign(critical_batch=float("inf"), ci_low=float("inf"), ci_high=float("inf"))
    fig = figures.critical_batch_measured(done.per_batch, beyond, world.sweep())
    assert any("measured critical batch: beyond the grid" in t.get_text() for t in fig.axes[0].texts)


def legend_texts(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]
