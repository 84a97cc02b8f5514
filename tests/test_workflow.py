"""The real workflow, end to end, on the tiny configuration: real Snakemake, real papermill."""

from __future__ import annotations

import re
import zipfile

import pandas as pd
import pytest
import yaml

from conftest import run

pytestmark = pytest.mark.slow

MEASURED = ["C1", "C2", "C3", "C4", "C6", "C7", "C8", "C9"]
VERDICTS = {"reproduced", "not reproduced", "inconclusive", "not tested", "no gap detectable"}
TUNED_CLAIMS = ["C7-tuned", "C8-tuned"]
HISTORY_COLUMNS = {"rule", "batch_size", "seed", "epoch", "train_loss", "val_loss", "val_acc", "lr",
                   "epoch_seconds", "dist_from_init", "update_norm"}  # fmt: skip


def test_tiny_study_runs_end_to_end_and_is_then_up_to_date(tiny_study):
    project = tiny_study  # `snakemake --cores 4 --configfile config/tiny.yaml` ran there once

    html = (project / "reports/report.html").read_text()
    assert "C12" in html and "data:image/png;base64," in html
    claims = pd.read_csv(project / "reports/claims.csv")
    # The tiny study has the tuned rule: its two claims follow the article's twelve.
    assert list(claims["claim_id"]) == [f"C{i}" for i in range(1, 13)] + TUNED_CLAIMS
    assert set(claims["verdict"]) <= VERDICTS
    decided = claims.set_index("claim_id").loc[MEASURED + TUNED_CLAIMS]
    assert (decided["verdict"] != "not tested").all(), decided["verdict"]
    history = pd.read_csv(project / "reports/tables/history.csv")
    assert HISTORY_COLUMNS <= set(history.columns)
    tiny = yaml.safe_load((project / "config/tiny.yaml").read_text())
    cells = len(tiny["grid"]["batch_sizes"]) * 2  # the fixed rules none and linear
    assert len(history) == cells * len(tiny["train"]["seeds"]) * (tiny["train"]["epochs"] + 1)
    runs = pd.read_csv(project / "reports/tables/runs.csv")
    assert {"test_loss", "test_acc", "final_test_loss"} <= set(runs.columns)

    # The tuned sweep: every (batch size, LR, seed), the shared runs included; its tables and sections.
    sweep = pd.read_csv(project / "reports/tables/tuning.csv")
    lrs = len(tiny["grid"]["tuning_factors"])
    assert len(sweep) == len(tiny["grid"]["batch_sizes"]) * lrs * len(tiny["train"]["seeds"])
    assert sweep["test_loss"].notna().all()
    assert sorted(sweep["factor"].unique()) == tiny["grid"]["tuning_factors"]
    tuned_lr = pd.read_csv(project / "reports/tables/tuned_lr.csv")
    assert list(tuned_lr["batch_size"]) == tiny["grid"]["batch_sizes"]
    assert len(pd.read_csv(project / "reports/tables/critical_batch.csv")) == 1
    assert "Tuned learning rate" in html and "Critical batch size, measured" in html
    jobs = pd.read_csv(project / "reports/tables/jobs.csv")
    sweep_jobs = jobs[jobs["lr"].isna()]  # a sweep job names its LRs, not one
    assert len(sweep_jobs) == 2 and (sweep_jobs["members"] == 2 * len(tiny["train"]["seeds"])).all()

    bench = pd.read_csv(project / "reports/tables/bench.csv")
    assert {"naive loop (DataLoader, torch.optim.SGD)", "engine, 1 member"} <= set(bench["variant"])
    assert (bench["ms_per_model_epoch"] > 0).all() and (bench["flop_floor_ms"] > 0).all()

    dry = run(["snakemake", "-n", "--configfile", "config/tiny.yaml"], project)
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_figures_are_files_and_snakemake_report_holds_them_with_captions(tiny_study):
    from batchscale import config, figures

    project = tiny_study
    made = {png.stem: png for png in (project / "reports/figures").glob("*.png")}
    # The rule makes what the registry declares for these parameters (the tiny grid has a
    # landscape pair: every figure), each PNG with its caption beside it.
    params = config.load([str(project / "params.yaml"), str(project / "config/tiny.yaml")])
    assert set(made) == {e.stem for e in figures.made(params)} == {e.stem for e in figures.REGISTRY}
    assert {rst.stem for rst in (project / "reports/figures").glob("*.rst")} == set(made)
    assert all(png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for png in made.values())

    run(
        ["snakemake", "--report", "reports/snakemake-report.zip", "--configfile", "config/tiny.yaml"], project
    )
    with zipfile.ZipFile(project / "reports/snakemake-report.zip") as archive:
        names = archive.namelist()
        page = archive.read("snakemake-report/report.html").decode()
    for e in figures.REGISTRY:
        assert any(name.endswith(f"/{e.stem}.png") for name in names), e.stem
        # The figure's entry in the report's data holds its label and caption (the caption's
        # longest unmarked words), the HTML report's caption.
        caption = (project / "reports/figures" / f"{e.stem}.rst").read_text()
        words = max(re.findall(r"[\w ,:.;()'-]{15,}", caption, re.ASCII), key=len)
        entry = page.find(f'"reports/figures/{e.stem}.png": {{')
        assert entry >= 0 and words in page[entry : entry + 8000], f"caption of {e.stem} missing"
        assert f'"labels": {{"figure": "{e.title}"}}' in page[entry : entry + 300], e.stem
    for item in ("report.html", "claims.csv"):  # the HTML report and the verdicts, under "Report"
        assert any(name.endswith(f"/{item}") and "/data/raw/" in name for name in names), item
    assert "C01 training loss" in page and "Beyond the article" in page  # categories
    assert "Effect of Batch Size on Neural Net" in page  # the workflow description
    assert "batchscale figures" in page  # the rules' code: provenance


def test_lint_is_clean(project):
    proc = run(["snakemake", "--lint"], project, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("grid:\n  lr_rules: [cubic]\n", "grid.lr_rules"),
        ("train:\n  epochs: 0\n", "train.epochs"),
        ("grid:\n  batch_sizes: [32, 999999]\n", "grid.batch_sizes"),
        ("grid:\n  lr_rules: [none, malladi]\n", "grid.lr_rules: malladi is a rule for adam and adamw"),
        ("train:\n  optimizer: adam\n  betas: [0.9, 1.5]\n", "train.betas.1"),
        ("model:\n  name: resnet8\n  ghost_batch: -1\n", "model.ghost_batch"),
        ("model:\n  name: cnn1d\n  ghost_batch: 16\n", "model.ghost_batch"),
    ],
)
def test_bad_configuration_stops_before_any_job(project, override, key):
    (project / "bad.yaml").write_text(override)
    proc = run(["snakemake", "--cores", "1", "--configfile", "bad.yaml"], project, check=False)
    assert proc.returncode != 0
    assert key in proc.stderr + proc.stdout
    assert not (project / "results").exists()
    assert not (project / "reports/tables").exists()
    assert not (project / "data/prepared").exists()


def test_cli_help_lists_every_step(project):
    out = run(["batchscale", "--help"], project).stdout
    for command in ("prepare", "train", "time", "aggregate", "claims", "report", "check"):
        assert command in out


def test_a_users_npz_becomes_the_data_steps_input(project):
    import numpy as np

    from conftest import random_arrays

    np.savez(project / "mine.npz", **random_arrays(n_train=200, n_val=50))
    (project / "mine.yaml").write_text(
        "data: {name: npz, path: mine.npz}\nmodel: {name: mlp, hidden: [8]}\n"
        "grid: {batch_sizes: [16, 32]}\ntrain: {epochs: 2, seeds: [0, 1, 2]}\n"
    )
    dry = run(["snakemake", "-n", "--cores", "1", "--configfile", "mine.yaml"], project)
    out = dry.stdout + dry.stderr
    assert "input: mine.npz" in out and "data/prepared/user_mine.npz" in out
