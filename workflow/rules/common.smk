# Helpers shared by the rules: validated parameters and the grid of runs.
import glob
import json
import os
import sys

from batchscale import cluster as bs_cluster
from batchscale import config as bs_config

# Validate (schema + cross-field rules) and fill defaults before any job is planned; a bad
# configuration stops here with one line naming the key.
try:
    PARAMS = bs_config.validate(config)
except bs_config.ConfigError as exc:
    sys.exit(f"batchscale: invalid configuration: {exc}")

PREPARED = bs_config.prepared_path(PARAMS)
# This study's results (data set x model): results/<data>-<model>/{runs,probes,timing,...}
STUDY = bs_config.study_name(PARAMS)
RESULTS = bs_config.study_dir(PARAMS)
# Claims of the other studies already run in this folder (another data set or model); the
# report compares them with this one, and is redone when one of them changes.
OTHER_STUDIES = sorted(
    path
    for path in glob.glob("results/*/claims.csv")
    if path != f"{RESULTS}/claims.csv"
)


def model_files():
    """A user's own model's file (model.name custom, a factory in a file), or []."""
    if PARAMS["model"]["name"] != "custom":
        return []
    # Only here: it imports torch (1.8 s), which a built-in model's planning does without.
    from batchscale import model_factory

    return model_factory.dependency_files(PARAMS["model"])


# An input of every job that builds the model, so that editing the file reruns them.
MODEL_FILES = model_files()
BATCH_SIZES = sorted(PARAMS["grid"]["batch_sizes"])
RUN_DIRS = bs_config.run_dirs(PARAMS)
PROBE_DIRS = bs_config.probe_dirs(PARAMS)
LANDSCAPE_PAIR = bs_config.landscape_pair(PARAMS)
LANDSCAPE = (
    [f"{RESULTS}/landscape/interpolation.csv", f"{RESULTS}/landscape/contour.csv"]
    if LANDSCAPE_PAIR
    else []
)
# The software environment of every rule (with --software-deployment-method conda).
ENV = "../envs/batchscale.yaml"


wildcard_constraints:
    batch_size=r"\d+",
    run=bs_config.RUN_KEY_PATTERN,


def sections_json(*names):
    """The parameter sections a step reads, as JSON for `batchscale --params`.

    Passing only these sections makes Snakemake rerun a step when, and only when, the
    parameters it depends on change.
    """
    return json.dumps({name: PARAMS[name] for name in names}, sort_keys=True)


def run_arguments(run_key):
    """`batchscale train` options for the run a key names (bs64_lr0.02_wu5; a job of the tuned
    sweep names several LRs, bs64_lr0.005_0.01_0.04, and trains every seed at each; _malladi:
    Adam's betas and eps set by Malladi et al.'s rule)."""
    key = bs_config.parse_run_key(run_key)
    lr = " ".join(repr(lr) for lr in key.lrs)
    malladi = " --malladi" if key.malladi else ""
    return f"--batch-size {key.batch_size} --lr {lr} --warmup-epochs {key.warmup_epochs}{malladi}"


def train_priority(run_key):
    """A train job's scheduling priority: its expected cost, the costliest first. An epoch costs
    about the same per example at every batch size, plus a per-step overhead (jobs of 8 members
    measured 87 s at B=32 and 71 s at B=256: about 10 examples' worth per step), times the
    job's LRs (a tuned-sweep job trains every seed at each)."""
    batch_size, lrs = bs_config.parse_run_key(run_key)[:2]
    examples = bs_config.expected_train_size(PARAMS["data"])
    steps = -(-examples // batch_size)
    return len(lrs) * (examples + 10 * steps)


# On SLURM every job must fit one node of its partition: SLURM keeps a job that asks for more
# CPUs than any node has PENDING (reason PartitionConfig) for ever. A run that names a
# partition (the cluster profile's default-resources) reads the partition's nodes once, here,
# when the workflow is planned, and caps every rule's threads at the largest node's CPUs with
# Snakemake's own --max-threads (which also reaches the jobs SLURM runs); the profile's
# set-threads is the wish. A user's own --max-threads still applies when it is lower. Jobs
# started by SLURM (exec mode remote) and local runs are left alone. See docs/decisions.md,
# "The cluster profile fits the partition's nodes".
def slurm_partitions():
    """The SLURM partitions this run names (defaults and per-rule), as the profile spells them."""
    settings = workflow.resource_settings
    named = [(settings.default_resources or {}).get("slurm_partition")]
    named += [
        res.get("slurm_partition") for res in settings.overwrite_resources.values()
    ]
    raw = (getattr(resource, "raw", resource) for resource in named)
    return sorted(
        {
            value.strip("'\"")
            for value in raw
            if isinstance(value, str) and value.strip("'\"")
        }
    )


def fit_threads_to_slurm_nodes():
    """Cap threads at the partition's largest node; the nodes, or None when unknown or local."""
    partitions = slurm_partitions()
    if not partitions or workflow.remote_exec or workflow.subprocess_exec:
        return None
    try:
        nodes = bs_cluster.read_partitions(partitions)
    except bs_cluster.ClusterError as exc:
        print(bs_cluster.unreadable_message(partitions, exc), file=sys.stderr)
        return None
    cap = bs_cluster.largest_cpus(nodes)
    settings = workflow.resource_settings
    if settings.max_threads is None or settings.max_threads > cap:
        settings.max_threads = cap
    wishes = {
        name: threads.raw
        for name, threads in settings.overwrite_threads.items()
        if isinstance(threads.raw, int)
    }
    message = bs_cluster.threads_message(nodes, wishes, settings.max_threads)
    if message:
        print(message, file=sys.stderr)
    return nodes


SLURM_NODES = fit_threads_to_slurm_nodes()

# Single-thread CPU-bound jobs (train, probe, landscape) take one `cpu_jobs` each, and a
# local run has as many as the machine has CPUs: `--cores 4` on a 2-CPU laptop would
# otherwise run 4 at once, which measured 17% slower in all than 2 at a time (they evict
# each other from the cache). `--resources cpu_jobs=N` overrides it. A cluster run is not
# limited by the submitting host's CPUs; while this file is read Snakemake has not attached
# its executor yet (local_exec is True even under SLURM), so a run that names a SLURM
# partition counts as a cluster run, as above.
if (
    workflow.local_exec
    and not slurm_partitions()
    and "cpu_jobs" not in workflow.global_resources
):
    workflow.register_resource("cpu_jobs", len(os.sched_getaffinity(0)))


def stop_unless_jobs_fit_slurm_nodes():
    """Before the first sbatch: stop, saying why, if a job still fits no node (its memory)."""
    if SLURM_NODES is None:
        return
    jobs = (
        (
            job.rule.name,
            job.resources.get("slurm_partition"),
            job.threads,
            job.resources.get("mem_mb"),
        )
        for job in workflow.dag.needrun_jobs()
    )
    problems = bs_cluster.unfit_jobs(jobs, SLURM_NODES)
    if problems:
        sys.exit("\n".join(f"batchscale: {problem}." for problem in problems))


onstart:
    stop_unless_jobs_fit_slurm_nodes()
