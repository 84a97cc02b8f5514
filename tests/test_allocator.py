"""glibc's malloc settings (allocator.py), checked on the real C library in a fresh process."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

# Allocates 4 MiB with the C library's own malloc and prints whether tune_malloc took effect
# and how many blocks malloc served with mmap for it (glibc's mallinfo2, 2.33 and later).
PROBE = """
import ctypes, sys
from batchscale.allocator import tune_malloc

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
tuned = tune_malloc() if sys.argv[1] == "tune" else None
before = libc.mallinfo2().hblks
block = libc.malloc(4 * 2**20)
mapped = libc.mallinfo2().hblks - before
libc.free(block)
print(tuned, mapped)
"""


def run_probe(mode: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_a_few_mib_come_from_the_heap_once_malloc_is_tuned():
    assert run_probe("default") == "None 1"  # glibc's default: a fresh mmap for 4 MiB
    assert run_probe("tune") == "True 0"


def test_the_users_own_malloc_settings_win():
    assert run_probe("tune", MALLOC_TRIM_THRESHOLD_="1000000") == "False 1"
