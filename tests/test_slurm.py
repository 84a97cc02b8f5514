"""The cluster profile against a real SLURM: every job of the tiny study is a SLURM job, and
the report comes out as a local run's.

A one-node SLURM with accounting (slurmctld, slurmd, slurmdbd on MariaDB; tests/slurm_cluster.py)
starts on localhost for this module. Skipped only where the SLURM binaries are missing; CI
installs them (.ci/run).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, copy_project, run, tool_env
from slurm_cluster import MARKER, SlurmCluster, missing_binaries

pytestmark = pytest.mark.slow

PROFILE = "workflow/profiles/slurm"
GPU_PROFILE = "workflow/profiles/slurm-gpu"
GPU_RULES = {"train", "time_epochs", "bench"}
# Claims decided on epoch timings, which no two runs share: only their definitions must agree.
TIMED_CLAIMS = ["C3", "C9", "C11"]
CLAIM_DEFINITION = ["claim_id", "claim", "metric", "expected", "n_seeds", "rule"]
# Tables, and the columns of them, that are measured in seconds or bytes rather than computed.
TIMED_COLUMNS = {"history.csv": ["epoch_seconds"], "runs.csv": ["time_to_min_s"]}
DETERMINISTIC_TABLES = ["history.csv", "runs.csv", "curves.csv", "sharpness.csv", "slices.csv", "noise.csv",
                        "interpolation.csv", "contour.csv", "article_comparison.csv"]  # fmt: skip
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.")
# Each rule's job is reported as `rule NAME:` (or `localrule NAME:` when Snakemake runs it itself).
JOB_HEADER = re.compile(r"^(local)?rule (\w+):$", re.MULTILINE)


@pytest.fixture(scope="module")
def slurm():
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="the slurm extra is not installed")
    missing = missing_binaries()
    if missing:
        pytest.skip(
            f"SLURM is not installed (missing {', '.join(missing)}); CI installs it: apt-get install "
            "slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
        )
    root = Path(tempfile.mkdtemp(prefix="bs-slurm-"))  # short: unix socket paths are limited
    cluster = SlurmCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def use_profile(project: Path, profile: str, cluster: SlurmCluster) -> None:
    """What a user does: set the partition and the account, the two lines marked EDIT."""
    path = project / profile / "config.yaml"
    text = path.read_text()
    for key, value in (("slurm_partition", cluster.partition), ("slurm_account", cluster.account)):
        text, n = re.subn(rf'^(  {key}: )"CHANGE-ME"', rf'\1"{value}"', text, flags=re.MULTILINE)
        assert n == 1, f'{profile}: no `{key}: "CHANGE-ME"` line to edit'
    path.write_text(text)


# The line the workflow prints when the partition's nodes are smaller than the profile's set-threads.
CAPPED = re.compile(r"^batchscale: the largest node of SLURM partition '(\w+)' has (\d+) CPUs", re.MULTILINE)
DRY_RUN_JOB = re.compile(r"^rule (\w+):\n(?:    .*\n)*?    threads: (\d+)\n    resources: (.*)$",
                         re.MULTILINE)  # fmt: skip


def test_jobs_ask_for_what_the_partitions_nodes_have(slurm, project, monkeypatch):
    """The profile as written (4 threads for the timing rules) on a node with fewer CPUs: the jobs
    ask for the node's CPUs instead of pending for ever, and a job that fits no node (here, by
    its memory) stops the run before anything is submitted, naming the rule."""
    assert slurm.cpus < 4  # the small node the issue is about (slurm_cluster.NODE_CPUS)
    use_profile(project, PROFILE, slurm)
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    monkeypatch.setenv(MARKER, str(slurm.root))
    # A dry run caps every job's threads at --cores, which is 1 unless given; a real run on
    # SLURM has no such cap, so give a number above the profile's 4 to see what it asks for.
    proc = run(["snakemake", "-n", "--workflow-profile", PROFILE, "--configfile", "config/tiny.yaml",
                "--cores", "64"], project)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert CAPPED.findall(out) == [(slurm.partition, str(slurm.cpus))], out[-3000:]
    jobs = {rule: (int(threads), resources) for rule, threads, resources in DRY_RUN_JOB.findall(out)}
    for rule in ("time_epochs", "bench"):
        threads, resources = jobs[rule]
        assert threads == slurm.cpus and f"cpus_per_task={slurm.cpus}" in resources.split(", "), jobs[rule]

    too_big = slurm.memory_mb + 1
    proc = run(["snakemake", "--workflow-profile", PROFILE, "--configfile", "config/tiny.yaml",
                "--set-resources", f"bench:mem_mb={too_big}"], project, check=False, timeout=120)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (f"batchscale: rule bench asks for {slurm.cpus} CPUs and {too_big} MB, and no node of SLURM "
            f"partition '{slurm.partition}' has both") in out, out[-3000:]  # fmt: skip
    assert not SUBMITTED.search(out)
    assert slurm.cmd("squeue", "-h", "-o", "%i").stdout.strip() == ""


def test_tiny_study_on_slurm_matches_a_local_run(slurm, tmp_path, monkeypatch):
    on_cluster, local = copy_project(tmp_path / "cluster"), copy_project(tmp_path / "local")
    use_profile(on_cluster, PROFILE, slurm)
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    monkeypatch.setenv(MARKER, str(slurm.root))
    cores = str(slurm.cpus)
    # The local run, for reference, alongside the cluster's (which mostly waits on status polls).
    local_log = tmp_path / "local.log"
    with open(local_log, "w") as log:
        local_run = subprocess.Popen(
            ["timeout", "-k", "30", "900", "snakemake", "--cores", cores, "--configfile", "config/tiny.yaml"],
            cwd=local, env=tool_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        # The profile as a user runs it. The one flag added changes only when the plugin first
        # polls job states (from 2 s on; its 40 s suit real jobs, not seconds-long ones), not
        # what any job asks SLURM for.
        proc = run(
            ["timeout", "-k", "30", "900", "snakemake", "--workflow-profile", PROFILE,
             "--configfile", "config/tiny.yaml", "--slurm-init-seconds-before-status-checks", "2"],
            on_cluster, timeout=960,
        )  # fmt: skip
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{slurm.log_tails()}\n{job_logs(on_cluster)}") from None
    finally:
        local_status = local_run.wait(timeout=960)
    local_out = local_log.read_text()
    assert local_status == 0, f"the local run failed ({local_status}):\n{local_out[-5000:]}"
    out = proc.stdout + proc.stderr
    # The local run caps CPU-bound jobs at the machine's CPUs (cpu_jobs); the cluster run is not
    # limited by the submitting host, so it registers no such resource.
    assert "cpu_jobs" in re.search(r"Provided resources: (.*)", local_out).group(1)
    provided = re.search(r"Provided resources: (.*)", out)
    assert provided is None or "cpu_jobs" not in provided.group(1), provided.group(0)

    # Every job the local run ran itself went to SLURM: one sbatch each, and only `all`
    # (the target, which has nothing to run) stayed in Snakemake.
    local_jobs = Counter(rule for is_local, rule in JOB_HEADER.findall(local_out))
    local_jobs.pop("all")
    assert [rule for is_local, rule in JOB_HEADER.findall(out) if is_local] == ["all"]
    submitted = SUBMITTED.findall(out)
    assert len(submitted) == sum(local_jobs.values())
    slurm_ids = {slurm_id for _, slurm_id, _ in submitted}
    assert len(slurm_ids) == len(submitted)

    # ... and accounting knows each one: completed, under the account the profile names, with
    # the rule in its comment.
    sacct = slurm.cmd("sacct", "-X", "-n", "-P", "-a", "-o", "JobID,State,Account,Comment,ReqCPUS",
                      "-S", "now-1hour")  # fmt: skip
    rows = {line.split("|")[0]: line.split("|") for line in sacct.stdout.splitlines()}
    assert slurm_ids <= set(rows), sacct.stdout
    assert {rows[i][1] for i in slurm_ids} == {"COMPLETED"}
    assert {rows[i][2] for i in slurm_ids} == {slurm.account}
    rules = Counter(re.match(r"rule_(\w+?)(_wildcards_.*)?$", rows[i][3]).group(1) for i in slurm_ids)
    assert rules == local_jobs
    # The timing rules asked for the node's CPUs (fewer than the profile's 4), and said so.
    timing = {rows[i][4] for i in slurm_ids if re.match(r"rule_(time_epochs|bench)\b", rows[i][3])}
    assert timing == {cores}, sacct.stdout
    assert CAPPED.findall(out) == [(slurm.partition, cores)]

    # Each job left its SLURM log, named by its job id, with Snakemake's record of the rule.
    for _, slurm_id, log in submitted:
        log = Path(log)
        assert log.name == f"{slurm_id}.log" and log.is_relative_to(on_cluster / ".snakemake/slurm_logs")
        assert "1 of 1 steps (100%) done" in log.read_text()

    # The report: everything computed is identical; only timings differ.
    reports, expected = on_cluster / "reports", local / "reports"
    assert (reports / "report.html").stat().st_size > 0
    claims = pd.read_csv(reports / "claims.csv").set_index("claim_id", drop=False)
    claims_local = pd.read_csv(expected / "claims.csv").set_index("claim_id", drop=False)
    pd.testing.assert_frame_equal(claims.drop(index=TIMED_CLAIMS), claims_local.drop(index=TIMED_CLAIMS))
    pd.testing.assert_frame_equal(claims.loc[TIMED_CLAIMS, CLAIM_DEFINITION],
                                  claims_local.loc[TIMED_CLAIMS, CLAIM_DEFINITION])  # fmt: skip
    metrics = json.loads((reports / "metrics.json").read_text())
    metrics_local = json.loads((expected / "metrics.json").read_text())
    for both in (metrics, metrics_local):  # the verdict counts include the timed claims' verdicts
        both.pop("verdicts")
        for claim in TIMED_CLAIMS:
            both["claims"].pop(claim)
    assert metrics == metrics_local
    for name in DETERMINISTIC_TABLES:
        ours, theirs = (pd.read_csv(folder / "tables" / name) for folder in (reports, expected))
        drop = TIMED_COLUMNS.get(name, [])
        pd.testing.assert_frame_equal(ours.drop(columns=drop), theirs.drop(columns=drop), obj=name)


def job_logs(project: Path, lines: int = 20) -> str:
    out = []
    for path in sorted((project / ".snakemake/slurm_logs").rglob("*.log")):
        out.append(f"--- {path.relative_to(project)}\n" + "\n".join(path.read_text().splitlines()[-lines:]))
    return "\n".join(out)


def test_gpu_profile_is_the_cpu_profile_plus_one_gpu_per_training_rule():
    cpu = yaml.safe_load((ROOT / PROFILE / "config.yaml").read_text())
    gpu = yaml.safe_load((ROOT / GPU_PROFILE / "config.yaml").read_text())
    resources = gpu.pop("set-resources")
    assert {rule for rule, res in resources.items() if res.pop("gpu", None) == 1} == GPU_RULES
    assert {rule: res for rule, res in resources.items() if res} == cpu.pop("set-resources")
    assert gpu == cpu


@pytest.mark.parametrize("profile", [PROFILE, GPU_PROFILE])
def test_profile_gives_each_job_its_resources(profile, project):
    """A dry run through the profile: the rules' own resources, the defaults, the GPU lines."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="the slurm extra is not installed")
    dry_run = ["snakemake", "-n", "--workflow-profile", profile, "--configfile", "config/tiny.yaml"]
    proc = run(dry_run, project)
    out = proc.stdout + proc.stderr
    assert f"Using workflow specific profile {profile}" in out
    jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", out, re.MULTILINE)
    assert jobs
    for rule, resources in jobs:
        assert "slurm_partition=CHANGE-ME" in resources and "slurm_account=CHANGE-ME" in resources
        assert re.search(r"\bruntime=\d+", resources) and re.search(r"\bmem_mb=\d+", resources)
        has_gpu = "gpu=1" in resources.split(", ")
        assert has_gpu == (profile == GPU_PROFILE and rule in GPU_RULES), (rule, resources)
    runtimes = {rule: re.search(r"\bruntime=(\d+)", res).group(1) for rule, res in jobs}
    assert runtimes["train"] == "120" and runtimes["aggregate"] == "30"
