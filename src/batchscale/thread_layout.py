"""How to spend a machine's CPU threads on training jobs: several 1-thread jobs side by
side, or one job at a time with every thread?

Small models leave most of a thread idle between tiny kernels, so intra-op parallelism
helps little, while independent jobs scale almost perfectly until memory bandwidth runs out.
This measures both layouts on the same work (`jobs` ensembles, each `epochs` epochs) in one
session, so the ratio between them is what a noisy machine cannot fake. Snakemake's train
rule asks for `threads: 1` on the strength of this measurement (see the report's Speed
section); a user with other hardware can rerun it with `batchscale bench`.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import pandas as pd
import torch

from batchscale import engine
from batchscale.allocator import tune_malloc
from batchscale.data import Dataset

COLUMNS = ["model", "batch_size", "layout", "jobs", "threads", "seconds", "ms_per_model_epoch",
           "speedup_vs_one_job"]  # fmt: skip


def _epochs_in_one_job(model_params: dict, data: Dataset, spec: engine.TrainSpec, epochs: int,
                       threads: int, barrier=None) -> tuple[float, float]:  # fmt: skip
    """Train `epochs` epochs with `threads` threads after one untimed warm-up epoch; the
    (start, end) of the timed part. With a barrier, every job starts timing together."""
    torch.set_num_threads(threads)
    ensemble = engine.Ensemble(model_params, data, spec, torch.device("cpu"))
    state = ensemble.fresh_state()
    ensemble.train_epoch(state, ensemble.epoch_permutations(state))
    if barrier is not None:
        barrier.wait()
    start = time.perf_counter()
    for _ in range(epochs):
        ensemble.train_epoch(state, ensemble.epoch_permutations(state))
    return start, time.perf_counter()


def _job_in_subprocess(args) -> tuple[float, float]:
    return _epochs_in_one_job(*args)


def compare_layouts(model_params: dict, data: Dataset, specs: list[engine.TrainSpec], threads: int,
                    epochs: int) -> pd.DataFrame:  # fmt: skip
    """For each spec (one per batch size): the wall time of `threads` jobs run as `threads` x
    1-thread processes at once, against the same jobs one after another in this process with
    `threads` threads each."""
    jobs = threads
    # One pool for every spec: a spawned worker takes over a second to import torch, which
    # would otherwise be paid again for each batch size (outside the timed spans, but inside
    # the bench's whole-machine step).
    # Spawned, not forked: the jobs run in interpreters of their own, as Snakemake starts them,
    # with malloc set as the `batchscale` command sets it.
    context = mp.get_context("spawn")
    with context.Manager() as manager, context.Pool(jobs, initializer=tune_malloc) as pool:
        parallel = []
        for spec in specs:
            barrier = manager.Barrier(jobs)
            spans = pool.map(_job_in_subprocess, [(model_params, data, spec, epochs, 1, barrier)] * jobs)
            # perf_counter is CLOCK_MONOTONIC on Linux: comparable across processes on one machine.
            parallel.append(max(end for _, end in spans) - min(start for start, _ in spans))
    frames = []
    for spec, together in zip(specs, parallel, strict=True):
        sequential = _one_after_another(model_params, data, spec, epochs, threads, jobs)
        frames.append(_layout_rows(model_params, spec, jobs, threads, epochs, together, sequential))
    return pd.concat(frames, ignore_index=True)


def _one_after_another(model_params: dict, data: Dataset, spec: engine.TrainSpec, epochs: int,
                       threads: int, jobs: int) -> float:  # fmt: skip
    """Seconds for `jobs` jobs run one at a time in this process with `threads` threads."""
    previous = torch.get_num_threads()
    try:
        return sum(
            end - start
            for start, end in (
                _epochs_in_one_job(model_params, data, spec, epochs, threads) for _ in range(jobs)
            )
        )
    finally:
        torch.set_num_threads(previous)


def _layout_rows(model_params: dict, spec: engine.TrainSpec, jobs: int, threads: int, epochs: int,
                 parallel: float, sequential: float) -> pd.DataFrame:  # fmt: skip
    model_epochs = jobs * epochs * len(spec.seeds)
    layouts = {f"{jobs} jobs x 1 thread": parallel, f"1 job x {threads} threads": sequential}
    return pd.DataFrame(
        columns=COLUMNS,
        data=[
            {
                "model": model_params["name"],
                "batch_size": spec.batch_size,
                "layout": layout,
                "jobs": jobs,
                "threads": threads,
                "seconds": seconds,
                "ms_per_model_epoch": 1000 * seconds / model_epochs,
                "speedup_vs_one_job": sequential / seconds,
            }
            for layout, seconds in layouts.items()
        ],
    )
