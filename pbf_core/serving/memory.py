"""Memory of a long-running serving process: keep freed heap for the next request."""

from __future__ import annotations


def keep_freed_memory(keep_mb: int) -> bool:
    """Let glibc keep up to ``keep_mb`` MiB of freed memory instead of returning it at once.

    For a server whose requests allocate many big arrays: each 512² request of the service
    allocates dozens of 0.3-7 MB arrays (decoded views, tiles, probabilities, overlay). glibc
    maps arrays that big afresh and unmaps them on free, so every request pays kernel page
    faults to zero new pages; kept in the heap, they are reused instead.
    Allocations up to 64 MiB then come from the heap; the heap keeps at most ``keep_mb`` freed.
    No-op (False) on other C libraries or with ``keep_mb`` 0.
    """
    import ctypes
    import ctypes.util
    import platform

    if keep_mb <= 0 or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mmap_bytes = min(64, keep_mb) * 1024**2
    return bool(
        libc.mallopt(m_mmap_threshold, mmap_bytes)
        and libc.mallopt(m_trim_threshold, keep_mb * 1024**2)
    )
