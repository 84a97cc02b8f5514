# Helpers shared by the rules: validated parameters and the grid of runs.
import glob
import json
import os
import sys

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
BATCH_SIZES = sorted(PARAMS["grid"]["batch_sizes"])
RUN_DIRS = bs_config.run_dirs(PARAMS)
PROBE_DIRS = bs_config.probe_dirs(PARAMS)
LANDSCAPE_PAIR = bs_config.landscape_pair(PARAMS)
LANDSCAPE = (
    [f"{RESULTS}/landscape/interpolation.csv", f"{RESULTS}/landscape/contour.csv"]
    if LANDSCAPE_PAIR
    else []
)
# Single-thread CPU-bound jobs (train, probe, landscape) take one `cpu_jobs` each, and a
# local run has as many as the machine has CPUs: `--cores 4` on a 2-CPU laptop would
# otherwise run 4 at once, which measured 17% slower in all than 2 at a time (they evict
# each other from the cache). `--resources cpu_jobs=N` overrides it; a cluster run (a
# remote executor) is not limited by the submitting host.
if workflow.local_exec and "cpu_jobs" not in workflow.global_resources:
    workflow.register_resource("cpu_jobs", len(os.sched_getaffinity(0)))
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
    """`batchscale train` options for the run a key names (bs64_lr0.02_wu5)."""
    batch_size, lr, warmup = bs_config.parse_run_key(run_key)
    return f"--batch-size {batch_size} --lr {lr!r} --warmup-epochs {warmup}"


def train_priority(run_key):
    """A train job's scheduling priority: its optimiser steps per epoch (the longest first)."""
    batch_size, _, _ = bs_config.parse_run_key(run_key)
    return -(-bs_config.expected_train_size(PARAMS["data"]) // batch_size)
