rule aggregate:
    input:
        runs=[f"{d}/history.csv" for d in RUN_DIRS],
        timing=expand("results/timing/bs{batch_size}.csv", batch_size=BATCH_SIZES),
    output:
        history="reports/tables/history.csv",
        runs="reports/tables/runs.csv",
        timing="reports/tables/timing.csv",
        curves="reports/tables/curves.csv",
    log:
        "logs/aggregate.log",
    conda:
        ENV
    params:
        sections=sections_json("data", "grid", "train"),
        out_dir=subpath(output.history, parent=True),
    shell:
        "batchscale aggregate --params {params.sections:q} --timing {input.timing}"
        " --out-dir {params.out_dir} > {log} 2>&1"


rule claims:
    input:
        runs=rules.aggregate.output.runs,
        timing=rules.aggregate.output.timing,
    output:
        claims="reports/claims.csv",
        metrics="reports/metrics.json",
        comparison="reports/tables/article_comparison.csv",
    log:
        "logs/claims.log",
    conda:
        ENV
    params:
        sections=sections_json("grid", "data", "stats"),
        tables=subpath(input.runs, parent=True),
    shell:
        "batchscale claims --params {params.sections:q} --tables {params.tables}"
        " --out {output.claims} --metrics {output.metrics} > {log} 2>&1"
