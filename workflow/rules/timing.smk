# Honest epoch timings for C3/C9/C11: one job that claims every core, so it runs with the
# machine to itself (no training job shares it), times every batch size of the grid at 1 thread
# and at all threads (the command caps the thread count at the CPUs it may use, so `--cores 4`
# on a 2-core machine times 2 threads), in rounds of one epoch of every cell (timing.py). One
# job, not one per batch size: each whole-machine job leaves the cores idle while Python and
# torch start (about 1.5 s).
rule time_epochs:
    input:
        data=PREPARED,
        model=MODEL_FILES,
    output:
        expand(f"{RESULTS}/timing/bs{{batch_size}}.csv", batch_size=BATCH_SIZES),
    log:
        f"logs/{STUDY}/time_epochs.log",
    conda:
        ENV
    # A function, read only when jobs are planned: `snakemake --unlock` (no --cores) still works.
    # On SLURM the profile's set-threads replaces it, capped at the CPUs of the partition's
    # largest node (common.smk, fit_threads_to_slurm_nodes).
    threads: lambda wildcards: workflow.cores
    resources:
        mem_mb=1500,
        runtime=30,
    params:
        sections=sections_json("data", "model", "train", "timing"),
        batch_sizes=" ".join(str(b) for b in BATCH_SIZES),
        out_dir=subpath(output[0], parent=True),
    shell:
        "batchscale time --params {params.sections:q} --batch-size {params.batch_sizes}"
        " --data {input.data} --out-dir {params.out_dir} --threads {threads} > {log} 2>&1"
