# One job per distinct (batch size, learning rate) of the grid; all seeds train as one
# ensemble. Rules that agree at a batch size (all do at the base batch size) share the job.
rule train:
    input:
        data=PREPARED,
    output:
        history="results/runs/bs{batch_size}_lr{lr}/history.csv",
        summary="results/runs/bs{batch_size}_lr{lr}/summary.json",
        weights="results/runs/bs{batch_size}_lr{lr}/weights.pt",
    log:
        "logs/train/bs{batch_size}_lr{lr}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1500,
        runtime=120,
    params:
        sections=sections_json("data", "model", "train"),
        out_dir=subpath(output.history, parent=True),
    shell:
        "batchscale train --params {params.sections:q} --batch-size {wildcards.batch_size}"
        " --lr {wildcards.lr} --data {input.data} --out-dir {params.out_dir}"
        " --threads {threads} > {log} 2>&1"
