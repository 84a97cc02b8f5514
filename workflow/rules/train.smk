# One job per (LR-scaling rule x batch size); all seeds of the cell train as one ensemble.
rule train:
    input:
        data=PREPARED,
    output:
        history="results/runs/{rule}/bs{batch_size}/history.csv",
        summary="results/runs/{rule}/bs{batch_size}/summary.json",
        weights="results/runs/{rule}/bs{batch_size}/weights.pt",
    log:
        "logs/train/{rule}_bs{batch_size}.log",
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
        "batchscale train --params {params.sections:q} --rule {wildcards.rule}"
        " --batch-size {wildcards.batch_size} --data {input.data} --out-dir {params.out_dir}"
        " --threads {threads} > {log} 2>&1"
