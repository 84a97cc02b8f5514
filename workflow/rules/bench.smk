# The speed benchmark: naive PyTorch loop vs the engine, alone on the machine.
rule bench:
    input:
        data=PREPARED,
    output:
        "reports/tables/bench.csv",
    log:
        "logs/bench.log",
    conda:
        ENV
    # A function, read only when jobs are planned: `snakemake --unlock` (no --cores) still works.
    threads: lambda wildcards: workflow.cores
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        sections=sections_json("data", "model", "train", "bench"),
    shell:
        "batchscale bench --params {params.sections:q} --data {input.data} --out {output}"
        " --threads {threads} > {log} 2>&1"
