# Probes of each trained run (fan-out per run, cached like training): sharpness of every
# member's best and final weights (C5), 1-D filter-normalised loss slices (C12) and the
# gradient noise scale at the initial, best and final weights (McCandlish et al.).
rule probe:
    input:
        weights=f"{RESULTS}/runs/{{run}}/weights.pt",
        data=PREPARED,
        model=MODEL_FILES,
    output:
        sharpness=f"{RESULTS}/probes/{{run}}/sharpness.csv",
        slices=f"{RESULTS}/probes/{{run}}/slices.csv",
        noise=f"{RESULTS}/probes/{{run}}/noise.csv",
    log:
        f"logs/{STUDY}/probe/{{run}}.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1500,
        runtime=60,
        cpu_jobs=1,
    params:
        sections=sections_json("data", "model", "probes"),
        run_dir=subpath(input.weights, parent=True),
        out_dir=subpath(output.sharpness, parent=True),
    shell:
        "batchscale probe --params {params.sections:q} --run-dir {params.run_dir}"
        " --data {input.data} --out-dir {params.out_dir} --threads {threads} > {log} 2>&1"


# Keskar's interpolation between the smallest- and largest-batch solutions and a 2-D
# contour around each (C12); only when the grid has two batch sizes under one rule.
if LANDSCAPE_PAIR:

    rule landscape:
        input:
            small=f"{LANDSCAPE_PAIR[0].run_dir}/weights.pt",
            large=f"{LANDSCAPE_PAIR[1].run_dir}/weights.pt",
            data=PREPARED,
            model=MODEL_FILES,
        output:
            interpolation=f"{RESULTS}/landscape/interpolation.csv",
            contour=f"{RESULTS}/landscape/contour.csv",
        log:
            f"logs/{STUDY}/landscape.log",
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=1500,
            runtime=60,
            cpu_jobs=1,
        params:
            sections=sections_json("data", "model", "probes"),
            small=subpath(input.small, parent=True),
            large=subpath(input.large, parent=True),
            small_batch_size=LANDSCAPE_PAIR[0].batch_size,
            large_batch_size=LANDSCAPE_PAIR[1].batch_size,
            out_dir=subpath(output.interpolation, parent=True),
        shell:
            "batchscale landscape --params {params.sections:q} --small {params.small}"
            " --large {params.large} --small-batch-size {params.small_batch_size}"
            " --large-batch-size {params.large_batch_size} --data {input.data}"
            " --out-dir {params.out_dir} --threads {threads} > {log} 2>&1"
