# One job per distinct training run of the grid (batch size, learning rate, warm-up); all
# seeds train as one ensemble. Rules that agree at a batch size (all do at the base batch
# size) share the job. The tuned rule's LRs at a batch size that no other rule trains form
# one job (every seed at each LR: seeds x LRs members).
rule train:
    input:
        data=PREPARED,
        model=MODEL_FILES,
    output:
        history=f"{RESULTS}/runs/{{run}}/history.csv",
        summary=f"{RESULTS}/runs/{{run}}/summary.json",
        weights=f"{RESULTS}/runs/{{run}}/weights.pt",
        test=f"{RESULTS}/runs/{{run}}/test.csv",
    log:
        f"logs/{STUDY}/train/{{run}}.log",
    # The costliest jobs first (smaller batches, and the tuned sweep's jobs of several LRs):
    # they would otherwise be the long tail that one core works through while the others wait.
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
