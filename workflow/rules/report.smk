# papermill runs the notebook on the tables, nbconvert exports it without input cells.
rule report:
    input:
        notebook="workflow/notebooks/report.ipynb",
        claims=rules.claims.output.claims,
        comparison=rules.claims.output.comparison,
        tuned_lr=rules.claims.output.tuned_lr,
        critical_batch=rules.claims.output.critical_batch,
        tables=rules.aggregate.output,
        prepared_info=rules.prepare_data.output.info,
        bench=rules.bench.output,
        # Every study run in this folder, this one first: which claims hold on which data set.
        studies=[rules.claims.output.study, *OTHER_STUDIES],
    output:
        html=report(
            "reports/report.html", caption="../report/report.rst", category="Report"
        ),
        executed=f"{RESULTS}/report/report.executed.ipynb",
    log:
        "logs/report.log",
    conda:
        ENV
    params:
        sections=sections_json(*PARAMS),
        tables=subpath(input.comparison, parent=True),
    shell:
        "batchscale report --params {params.sections:q} --notebook {input.notebook}"
        " --tables {params.tables} --claims {input.claims} --executed {output.executed}"
        " --data-info {input.prepared_info} --studies {input.studies} --out {output.html} > {log} 2>&1"
