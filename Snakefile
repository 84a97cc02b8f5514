# batchscale: how batch size and learning-rate scaling change neural-network training.
#
#   snakemake --cores 4                                 # the default study -> reports/report.html
#   snakemake --cores 4 --configfile config/tiny.yaml   # the same DAG in seconds
#
# Each rule calls one `batchscale` subcommand; the logic lives in src/batchscale/.
import sys

from snakemake.utils import min_version

from batchscale import config as bs_config

min_version("9.0")

# Snakemake's own parser reports a YAML error in a configfile without the file or the line
# (and a --configfile override is parsed before this file runs): read params.yaml safely
# first, so that a typo in it stops the run with one line naming both.
try:
    bs_config.read_yaml("params.yaml")
except bs_config.ConfigError as exc:
    sys.exit(f"batchscale: invalid configuration: {exc}")


configfile: "params.yaml"


# The workflow's description in Snakemake's own report (`snakemake --report <file>.zip`).
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/timing.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        "reports/report.html",
        "reports/claims.csv",
        "reports/metrics.json",
        "reports/tables/bench.csv",
        rules.figures.output,
