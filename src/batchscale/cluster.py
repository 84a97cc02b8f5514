"""What the nodes of a SLURM partition offer, so that every job asks for what one of them has.

SLURM keeps a job that asks for more CPUs than any node of its partition has PENDING (reason
`PartitionConfig`) for ever, and Snakemake waits on it silently. The workflow therefore reads
the partition's nodes once, when it is planned (`sinfo`), caps every job's threads at the
largest node's CPUs (workflow/rules/common.smk), and stops before submitting anything when a
job still cannot fit, saying which and why. Nothing here imports torch or Snakemake.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

# `sinfo -N`: one line per node and partition; %R is the partition's name (without the `*` of
# the default partition), %c the node's CPUs, %m its memory in MB (SLURM's RealMemory).
SINFO = ["sinfo", "--noheader", "--Node", "--format=%R|%c|%m"]
# sinfo gives up on an unreachable controller after about 10 s (SLURM's MessageTimeout); a
# planning step must not wait much longer on it.
SINFO_TIMEOUT_S = 15


class ClusterError(RuntimeError):
    """The nodes of a partition could not be read; the message says why, in a few words."""


@dataclass(frozen=True)
class Node:
    cpus: int
    memory_mb: int


def parse_sinfo(text: str) -> dict[str, list[Node]]:
    """The nodes of each partition, from the output of `SINFO`."""
    nodes: dict[str, list[Node]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            partition, cpus, memory = line.strip().split("|")
            node = Node(int(cpus.rstrip("+")), int(memory.rstrip("+")))
        except ValueError:
            raise ClusterError(f"cannot read this line of sinfo's output: {line.strip()!r}") from None
        nodes.setdefault(partition, []).append(node)
    return nodes


Runner = Callable[..., subprocess.CompletedProcess]


def read_partitions(partitions: Iterable[str], run: Runner = subprocess.run) -> dict[str, list[Node]]:
    """The nodes of each of `partitions`, read with one `sinfo` call."""
    partitions = sorted(set(partitions))
    if run is subprocess.run and shutil.which(SINFO[0]) is None:
        raise ClusterError("sinfo is not installed here")
    command = [*SINFO, f"--partition={','.join(partitions)}"]
    try:
        proc = run(command, capture_output=True, text=True, timeout=SINFO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"sinfo did not answer within {SINFO_TIMEOUT_S} s") from None
    except OSError as exc:
        raise ClusterError(f"sinfo failed: {exc}") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise ClusterError(f"sinfo failed: {detail[-1] if detail else f'exit status {proc.returncode}'}")
    nodes = parse_sinfo(proc.stdout)
    missing = [name for name in partitions if not nodes.get(name)]
    if missing:
        raise ClusterError(f"sinfo shows no nodes in partition {', '.join(map(repr, missing))}")
    return {name: nodes[name] for name in partitions}


def largest_cpus(nodes: Mapping[str, list[Node]]) -> int:
    """The most CPUs a job can ask for in every one of these partitions."""
    return min(max(node.cpus for node in partition) for partition in nodes.values())


def threads_message(nodes: Mapping[str, list[Node]], wishes: Mapping[str, int], cap: int) -> str | None:
    """One line saying which rules ask for fewer threads than the profile sets, or None."""
    lowered = sorted(rule for rule, threads in wishes.items() if threads > cap)
    if not lowered:
        return None
    asked = ", ".join(f"{rule} {wishes[rule]}" for rule in lowered)
    return (f"batchscale: the largest node of SLURM partition {_names(nodes)} has {cap} CPUs, so the jobs "
            f"ask for at most {cap} threads (the profile's set-threads: {asked}).")  # fmt: skip


def unreadable_message(partitions: Iterable[str], exc: Exception) -> str:
    """One line for when the nodes could not be read: what is asked for goes unchecked."""
    return (f"batchscale: cannot check the jobs against the nodes of SLURM partition "
            f"{', '.join(map(repr, sorted(set(partitions))))} ({exc}); they ask for what the profile sets, "
            "and one that no node can hold stays PENDING (reason PartitionConfig).")  # fmt: skip


def unfit_jobs(jobs: Iterable[tuple[str, str | None, int, int | None]],
               nodes: Mapping[str, list[Node]]) -> list[str]:  # fmt: skip
    """Why each job (rule, partition, cpus, mem_mb) fits no node of its partition, one per rule."""
    problems: dict[str, str] = {}
    for rule, partition, cpus, memory_mb in jobs:
        if rule in problems or partition not in nodes:
            continue
        memory_mb = memory_mb or 0
        if any(node.cpus >= cpus and node.memory_mb >= memory_mb for node in nodes[partition]):
            continue
        most_cpus = max(node.cpus for node in nodes[partition])
        most_memory = max(node.memory_mb for node in nodes[partition])
        problems[rule] = (
            f"rule {rule} asks for {cpus} CPUs and {memory_mb} MB, and no node of SLURM partition "
            f"{partition!r} has both (the most: {most_cpus} CPUs, {most_memory} MB); lower it, e.g. "
            f"--set-resources {rule}:mem_mb=N or --set-threads {rule}=N, or choose another partition"
        )
    return [problems[rule] for rule in sorted(problems)]


def _names(nodes: Mapping[str, list[Node]]) -> str:
    return ", ".join(map(repr, nodes))
