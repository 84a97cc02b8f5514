rule aggregate:
    input:
        runs=[f"{d}/history.csv" for d in RUN_DIRS],
        summaries=[f"{d}/summary.json" for d in RUN_DIRS],
        tests=[f"{d}/test.csv" for d in RUN_DIRS],
        timing=expand(f"{RESULTS}/timing/bs{{batch_size}}.csv", batch_size=BATCH_SIZES),
        probes=[
            f"{d}/{name}.csv"
            for d in PROBE_DIRS
            for name in ("sharpness", "slices", "noise")
        ],
        landscape=LANDSCAPE,
    output:
        history="reports/tables/history.csv",
        runs="reports/tables/runs.csv",
        jobs="reports/tables/jobs.csv",
        timing="reports/tables/timing.csv",
        curves="reports/tables/curves.csv",
        sharpness="reports/tables/sharpness.csv",
        slices="reports/tables/slices.csv",
        noise="reports/tables/noise.csv",
        interpolation="reports/tables/interpolation.csv",
        contour="reports/tables/contour.csv",
        tuning="reports/tables/tuning.csv",
    log:
        "logs/aggregate.log",
    conda:
        ENV
    params:
        sections=sections_json("data", "model", "grid", "train"),
        out_dir=subpath(output.history, parent=True),
        landscape=f"--landscape-dir {RESULTS}/landscape" if LANDSCAPE else "",
    shell:
        "batchscale aggregate --params {params.sections:q} --timing {input.timing}"
        " {params.landscape} --out-dir {params.out_dir} > {log} 2>&1"


rule claims:
    input:
        runs=rules.aggregate.output.runs,
        timing=rules.aggregate.output.timing,
        # The tuned sweep (no rows without the tuned rule) and the noise scale's prediction.
        tuning=rules.aggregate.output.tuning,
        noise=rules.aggregate.output.noise,
    output:
        claims=report(
            "reports/claims.csv", caption="../report/claims.rst", category="Report"
        ),
        metrics="reports/metrics.json",
        comparison="reports/tables/article_comparison.csv",
        study=f"{RESULTS}/claims.csv",
        # The tuned rule's analysis: header only without a sweep, so the outputs are the same
        # whatever the grid.
        tuned_lr="reports/tables/tuned_lr.csv",
        critical_batch="reports/tables/critical_batch.csv",
    log:
        "logs/claims.log",
    conda:
        ENV
    params:
        sections=sections_json("grid", "data", "stats", "train"),
        tables=subpath(input.runs, parent=True),
    shell:
        "batchscale claims --params {params.sections:q} --tables {params.tables}"
        " --out {output.claims} --study-out {output.study} --metrics {output.metrics} > {log} 2>&1"
