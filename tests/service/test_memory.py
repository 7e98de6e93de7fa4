"""Heap tuning of the serving processes: freed big arrays stay in the heap for the next request."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pbf_core.serving.memory import keep_freed_memory

_HEAP = """
import ctypes, sys
import numpy as np
from pbf_core.serving.memory import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory(int(sys.argv[1]))
a = np.ones(40 * 1024**2 // 8)  # 40 MiB: above glibc's largest automatic mmap threshold
mapped = libc.mallinfo2().hblkhd  # bytes in chunks mapped on their own
del a
kept = libc.mallinfo2().fordblks  # free bytes the heap keeps for the next allocation
print(applied, mapped // 2**20, kept // 2**20)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc allocator tuning")
def test_keep_freed_memory_keeps_big_arrays_in_the_heap():
    def heap(keep_mb: int) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", _HEAP, str(keep_mb)], capture_output=True, text=True, timeout=60
        )
        if "mallinfo2" in done.stderr:
            pytest.skip("C library without mallinfo2 (not glibc >= 2.33)")
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    applied, mapped, kept = heap(0)
    assert applied == "False"
    assert int(mapped) >= 40 and int(kept) < 40  # mapped afresh, returned on free
    applied, mapped, kept = heap(256)
    assert applied == "True"
    assert int(mapped) < 40 and int(kept) >= 40  # from the heap, kept after free


def test_keep_freed_memory_is_off_at_zero():
    assert keep_freed_memory(0) is False
