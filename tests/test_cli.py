"""The command line as users meet it: help for every option, and a failing job's cause shown
by `snakemake --show-failed-logs`."""

from __future__ import annotations

import argparse

import pytest

from batchscale.cli import build_parser

from conftest import copy_project, run


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public way to list subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_subcommand_and_option_has_help():
    parser = build_parser()
    commands = subcommands(parser)
    assert {"check", "prepare", "train", "probe", "report", "bench"} <= set(commands)
    for name, command in commands.items():
        assert command.description, f"`batchscale {name}` has no description"
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, f"{name} {action.option_strings}"


def test_help_runs_from_the_installed_command(tmp_path):
    top = run(["batchscale", "--help"], tmp_path).stdout
    assert "train" in top and "report" in top
    train = run(["batchscale", "train", "--help"], tmp_path).stdout
    assert "--batch-size" in train and "examples per step" in train


@pytest.mark.slow
def test_show_failed_logs_names_the_cause_of_a_failed_job(tmp_path):
    """A training job that fails on a damaged data file: Snakemake exits non-zero, keeps no
    output of the job, and --show-failed-logs prints the job's one-line cause from logs/."""
    project = copy_project(tmp_path / "project")
    smk = ["snakemake", "--cores", "1", "--configfile", "config/tiny.yaml"]
    run([*smk, "--", "data"], project)
    prepared = project / "data/prepared/mnist1d.npz"
    prepared.write_bytes(prepared.read_bytes()[:1000])  # truncated, as by a full disk
    # --touch keeps Snakemake from regenerating the data: the train job itself must fail.
    run([*smk, "--touch", "--", "data"], project)
    failed = run(
        [*smk, "--show-failed-logs", "--", "results/mnist1d-cnn1d/runs/bs32_lr0.01/history.csv"],
        project,
        check=False,
    )
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "logs/mnist1d-cnn1d/train/bs32_lr0.01.log" in output
    assert "batchscale train: error:" in output and str(prepared.relative_to(project)) in output, output
    assert not (project / "results/mnist1d-cnn1d/runs/bs32_lr0.01/history.csv").exists()
