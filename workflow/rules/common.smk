# Helpers shared by the rules: validated parameters and the grid of runs.
import json
import sys

from batchscale import config as bs_config

# Validate (schema + cross-field rules) and fill defaults before any job is planned; a bad
# configuration stops here with one line naming the key.
try:
    PARAMS = bs_config.validate(config)
except bs_config.ConfigError as exc:
    sys.exit(f"batchscale: invalid configuration: {exc}")

PREPARED = bs_config.prepared_path(PARAMS)
BATCH_SIZES = sorted(PARAMS["grid"]["batch_sizes"])
RUN_DIRS = bs_config.run_dirs(PARAMS)
PROBE_DIRS = bs_config.probe_dirs(PARAMS)
LANDSCAPE_PAIR = bs_config.landscape_pair(PARAMS)
LANDSCAPE = (
    ["results/landscape/interpolation.csv", "results/landscape/contour.csv"]
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
    """`batchscale train` options for the run a key names (bs64_lr0.02_wu5)."""
    batch_size, lr, warmup = bs_config.parse_run_key(run_key)
    return f"--batch-size {batch_size} --lr {lr!r} --warmup-epochs {warmup}"
