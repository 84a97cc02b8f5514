"""The probes applied to trained runs: what the `probe` and `landscape` workflow steps compute.

`probes` holds the mathematics for one model; this module loads a run's saved ensemble,
loops over its members and turns the answers into tidy tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from batchscale import probes
from batchscale.data import Dataset
from batchscale.io import load_torch
from batchscale.models import build_model

WEIGHT_SETS = ("best", "final")  # best: the epoch of minimum validation loss


@dataclass(frozen=True)
class TrainedRun:
    """A run's saved ensemble: the weightless module and the stacked weight sets."""

    base: nn.Module
    seeds: list[int]
    weights: dict[str, dict[str, torch.Tensor]]
    buffers: dict[str, torch.Tensor]

    def member(self, which: str, index: int) -> tuple[dict, dict]:
        """(params, buffers) of one member from weight set `which` (best, final or init)."""
        return (
            probes.member_params(self.weights[which], index),
            probes.member_params(self.buffers.get(which, {}), index),
        )


def load_run(run_dir: Path, model_params: dict, data: Dataset) -> TrainedRun:
    saved = load_torch(Path(run_dir) / "weights.pt")
    # Every probe measures the trained network as it is used: in eval mode, BatchNorm on its
    # running statistics (those of the weight set probed) and no dropout.
    base = build_model(model_params, data.in_features, data.num_classes).to("meta").eval()
    weights = {which: saved[which] for which in ("best", "final", "init")}
    buffers = saved.get("buffers") or {}
    # Runs written before models had buffers saved one flat (empty) dict.
    buffers = buffers if set(buffers) <= set(weights) else {which: buffers for which in weights}
    return TrainedRun(base, list(saved["seeds"]), weights, buffers)


def probe_subset(data: Dataset, examples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed training subset every probe evaluates on: the first `examples` examples."""
    return data.x_train[:examples], data.y_train[:examples]


def alphas(radius: float, points: int) -> np.ndarray:
    return np.linspace(-radius, radius, points)


def sharpness_rows(run: TrainedRun, x: torch.Tensor, y: torch.Tensor, settings: dict) -> pd.DataFrame:
    """Per member and weight set: training loss, top Hessian eigenvalue, epsilon-sharpness."""
    rows = []
    for index, seed in enumerate(run.seeds):
        for which in WEIGHT_SETS:
            params, buffers = run.member(which, index)
            eigen = probes.top_hessian_eigenvalue(
                run.base, params, buffers, x, y,
                iters=settings["hessian_iters"], tol=settings["hessian_tol"], generator=seed,
            )  # fmt: skip
            sharpness = probes.epsilon_sharpness(
                run.base, params, buffers, x, y,
                epsilon=settings["epsilon"], steps=settings["ascent_steps"], generator=seed,
            )  # fmt: skip
            rows.append(
                {
                    "seed": seed,
                    "weights": which,
                    "train_loss": probes.loss_at(run.base, params, buffers, x, y),
                    "top_eigenvalue": eigen.value,
                    "eig_iterations": eigen.iterations,
                    "eig_converged": eigen.converged,
                    "eps_sharpness": sharpness,
                }
            )
    return pd.DataFrame(rows)


def slice_rows(run: TrainedRun, x: torch.Tensor, y: torch.Tensor, settings: dict) -> pd.DataFrame:
    """Li et al.'s 1-D filter-normalised slice of the training loss around each member's
    best weights; the direction's random numbers are the same for every run."""
    grid = alphas(settings["slice_radius"], settings["slice_points"])
    rows = []
    for index, seed in enumerate(run.seeds):
        params, buffers = run.member("best", index)
        direction = probes.filter_normalized_direction(params, settings["direction_seed"])
        losses = probes.slice_1d(run.base, params, buffers, x, y, direction, grid)
        rows += [{"seed": seed, "alpha": a, "train_loss": loss} for a, loss in zip(grid, losses, strict=True)]
    return pd.DataFrame(rows)


def noise_rows(run: TrainedRun, x: torch.Tensor, y: torch.Tensor, settings: dict) -> pd.DataFrame:
    """McCandlish et al.'s simple noise scale B_simple = tr(Sigma) / |G|^2 of every member at
    its initial, best and final weights: both parts averaged over consecutive batches of
    `noise_batch_size` examples of the probe subset, then divided (their estimator)."""
    size = settings["noise_batch_size"]
    batches = [(x[i : i + size], y[i : i + size]) for i in range(0, len(x) - size + 1, size)]
    rows = []
    for index, seed in enumerate(run.seeds):
        for which in ("init", *WEIGHT_SETS):
            params, buffers = run.member(which, index)
            parts = [
                probes.noise_scale_parts(probes.per_example_gradients(run.base, params, buffers, xb, yb))
                for xb, yb in batches
            ]
            trace_sigma = float(np.mean([p.trace_sigma for p in parts]))
            grad_sq = float(np.mean([p.grad_sq for p in parts]))
            rows.append(
                {
                    "seed": seed,
                    "weights": which,
                    "trace_sigma": trace_sigma,
                    "grad_sq": grad_sq,
                    "b_simple": trace_sigma / grad_sq if grad_sq > 0 else float("nan"),
                }
            )
    return pd.DataFrame(rows)


def interpolation_rows(
    small: TrainedRun, large: TrainedRun, data: Dataset, x: torch.Tensor, y: torch.Tensor, points: int
) -> pd.DataFrame:
    """Keskar et al.'s 1-D plot: train and validation loss on the line from each seed's
    small-batch solution (alpha 0) to its large-batch one (alpha 1), best weights."""
    grid = np.linspace(-0.5, 1.5, points)
    rows = []
    for index, seed in enumerate(small.seeds):
        a, buffers = small.member("best", index)
        b, _ = large.member("best", index)
        train = probes.interpolate(small.base, a, b, buffers, x, y, grid)
        val = probes.interpolate(small.base, a, b, buffers, data.x_val, data.y_val, grid)
        rows += [
            {"seed": seed, "alpha": alpha, "train_loss": t, "val_loss": v}
            for alpha, t, v in zip(grid, train, val, strict=True)
        ]
    return pd.DataFrame(rows)


def contour_rows(run: TrainedRun, x: torch.Tensor, y: torch.Tensor, settings: dict) -> pd.DataFrame:
    """2-D filter-normalised slice of the training loss around the first member's best weights."""
    grid = alphas(settings["slice_radius"], settings["contour_points"])
    params, buffers = run.member("best", 0)
    d1 = probes.filter_normalized_direction(params, settings["direction_seed"])
    d2 = probes.filter_normalized_direction(params, settings["direction_seed"] + 1)
    surface = probes.slice_2d(run.base, params, buffers, x, y, d1, d2, grid, grid)
    return pd.DataFrame(
        [
            {"seed": run.seeds[0], "alpha": a, "beta": b, "train_loss": surface[i, j]}
            for i, a in enumerate(grid)
            for j, b in enumerate(grid)
        ]
    )
