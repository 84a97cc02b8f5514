# One job per distinct training run of the grid (batch size, learning rate, warm-up); all
# seeds train as one ensemble. Rules that agree at a batch size (all do at the base batch
# size) share the job.
rule train:
    input:
        data=PREPARED,
    output:
        history="results/runs/{run}/history.csv",
        summary="results/runs/{run}/summary.json",
        weights="results/runs/{run}/weights.pt",
    log:
        "logs/train/{run}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1500,
        runtime=120,
    params:
        sections=sections_json("data", "model", "train"),
        run=lambda wildcards: run_arguments(wildcards.run),
        out_dir=subpath(output.history, parent=True),
    shell:
        "batchscale train --params {params.sections:q} {params.run} --data {input.data}"
        " --out-dir {params.out_dir} --threads {threads} > {log} 2>&1"
