# The report's main figures as files, each a report item of Snakemake's own report
# (`snakemake --report reports/snakemake-report.zip`), as the figure registry
# (batchscale.figures.REGISTRY) declares them: file stem, report category, title and caption,
# for the figures these parameters make. `batchscale figures` draws each PNG with the
# functions the report notebook shows and writes its caption, the HTML report's, beside it
# as reStructuredText (<stem>.rst), which the report item points at.
from batchscale import figures as bs_figures

FIGURES = bs_figures.made(PARAMS)


rule figures:
    input:
        tables=rules.aggregate.output,
        comparison=rules.claims.output.comparison,
        tuned_lr=rules.claims.output.tuned_lr,
        critical_batch=rules.claims.output.critical_batch,
        bench=rules.bench.output,
    output:
        [
            report(
                f"reports/figures/{figure.stem}.png",
                caption=os.path.abspath(f"reports/figures/{figure.stem}.rst"),
                category=figure.category,
                labels={"figure": figure.title},
            )
            for figure in FIGURES
        ],
        [f"reports/figures/{figure.stem}.rst" for figure in FIGURES],
    log:
        "logs/figures.log",
    conda:
        ENV
    params:
        sections=sections_json("stats", "train", "probes"),
        tables=subpath(input.comparison, parent=True),
    shell:
        "batchscale figures --params {params.sections:q} --tables {params.tables}"
        " --out {output} > {log} 2>&1"
