# One job per distinct training run of the grid (batch size, learning rate, warm-up); all
# seeds train as one ensemble. Rules that agree at a batch size (all do at the base batch
# size) share the job.
rule train:
    input:
        data=PREPARED,
    output:
        history=f"{RESULTS}/runs/{{run}}/history.csv",
        summary=f"{RESULTS}/runs/{{run}}/summary.json",
        weights=f"{RESULTS}/runs/{{run}}/weights.pt",
    log:
        f"logs/{STUDY}/train/{{run}}.log",
    # Smaller batches first: they take the most steps, so they would otherwise be the long
    # tail that one core works through while the others wait.
    priority: lambda wildcards: train_priority(wildcards.run)
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1500,
        runtime=120,
        cpu_jobs=1,
    params:
        sections=sections_json("data", "model", "train"),
        run=lambda wildcards: run_arguments(wildcards.run),
        out_dir=subpath(output.history, parent=True),
    shell:
        "batchscale train --params {params.sections:q} {params.run} --data {input.data}"
        " --out-dir {params.out_dir} --threads {threads} > {log} 2>&1"
