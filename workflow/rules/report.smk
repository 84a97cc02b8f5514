# papermill runs the notebook on the tables, nbconvert exports it without input cells.
rule report:
    input:
        notebook="workflow/notebooks/report.ipynb",
        claims=rules.claims.output.claims,
        comparison=rules.claims.output.comparison,
        tables=rules.aggregate.output,
        prepared_info=rules.prepare_data.output.info,
    output:
        html=report(
            "reports/report.html", caption="../report/report.rst", category="Report"
        ),
        executed="results/report/report.executed.ipynb",
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
        " --data-info {input.prepared_info} --out {output.html} > {log} 2>&1"
