"""The `batchscale` command: one subcommand per workflow step (each Snakemake rule calls one).

Every subcommand reads its parameters with `--params` (a YAML file, or an inline JSON
mapping as the workflow passes it; repeat to layer files) and validates them before doing
any work. Bad input ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

from batchscale import __version__, config, provenance
from batchscale.allocator import tune_malloc
from batchscale.config import ConfigError
from batchscale.errors import DataError, UnsafeFileError

# `--params` values: files or inline JSON mappings, merged then validated.
load_params = config.load


def cmd_check(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    print(json.dumps(params, indent=2) if args.show else "parameters are valid")


def cmd_prepare(args: argparse.Namespace) -> None:
    from batchscale import data

    params = load_params(args.params)
    info = data.prepare(params["data"], Path(args.out))
    sizes = (info[f"x_{split}_shape"][0] for split in ("train", "val", "test"))
    print("wrote {}: {} train / {} val / {} test examples".format(args.out, *sizes))


def peak_memory_mb(device) -> dict:
    """This process's peak resident memory so far, and on CUDA the peak memory torch allocated
    on the device (None elsewhere), in MiB: what a job needs from a laptop or a SLURM node."""
    import resource

    import torch

    peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    cuda = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"peak_rss_mb": round(peak_rss_kib / 1024, 1), "peak_cuda_mb": cuda}


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def run_identity(
    params: dict, data_sha: str, lrs: list[float], batch_size: int, warmup_epochs: int, malladi: bool = False
) -> str:
    """Hash of everything that determines a run's numbers (device, ensemble strategy and
    timings aside: they change float rounding, not the maths). A user's own model counts with
    its file's SHA-256: a checkpoint of the model before an edit is never resumed."""
    from batchscale.model_factory import identity

    train = {k: v for k, v in params["train"].items() if k not in ("device", "ensemble")}
    lr = lrs[0] if len(lrs) == 1 else list(lrs)
    model = identity(params["model"])
    key = {"data": data_sha, "model": model, "train": train, "lr": lr, "batch_size": batch_size}
    if warmup_epochs:
        key["warmup_epochs"] = warmup_epochs
    if malladi:
        key["malladi"] = True
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cmd_train(args: argparse.Namespace) -> None:
    from batchscale import data, engine

    params = load_params(args.params)
    dataset = data.load(Path(args.data))
    _set_threads(args.threads)
    spec = _train_spec(args, params["train"], len(dataset.x_train))
    device = engine.resolve_device(params["train"]["device"])
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    identity = run_identity(
        params, dataset.sha256, args.lr, args.batch_size, args.warmup_epochs, args.malladi
    )
    ensemble = engine.Ensemble(params["model"], dataset, spec, device)
    started = time.perf_counter()
    state = engine.train(ensemble, checkpoint=out / "checkpoint.pt", identity=identity)
    summary = {
        "identity": identity,
        "batch_size": args.batch_size,
        # One LR: the run's; several (a job of the tuned sweep): every seed trained at each.
        "lr": args.lr[0] if len(args.lr) == 1 else None,
        "lrs": args.lr,
        "optimizer": {"name": spec.optimizer, "betas": list(spec.betas), "eps": spec.eps},
        "seeds": list(params["train"]["seeds"]),
        "device": str(device),
        "ensemble": ensemble.strategy_label,
        "threads": args.threads,
        "train_seconds": time.perf_counter() - started,
        **peak_memory_mb(device),
        "diverged_epoch": state.diverged_epoch.tolist(),
        "params": {k: params[k] for k in ("data", "model", "train")},
        "versions": provenance.software_versions(),
    }
    buffers = {"final": state.buffers, "best": state.best_buffers, "init": ensemble.initial_buffers}
    _write_run(out, state, spec, summary, ensemble.test_rows(state), buffers)


def _train_spec(args: argparse.Namespace, train: dict, num_train: int):
    """The ensemble job `batchscale train` was asked for, its options checked: every seed at
    every LR given (members ordered LR by LR)."""
    from batchscale import engine

    if args.batch_size > num_train:
        raise ConfigError(f"--batch-size: {args.batch_size} exceeds the training set ({num_train})")
    for lr in args.lr:
        if not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"--lr: must be a positive finite number, got {lr}")
    if len(set(args.lr)) < len(args.lr):
        raise ConfigError(f"--lr: the same learning rate twice ({' '.join(map(repr, args.lr))})")
    seeds = list(train["seeds"])
    return engine.TrainSpec(
        batch_size=args.batch_size,
        seeds=[seed for _ in args.lr for seed in seeds],
        lrs=[lr for lr in args.lr for _ in seeds],
        epochs=train["epochs"],
        warmup_epochs=args.warmup_epochs,
        warmup_start_lr=train["base_lr"],
        strategy=train["ensemble"],
        **optimizer_settings(train, args.batch_size, args.malladi),
    )


def optimizer_settings(train: dict, batch_size: int, malladi: bool = False) -> dict:
    """The TrainSpec fields of `train.optimizer`; with `malladi`, Adam's betas and eps as
    Malladi et al.'s rule sets them at `batch_size` (the LR it sets comes as --lr)."""
    from batchscale.scaling import malladi_betas_eps

    betas, eps = tuple(train["betas"]), train["eps"]
    if malladi:
        betas, eps = malladi_betas_eps(betas, eps, train["base_batch_size"], batch_size)
    return {
        "optimizer": train["optimizer"], "momentum": train["momentum"], "nesterov": train["nesterov"],
        "betas": betas, "eps": eps, "weight_decay": train["weight_decay"],
    }  # fmt: skip


def _write_run(out: Path, state, spec, summary: dict, test_rows: list[dict], buffers: dict) -> None:
    """A finished run's folder: weights, test losses, summary, and history.csv last (it is what
    marks the run complete for anyone reading the folder); the checkpoint goes. `buffers` holds
    each weight set's own buffers (BatchNorm's running statistics at the final, best, initial
    weights; empty dicts for a model without)."""
    import pandas as pd

    from batchscale.io import save_torch_atomic, write_csv_atomic, write_json_atomic

    history = pd.DataFrame(state.history)
    history.insert(0, "batch_size", spec.batch_size)
    save_torch_atomic(
        out / "weights.pt",
        {"seeds": spec.seeds, "lrs": spec.lrs, "final": state.params, "best": state.best, "init": state.init,
         "best_epoch": state.best_epoch.cpu(), "buffers": buffers},
    )  # fmt: skip
    write_csv_atomic(out / "test.csv", pd.DataFrame(test_rows))
    write_json_atomic(out / "summary.json", summary)
    write_csv_atomic(out / "history.csv", history)
    (out / "checkpoint.pt").unlink(missing_ok=True)


def cmd_time(args: argparse.Namespace) -> None:
    import pandas as pd

    from batchscale import data, engine, timing
    from batchscale.io import write_csv_atomic

    params = load_params(args.params)
    dataset = data.load(Path(args.data))
    train, settings = params["train"], params["timing"]
    device = engine.resolve_device(train["device"])
    # Snakemake may grant more threads than this machine has (`--cores 4` on 2 CPUs).
    most_threads = max(1, min(args.threads, len(os.sched_getaffinity(0))))
    cells = [(batch_size, threads) for threads in sorted({1, most_threads}) for batch_size in args.batch_size]
    timers = {}
    for batch_size, threads in cells:
        spec = engine.TrainSpec(
            batch_size=batch_size, seeds=[train["seeds"][0]], lrs=[train["base_lr"]],
            epochs=1, **optimizer_settings(train, batch_size),
        )  # fmt: skip
        timers[batch_size, threads] = timing.EpochTimer(
            engine.Ensemble(params["model"], dataset, spec, device)
        )
    seconds = timing.interleaved_epoch_seconds(
        timers, {cell: cell[1] for cell in cells}, settings["warmup_epochs"], settings["repeats"]
    )
    for batch_size in args.batch_size:
        rows = [
            {
                "batch_size": batch_size,
                "threads": threads,
                "device": str(device),
                "repeat": i,
                "epoch_seconds": s,
            }
            for (size, threads), times in seconds.items()
            if size == batch_size
            for i, s in enumerate(times)
        ]
        write_csv_atomic(Path(args.out_dir) / f"bs{batch_size}.csv", pd.DataFrame(rows))


def cmd_probe(args: argparse.Namespace) -> None:
    from batchscale import data, probe_runs
    from batchscale.io import write_csv_atomic

    params = load_params(args.params)
    _set_threads(args.threads)
    dataset = data.load(Path(args.data))
    run = probe_runs.load_run(Path(args.run_dir), params["model"], dataset)
    x, y = probe_runs.probe_subset(dataset, params["probes"]["examples"])
    out = Path(args.out_dir)
    write_csv_atomic(out / "sharpness.csv", probe_runs.sharpness_rows(run, x, y, params["probes"]))
    write_csv_atomic(out / "slices.csv", probe_runs.slice_rows(run, x, y, params["probes"]))
    write_csv_atomic(out / "noise.csv", probe_runs.noise_rows(run, x, y, params["probes"]))


def cmd_landscape(args: argparse.Namespace) -> None:
    import pandas as pd

    from batchscale import data, probe_runs
    from batchscale.io import write_csv_atomic

    params = load_params(args.params)
    _set_threads(args.threads)
    dataset = data.load(Path(args.data))
    settings = params["probes"]
    small = probe_runs.load_run(Path(args.small), params["model"], dataset)
    large = probe_runs.load_run(Path(args.large), params["model"], dataset)
    x, y = probe_runs.probe_subset(dataset, settings["examples"])
    out = Path(args.out_dir)
    points = settings["interpolation_points"]
    interpolation = probe_runs.interpolation_rows(small, large, dataset, x, y, points)
    write_csv_atomic(out / "interpolation.csv", interpolation)
    contours = [
        probe_runs.contour_rows(run, x, y, settings).assign(batch_size=batch_size)
        for run, batch_size in ((small, args.small_batch_size), (large, args.large_batch_size))
    ]
    write_csv_atomic(out / "contour.csv", pd.concat(contours, ignore_index=True))


def cmd_bench(args: argparse.Namespace) -> None:
    import torch

    from batchscale import bench, data, engine
    from batchscale.io import write_csv_atomic

    params = load_params(args.params)
    dataset = data.load(Path(args.data))
    _set_threads(min(args.threads, len(os.sched_getaffinity(0))))
    device = engine.resolve_device(params["train"]["device"])
    settings, train = params["bench"], params["train"]
    table = bench.benchmark(
        models=[{**params["model"], "name": name} for name in settings["models"]],
        data=dataset.to(device),
        batch_sizes=settings["batch_sizes"],
        members=len(train["seeds"]),
        repeats=settings["repeats"],
        lr=train["base_lr"],
        momentum=train["momentum"],
        device=device,
        optimizer=optimizer_settings(train, train["base_batch_size"]),
    )
    print(bench.format_table(table))
    if args.layouts_out:
        layouts = _thread_layouts(params, dataset, device, torch_threads=torch.get_num_threads())
        print(layouts.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
        write_csv_atomic(Path(args.layouts_out), layouts)
    write_csv_atomic(Path(args.out), table)


def _thread_layouts(params: dict, dataset, device, torch_threads: int):
    """The study's model at each bench batch size: T jobs x 1 thread against 1 job x T threads.
    Only on a CPU with 2 or more threads; an empty table otherwise (the report says why)."""
    import pandas as pd

    from batchscale import engine, thread_layout

    if device.type != "cpu" or torch_threads < 2:
        return pd.DataFrame(columns=thread_layout.COLUMNS)
    seeds, train = params["train"]["seeds"], params["train"]
    specs = [
        engine.TrainSpec(batch_size, list(seeds), [train["base_lr"]] * len(seeds), 1, train["momentum"])
        for batch_size in params["bench"]["batch_sizes"]
    ]
    return thread_layout.compare_layouts(
        params["model"], dataset, specs, threads=torch_threads, epochs=params["bench"]["repeats"]
    )


def cmd_aggregate(args: argparse.Namespace) -> None:
    from batchscale.aggregate import aggregate
    from batchscale.config import cells, expected_train_size, tuned_cells
    from batchscale.scaling import scaled_lr

    params = load_params(args.params)
    landscape = Path(args.landscape_dir) if args.landscape_dir else None
    train = params["train"]
    aggregate(
        cells(params),
        [Path(f) for f in args.timing],
        Path(args.out_dir),
        landscape_dir=landscape,
        num_train=expected_train_size(params["data"]),
        sweep=tuned_cells(params),
        linear_lr=lambda b: scaled_lr("linear", train["base_lr"], train["base_batch_size"], b),
    )


def cmd_claims(args: argparse.Namespace) -> None:
    import pandas as pd

    from batchscale import claims, tuned_analysis
    from batchscale.io import write_csv_atomic, write_json_atomic

    params = load_params(args.params)
    tables = Path(args.tables)
    runs = pd.read_csv(tables / "runs.csv")
    timing = pd.read_csv(tables / "timing.csv")
    # The tuned sweep (tuning.csv, with noise.csv): its two tables, header only without one.
    tuned = tuned_analysis.from_tables(tables, runs, params)
    tuned_analysis.write_tables(tuned, tables)
    decided = claims.decide_all(runs, timing, params, tuned)
    comparison = claims.article_comparison(runs, claims.Settings.from_params(params))
    write_csv_atomic(tables / "article_comparison.csv", comparison)
    write_json_atomic(Path(args.metrics), claims.headline_metrics(decided, runs))
    if args.study_out:
        write_csv_atomic(Path(args.study_out), decided)
    write_csv_atomic(Path(args.out), decided)


def cmd_report(args: argparse.Namespace) -> None:
    from batchscale.report import render

    params = load_params(args.params)
    render(
        notebook=Path(args.notebook),
        tables=Path(args.tables),
        claims=Path(args.claims),
        params=params,
        executed=Path(args.executed),
        out=Path(args.out),
        data_info=Path(args.data_info) if args.data_info else None,
        studies=[Path(path) for path in args.studies],
    )


def cmd_figures(args: argparse.Namespace) -> None:
    from batchscale import figures

    params = load_params(args.params)
    try:
        figures.write_figure_files(Path(args.tables), params, [Path(out) for out in args.out])
    except ValueError as exc:
        raise ConfigError(f"--out: {exc}") from None


def _data_commands(add) -> None:
    """check, prepare: the parameters and the data set."""
    p = add("check", cmd_check, "Validate parameters against the schema and cross-field rules.")
    p.add_argument("--show", action="store_true", help="print the parameters with defaults filled in")

    p = add(
        "prepare", cmd_prepare, "Generate the data set offline and write it as .npz (+ .json description)."
    )
    p.add_argument("--out", required=True, help="output .npz path, e.g. data/prepared/mnist1d.npz")


def _training_commands(add) -> None:
    """train, time, bench: training, epoch timings, the speed benchmark."""
    p = add("train", cmd_train, "Train all seeds at one batch size and learning rate as one ensemble.")
    p.add_argument("--batch-size", type=int, required=True, help="examples per step")
    p.add_argument(
        "--lr", type=float, nargs="+", required=True,
        help="peak learning rate (the grid's rules decide it); several: every seed trains at each "
        "(the tuned sweep)",
    )  # fmt: skip
    p.add_argument(
        "--warmup-epochs", type=int, default=0, help="ramp the LR up from train.base_lr over this many epochs"
    )
    p.add_argument(
        "--malladi", action="store_true",
        help="Adam's betas and eps scaled to the batch size by Malladi et al.'s rule (grid.lr_rules malladi)",
    )  # fmt: skip
    p.add_argument("--data", required=True, help="prepared .npz data file")
    p.add_argument(
        "--out-dir", required=True, help="run folder: history.csv, summary.json, weights.pt, test.csv"
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")

    p = add("time", cmd_time, "Time training epochs at each batch size, at 1 thread and at --threads.")
    p.add_argument("--batch-size", type=int, nargs="+", required=True, help="examples per step (one or more)")
    p.add_argument("--data", required=True, help="prepared .npz data file")
    p.add_argument(
        "--out-dir", required=True,
        help="folder for bs<B>.csv per batch size (batch_size, threads, device, repeat, epoch_seconds)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="the most threads to time with")

    p = add("bench", cmd_bench, "Time the naive loop and the engine; print ms per model-epoch and ratios.")
    p.add_argument("--data", required=True, help="prepared .npz data file")
    p.add_argument("--out", required=True, help="output CSV, e.g. reports/tables/bench.csv")
    p.add_argument(
        "--layouts-out",
        help="also compare --threads jobs x 1 thread with 1 job x --threads threads (CPU only) and "
        "write that table here, e.g. reports/tables/thread_layouts.csv",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="CPU threads for torch (capped at the CPUs available)"
    )


def _probe_commands(add) -> None:
    """probe, landscape: what the trained weights look like."""
    p = add("probe", cmd_probe, "Sharpness, 1-D loss slices and gradient noise scale of a run's members.")
    p.add_argument("--run-dir", required=True, help="run folder with weights.pt")
    p.add_argument("--data", required=True, help="prepared .npz data file")
    p.add_argument("--out-dir", required=True, help="folder for sharpness.csv, slices.csv and noise.csv")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")

    p = add("landscape", cmd_landscape, "Interpolate between two runs' solutions; 2-D contours around each.")
    p.add_argument("--small", required=True, help="run folder of the small-batch solution")
    p.add_argument("--large", required=True, help="run folder of the large-batch solution")
    p.add_argument("--small-batch-size", type=int, required=True, help="its batch size (labels the contour)")
    p.add_argument("--large-batch-size", type=int, required=True, help="its batch size (labels the contour)")
    p.add_argument("--data", required=True, help="prepared .npz data file")
    p.add_argument("--out-dir", required=True, help="folder for interpolation.csv and contour.csv")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")


def _table_commands(add) -> None:
    """aggregate, claims, report, figures: from the runs to the report."""
    p = add(
        "aggregate", cmd_aggregate, "Collect the grid's runs (from --params) and timings into tidy tables."
    )
    p.add_argument("--timing", nargs="*", default=[], help="timing CSVs from `batchscale time`")
    p.add_argument("--landscape-dir", help="folder written by `batchscale landscape`, if it ran")
    p.add_argument(
        "--out-dir", required=True,
        help="folder for history.csv, runs.csv, timing.csv, curves.csv, tuning.csv (the tuned sweep) ...",
    )  # fmt: skip

    p = add(
        "claims", cmd_claims,
        "Decide every claim from the tables; write claims.csv and metrics.json (and, in the tables "
        "folder, article_comparison.csv and the tuned rule's tuned_lr.csv and critical_batch.csv).",
    )  # fmt: skip
    p.add_argument(
        "--tables", required=True,
        help="folder written by `batchscale aggregate` (runs, timing, tuning and noise tables)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="claims CSV, e.g. reports/claims.csv")
    p.add_argument("--metrics", required=True, help="metrics JSON, e.g. reports/metrics.json")
    p.add_argument(
        "--study-out",
        help="a second copy of the claims CSV kept with the study's results (results/<data>-<model>/"
        "claims.csv), so the report can say which claims hold in which study",
    )

    p = add("report", cmd_report, "Execute the report notebook with papermill and export it to HTML.")
    p.add_argument("--notebook", required=True, help="template notebook (workflow/notebooks/report.ipynb)")
    p.add_argument("--tables", required=True, help="folder of tables")
    p.add_argument("--claims", required=True, help="claims CSV")
    p.add_argument("--executed", required=True, help="where to keep the executed notebook")
    p.add_argument("--out", required=True, help="self-contained HTML report")
    p.add_argument("--data-info", help="the prepared data set's .json description (sizes shown in the setup)")
    p.add_argument(
        "--studies",
        nargs="*",
        default=[],
        help="claims CSVs of every study run in this folder (results/<data>-<model>/claims.csv), "
        "compared side by side",
    )

    p = add("figures", cmd_figures, "Draw the report's main figures as PNG files (for snakemake --report).")
    p.add_argument("--tables", required=True, help="folder of tables (reports/tables)")
    p.add_argument(
        "--out",
        nargs="+",
        required=True,
        help="files named for their figure: learning_curves.png, or learning_curves.rst (its caption)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchscale",
        description="Measure how batch size and learning-rate scaling change neural-network training.",
    )
    parser.add_argument("--version", action="version", version=f"batchscale {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--params",
            action="append",
            metavar="FILE|JSON",
            help="parameters: a YAML file or an inline JSON mapping; repeat to layer them "
            "(later wins). Default: params.yaml",
        )
        p.set_defaults(func=func)
        return p

    for add_commands in (_data_commands, _training_commands, _probe_commands, _table_commands):
        add_commands(add)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before any tensor exists: glibc's defaults turn every few-MiB tensor into page faults.
    tune_malloc()
    try:
        args.func(args)
    except (ConfigError, DataError, UnsafeFileError) as exc:
        print(f"batchscale {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
