"""glibc's malloc, set for a process that frees and reallocates tensors of a few MiB every step.

By default glibc serves every allocation above its mmap threshold (128 KiB, raised
dynamically up to the largest block freed so far) with a fresh `mmap` and returns it with
`munmap` when freed, and gives the top of the heap back to the kernel once 2x that much is
free there. A training step allocates and frees activations and gradients of 0.5-5 MB
hundreds of times a second, so each one can come back as new zeroed pages: page faults, not
arithmetic. What this costs and what the setting saves is measured in docs/decisions.md
("glibc's malloc").

PyTorch's CPU tuning guide recommends swapping in jemalloc or tcmalloc with LD_PRELOAD; that
needs a system library installed and an environment variable set before the process starts,
which neither a `pip install` nor a Snakemake rule can promise. `mallopt` is glibc's own
interface for the same two settings and works from inside the process, so the `batchscale`
command calls it first thing.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap and are reused; 32 MiB is glibc's largest allowed
# value on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX). Fixing it also stops the dynamic rule.
MMAP_THRESHOLD = 32 * 2**20
# Free memory kept at the top of the heap before it is given back to the kernel.
TRIM_THRESHOLD = 512 * 2**20
# A user's own malloc settings win over ours.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def tune_malloc() -> bool:
    """Set glibc's mmap and trim thresholds for this process; True when both took effect.

    Does nothing (False) off Linux, on a C library other than glibc (musl, macOS), or when the
    environment already sets malloc's thresholds.
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
