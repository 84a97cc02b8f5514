"""Epoch timings for the claims about speed (C3, C9, C11), measured so that a shared machine's
slow spells do not masquerade as an effect of batch size or thread count.

The timing job times every (batch size, thread count) cell in rounds: each round runs one
epoch of every cell, and the claims' bootstrap resamples rounds ("repeats"). Timing one cell's
repeats back to back instead would put a burst of load from another tenant into all repeats
of whichever cell was running, where the bootstrap reads it as a stable property of that
batch size; in rounds it falls on one repeat of every cell, and shows as spread.
"""

from __future__ import annotations

import time
from collections.abc import Hashable

import torch

from batchscale.devices import synchronize
from batchscale.engine import Ensemble


class EpochTimer:
    """Times whole training epochs of one ensemble, each continuing where the last one ended
    (no evaluation is timed)."""

    def __init__(self, ensemble: Ensemble):
        self.ensemble = ensemble
        self.state = ensemble.fresh_state()

    def epoch_seconds(self) -> float:
        synchronize(self.ensemble.device)
        start = time.perf_counter()
        self.ensemble.train_epoch(self.state, self.ensemble.epoch_permutations(self.state))
        synchronize(self.ensemble.device)
        return time.perf_counter() - start


def interleaved_epoch_seconds(
    timers: dict[Hashable, EpochTimer], threads: dict[Hashable, int], warmup: int, repeats: int
) -> dict[Hashable, list[float]]:
    """Seconds per epoch of every timer: `warmup` untimed epochs each, then `repeats` rounds
    in which every timer runs one timed epoch with its own torch thread count.

    Within a round the timers run grouped by thread count (one switch per group), and the
    order inside a group is rotated from round to round, so no cell is always the first
    after a switch.
    """
    groups: dict[int, list[Hashable]] = {}
    for key in timers:
        groups.setdefault(threads[key], []).append(key)
    previous = torch.get_num_threads()
    seconds: dict[Hashable, list[float]] = {key: [] for key in timers}
    try:
        for count, keys in groups.items():
            torch.set_num_threads(count)
            for key in keys:
                for _ in range(warmup):
                    timers[key].epoch_seconds()
        for round_index in range(repeats):
            for count, keys in groups.items():
                torch.set_num_threads(count)
                shift = round_index % len(keys)
                for key in keys[shift:] + keys[:shift]:
                    seconds[key].append(timers[key].epoch_seconds())
    finally:
        torch.set_num_threads(previous)
    return seconds
