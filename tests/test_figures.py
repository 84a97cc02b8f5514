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
