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
CAPTIONS = ROOT / "workflow" / "report" / "figures"


def declared_figures() -> set[str]:
    """The figure files the `figures` rule declares (FIGURES in figures.smk)."""
    text = RULES.read_text()
    entries = re.findall(r'^\s+"(\w+)": \(', text, re.MULTILINE)
    return set(entries) | set(re.findall(r'FIGURES\["(\w+)"\]', text))


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_every_declared_figure_can_be_drawn_and_has_a_caption():
    declared = declared_figures()
    assert declared == set(figures.FIGURE_FILES)
    assert {p.stem for p in CAPTIONS.glob("*.rst")} == declared
    for stem in declared:
        assert (CAPTIONS / f"{stem}.rst").read_text().strip()


def test_figure_files_are_drawn_from_the_tables(tmp_path):
    from test_report import small_params, write_tables

    params = small_params()
    tables, _ = write_tables(tmp_path, params)  # no bench.csv: that figure says so instead
    outs = [tmp_path / "figures" / f"{stem}.png" for stem in figures.FIGURE_FILES]
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
    from test_report import small_params, write_tables

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
    fig = figures.FIGURE_FILES["c7_article_vs_ours"]({"article_comparison": comparison}, params)
    assert "ours (80% CI)" in legend_labels(fig)
    sections = re.search(r"sections=sections_json\(([^)]*)\)", RULES.read_text())
    assert sections and '"stats"' in sections.group(1), "the figures rule must pass the stats section"
    # No figure, caption or notebook text fixes the level of the intervals.
    texts = {"figures.py": Path(figures.__file__).read_text(), "report.ipynb": notebook_source()}
    texts.update({path.name: path.read_text() for path in CAPTIONS.glob("*.rst")})
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
    line = figures.FIGURE_FILES["c11_parallel_speedup"]({"timing": timing}, {}).axes[0].get_lines()[0]
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
    # The captions say so too: per-repeat ratios and their median, not a ratio of median times.
    source = notebook_source()
    section = source[source.index("def speedup_section") : source.index("def landscape_section")]
    for caption in ((CAPTIONS / "c11_parallel_speedup.rst").read_text(), section):
        assert "one per timing repeat" in caption and "their median" in caption, caption
        assert not re.search(r"median seconds at 1 thread\s*/\s*median", caption), caption


NOTEBOOK = ROOT / "workflow" / "notebooks" / "report.ipynb"


def notebook_source() -> str:
    """The notebook's code, with adjacent string literals joined (as Python joins a caption's lines)."""
    import nbformat

    source = "\n".join(cell.source for cell in nbformat.read(NOTEBOOK, as_version=4).cells)
    return re.sub(r'"\s*\n\s*f?"', "", source)


def notebook_caption(claim_id: str) -> str:
    """The source of the notebook's figure code for one claim (its caption included)."""
    source = notebook_source()
    start = source.index(f'claim_id == "{claim_id}"')
    return source[start : source.index("elif claim_id", start)]


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
    for caption in ((CAPTIONS / "c3_epoch_seconds.rst").read_text(), notebook_caption("C3")):
        phrase = verdict_threads(caption)
        assert expected in phrase and ("most threads" in phrase) == (uses != 1), caption
    # C9's wall-clock times use aggregate.seconds_per_epoch: the same single-thread medians.
    single = timing[timing["threads"] == uses].groupby("batch_size")["epoch_seconds"].median()
    pd.testing.assert_series_equal(aggregate.seconds_per_epoch(timing), single)
    for caption in ((CAPTIONS / "c9_time_to_min.rst").read_text(), notebook_caption("C9")):
        assert f"seconds per epoch at {expected}" in caption, caption
