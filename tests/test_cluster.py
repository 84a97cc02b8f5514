"""Reading a SLURM partition's nodes and fitting the jobs to them (batchscale.cluster)."""

from __future__ import annotations

import subprocess

import pytest

from batchscale import cluster
from batchscale.cluster import ClusterError, Node

SINFO_OUT = "batch|2|1600\nbatch|8+|64000\ngpu|16|128000\n\n"


def fake_sinfo(stdout: str = SINFO_OUT, returncode: int = 0, stderr: str = ""):
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, returncode, stdout, stderr)

    run.calls = calls
    return run


def test_sinfo_output_gives_each_partitions_nodes():
    assert cluster.parse_sinfo(SINFO_OUT) == {
        "batch": [Node(2, 1600), Node(8, 64000)],
        "gpu": [Node(16, 128000)],
    }
    with pytest.raises(ClusterError, match="cannot read"):
        cluster.parse_sinfo("batch|two|1600\n")


def test_one_sinfo_call_reads_the_partitions_named():
    run = fake_sinfo()
    nodes = cluster.read_partitions(["gpu", "batch", "gpu"], run=run)
    assert nodes == {"batch": [Node(2, 1600), Node(8, 64000)], "gpu": [Node(16, 128000)]}
    assert run.calls == [[*cluster.SINFO, "--partition=batch,gpu"]]
    assert cluster.largest_cpus(nodes) == 8  # the GPU rules fit in gpu, the others in batch


@pytest.mark.parametrize(
    ("run", "error"),
    [
        (fake_sinfo("batch|2|1600\n"), "no nodes in partition 'CHANGE-ME'"),
        (fake_sinfo("", 1, "slurm_load_partitions: Unable to contact slurm controller\n"), "Unable to"),
    ],
)
def test_partitions_that_cannot_be_read_say_why(run, error):
    with pytest.raises(ClusterError, match=error):
        cluster.read_partitions(["batch", "CHANGE-ME"], run=run)


def test_a_hung_or_missing_sinfo_is_an_error_not_a_wait(monkeypatch):
    def hangs(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    with pytest.raises(ClusterError, match="did not answer within 15 s"):
        cluster.read_partitions(["batch"], run=hangs)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ClusterError, match="sinfo is not installed"):
        cluster.read_partitions(["batch"])


def test_the_message_names_the_rules_whose_threads_were_lowered():
    nodes = {"batch": [Node(2, 1600)]}
    message = cluster.threads_message(nodes, {"time_epochs": 4, "bench": 4, "train": 1}, 2)
    assert message == (
        "batchscale: the largest node of SLURM partition 'batch' has 2 CPUs, so the jobs ask for at most 2 "
        "threads (the profile's set-threads: bench 4, time_epochs 4)."
    )
    assert cluster.threads_message(nodes, {"time_epochs": 2}, 2) is None
    line = cluster.unreadable_message(["batch"], ClusterError("sinfo is not installed here"))
    assert "'batch' (sinfo is not installed here)" in line and "PartitionConfig" in line


def test_a_job_fits_when_one_node_has_both_its_cpus_and_its_memory():
    nodes = {"batch": [Node(2, 64000), Node(8, 1600)]}
    jobs = [
        ("train", "batch", 1, 1500),
        ("train", "batch", 1, 1500),
        ("bench", "batch", 4, 2000),  # the CPUs of the second node, the memory of the first
        ("bench", "batch", 4, 2000),
        ("time_epochs", "batch", 8, None),
        ("local_rule", None, 64, 10**6),  # no partition (a local rule): not SLURM's to refuse
    ]
    problems = cluster.unfit_jobs(jobs, nodes)
    assert problems == [
        "rule bench asks for 4 CPUs and 2000 MB, and no node of SLURM partition 'batch' has both (the "
        "most: 8 CPUs, 64000 MB); lower it, e.g. --set-resources bench:mem_mb=N or --set-threads bench=N, "
        "or choose another partition"
    ]
