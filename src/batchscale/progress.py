"""Progress of a training job: a tqdm bar on a terminal, plain log lines everywhere else.

Snakemake sends each job's output to its log file under logs/, and a SLURM job writes to a
file too; a bar redrawn with carriage returns would fill those with noise, so off a
terminal each epoch is one line that reads well in `--show-failed-logs` and `tail -f`.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


class EpochProgress:
    """Epochs done out of `total`, with the best validation loss so far."""

    def __init__(self, total: int, desc: str = "train", stream: TextIO | None = None,
                 interactive: bool | None = None):  # fmt: skip
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.bar = (
            tqdm(total=total, desc=desc, unit="epoch", file=self.stream, dynamic_ncols=True, leave=True)
            if self.interactive
            else None
        )

    def note(self, message: str) -> None:
        """A one-off message (resuming, a warning) that must not be overdrawn by the bar."""
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def epoch(self, epoch: int, best_val: float, line: str) -> None:
        """Epoch `epoch` is done: move the bar there, or print the epoch's full line."""
        if self.bar is None:
            print(line, file=self.stream, flush=True)
            return
        self.bar.update(epoch - self.bar.n)
        self.bar.set_postfix_str(f"best val {best_val:.4f}", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> EpochProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
