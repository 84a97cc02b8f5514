"""The timing job's rounds (timing.py): every cell is timed once per round, real epochs."""

from __future__ import annotations

import torch

from batchscale.engine import Ensemble, TrainSpec
from batchscale.timing import EpochTimer, interleaved_epoch_seconds

from conftest import MODELS, tiny_dataset


class RecordingTimer(EpochTimer):
    """A real EpochTimer that also notes when it ran, and at how many torch threads."""

    def __init__(self, ensemble: Ensemble, key, log: list):
        super().__init__(ensemble)
        self.key, self.log = key, log

    def epoch_seconds(self) -> float:
        self.log.append((self.key, torch.get_num_threads()))
        return super().epoch_seconds()


def test_every_cell_is_timed_once_per_round_at_its_own_thread_count():
    data = tiny_dataset()
    log: list = []
    cells = [(batch_size, threads) for threads in (1, 2) for batch_size in (8, 16, 32)]
    timers = {
        cell: RecordingTimer(
            Ensemble(MODELS[0], data, TrainSpec(cell[0], [0], [0.05], 1, 0.9), torch.device("cpu")), cell, log
        )
        for cell in cells
    }
    before = torch.get_num_threads()
    seconds = interleaved_epoch_seconds(timers, {cell: cell[1] for cell in cells}, warmup=1, repeats=3)

    assert torch.get_num_threads() == before
    assert all(len(times) == 3 and min(times) > 0 for times in seconds.values())
    assert all(timer.state.epoch == 1 + 3 for timer in timers.values())  # each went on from its last epoch
    assert all(threads == key[1] for key, threads in log)
    warmup, rounds = log[: len(cells)], log[len(cells) :]
    assert sorted(warmup) == sorted((cell, cell[1]) for cell in cells)
    for r in range(3):  # each round holds every cell once, grouped by thread count...
        round_keys = [key for key, _ in rounds[r * len(cells) : (r + 1) * len(cells)]]
        assert sorted(round_keys) == sorted(cells)
        assert [threads for _, threads in round_keys] == [1, 1, 1, 2, 2, 2]
    # ...and the first cell after each thread switch changes from round to round.
    firsts = [rounds[r * len(cells)][0] for r in range(3)]
    assert len(set(firsts)) == 3
