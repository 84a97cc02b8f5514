# The speed benchmark: naive PyTorch loop vs the engine, alone on the machine.
rule bench:
    input:
        data=PREPARED,
        model=MODEL_FILES,  # the thread-layout comparison trains the study's model
    output:
        bench="reports/tables/bench.csv",
        layouts="reports/tables/thread_layouts.csv",
    log:
        "logs/bench.log",
    conda:
        ENV
    # A function, read only when jobs are planned: `snakemake --unlock` (no --cores) still works.
    # On SLURM the profile's set-threads replaces it, capped at the CPUs of the partition's
    # largest node (common.smk, fit_threads_to_slurm_nodes).
    threads: lambda wildcards: workflow.cores
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        sections=sections_json("data", "model", "train", "bench"),
    shell:
        "batchscale bench --params {params.sections:q} --data {input.data} --out {output.bench}"
        " --layouts-out {output.layouts} --threads {threads} > {log} 2>&1"
