# The report's main figures as files, each a report item of Snakemake's own report
# (`snakemake --report reports/snakemake-report.zip`): drawn by `batchscale figures` with the
# functions the report notebook calls. File stem -> (report category, title); the caption of
# each is workflow/report/figures/<stem>.rst.
FIGURES = {
    "learning_curves": ("Learning curves", "training and validation loss per epoch"),
    "val_accuracy": ("Learning curves", "validation accuracy per epoch"),
    "c1_train_loss_auc": ("C01 training loss", "mean training loss vs batch size"),
    "c2_min_val_loss": ("C02 validation loss", "min. validation loss vs batch size"),
    "c3_epoch_seconds": ("C03 time per epoch", "seconds per epoch vs batch size"),
    "c4_best_epoch": ("C04 epochs to the minimum", "epoch of the min. validation loss"),
    "c5_sharpness": ("C05 sharpness", "Hessian eigenvalue and epsilon-sharpness"),
    "c6_distance": ("C06 distance from init", "final weights' distance from init"),
    "c7_article_vs_ours": ("C07-C08 linear scaling", "the article vs ours"),
    "c9_time_to_min": ("C09 wall-clock time", "seconds to the minimum validation loss"),
    "c10_update_norm": ("C10 update size", "weight-update norm per epoch"),
    "c10_grad_competition": ("C10 update size", "gradient competition within a batch"),
    "c11_parallel_speedup": ("C11 parallel hardware", "speed-up from all threads"),
    "c12_slices": ("C12 loss landscape", "1-D filter-normalised loss slices"),
    "rules_compared": ("Beyond the article", "LR-scaling rules compared"),
    "steps_to_target": ("Beyond the article", "steps to a target validation loss"),
    "noise_scale": ("Beyond the article", "gradient noise scale"),
    "bench": ("Speed", "naive loop vs the ensemble engine"),
}
if LANDSCAPE_PAIR:
    FIGURES["c12_interpolation"] = ("C12 loss landscape", "interpolation")
    FIGURES["c12_contour"] = ("C12 loss landscape", "2-D loss contours")


rule figures:
    input:
        tables=rules.aggregate.output,
        comparison=rules.claims.output.comparison,
        bench=rules.bench.output,
    output:
        [
            report(
                f"reports/figures/{name}.png",
                caption=f"../report/figures/{name}.rst",
                category=category,
                labels={"figure": title},
            )
            for name, (category, title) in FIGURES.items()
        ],
    log:
        "logs/figures.log",
    conda:
        ENV
    params:
        sections=sections_json("stats", "train"),
        tables=subpath(input.comparison, parent=True),
    shell:
        "batchscale figures --params {params.sections:q} --tables {params.tables}"
        " --out {output} > {log} 2>&1"
