"""The report's comparison of studies: which claims hold in which study (data set x model x
optimizer), every study run in this folder side by side, claim by claim."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from batchscale.report_html import esc, observed_cell, verdict_badge


def read_studies(paths: list[str | Path]) -> pd.DataFrame:
    """Every study's claims in one frame, labelled by the study's folder (<data>-<model>)."""
    frames = []
    for path in paths:
        frame = pd.read_csv(path)
        frame.insert(0, "study", Path(path).parent.name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["study", "claim_id"])


def study_label(folder: str) -> str:
    """A study's folder name (config.study_name: <data>-<model>[-<optimizer>]) as data set x model
    x optimizer; a folder without an optimizer is the article's, momentum SGD."""
    data, model, *optimizer = folder.split("-", 2)
    return " &times; ".join([esc(data), esc(model), esc(optimizer[0] if optimizer else "sgd")])


def studies_table(studies: pd.DataFrame, current: str) -> str:
    """Which claims hold in which study: one row per claim, one column per study (data set x
    model x optimizer; the current one first), each cell the verdict with the observed statistic."""
    names = [current, *sorted(set(studies["study"]) - {current})]
    head = "<tr><th>claim</th>" + "".join(
        f"<th>{study_label(name)}{' (this report)' if name == current else ''}</th>" for name in names
    ) + "</tr>"  # fmt: skip
    rows = []
    for claim_id, group in studies.groupby("claim_id", sort=False):
        by_study = group.set_index("study")
        cells = []
        for name in names:
            if name not in by_study.index:
                cells.append("<td>–</td>")
                continue
            row = by_study.loc[name]
            # Every part of a claim of several, labelled (the row's observed is the first part's).
            cells.append(f'<td>{verdict_badge(row["verdict"])} <span class="num">{observed_cell(row)}</span>'
                         "</td>")  # fmt: skip
        rows.append(f'<tr><td><a href="#{esc(claim_id)}">{esc(claim_id)}</a></td>{"".join(cells)}</tr>')
    return f"<table>{head}{''.join(rows)}</table>"


def studies_note(studies: pd.DataFrame, current: str) -> str:
    others = sorted(set(studies["study"]) - {current})
    if not others:
        return (
            f"<p>Only this study ({study_label(current)}) has been run in this folder. Run another data "
            "set, model or optimizer beside it, e.g. <code>snakemake --cores 4 --configfile "
            "config/mnist.yaml</code> (real MNIST digits, a small 2-D CNN) or <code>--configfile "
            "config/adam.yaml</code> (this study trained by Adam); its results go to their own folder "
            "and this table then shows both.</p>"
        )
    return (
        "<p>Each column is a study run in this folder, data set &times; model &times; optimizer "
        "(<code>results/&lt;data&gt;-&lt;model&gt;[-&lt;optimizer&gt;]/</code>): this report's, and "
        f"{', '.join(study_label(o) for o in others)}, each decided by the same rules on its own "
        "measurements (its own report: rerun Snakemake with its config). A claim that holds in one study "
        "and not another is a finding, not an error.</p>"
    )
