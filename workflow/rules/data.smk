rule prepare_data:
    input:
        # Your own data set (data.name: npz): editing the file rebuilds what depends on it.
        [PARAMS["data"]["path"]] if PARAMS["data"]["name"] == "npz" else [],
    output:
        npz=PREPARED,
        info=PREPARED.replace(".npz", ".json"),
    log:
        "logs/prepare_data.log",
    conda:
        ENV
    params:
        sections=sections_json("data"),
    shell:
        "batchscale prepare --params {params.sections:q} --out {output.npz} > {log} 2>&1"


# A named target for `dvc repro`'s data stage: `snakemake data`.
rule data:
    input:
        rules.prepare_data.output,
