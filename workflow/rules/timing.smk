# Honest epoch timings for C3/C9: a job that claims every core runs with the machine to
# itself (no training job shares it), at 1 thread and at all threads (the command caps the
# thread count at the CPUs it may use, so `--cores 4` on a 2-core machine times 2 threads).
rule time_epochs:
    input:
        data=PREPARED,
    output:
        f"{RESULTS}/timing/bs{{batch_size}}.csv",
    log:
        f"logs/{STUDY}/time_epochs/bs{{batch_size}}.log",
    conda:
        ENV
    # A function, read only when jobs are planned: `snakemake --unlock` (no --cores) still works.
    threads: lambda wildcards: workflow.cores
    resources:
        mem_mb=1500,
        runtime=30,
    params:
        sections=sections_json("data", "model", "train", "timing"),
    shell:
        "batchscale time --params {params.sections:q} --batch-size {wildcards.batch_size}"
        " --data {input.data} --out {output} --threads {threads} > {log} 2>&1"
