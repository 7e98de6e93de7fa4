"""Server processes: a free local port, waiting until one answers, stopping it with its workers,
and keeping freed memory in a long-running one.

Shared by the benchmarks and the tests that start real servers (``bentoml serve``, ``mlflow
server``, ``prefect server``, uvicorn) and by the service; nothing here knows which server it runs.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


class ServerStartError(RuntimeError):
    """A server exited or did not answer in time; the message ends with its log's tail."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    """Poll ``url`` until it answers 200.

    Raises:
        ServerStartError: ``proc`` exited first, or ``timeout_s`` passed; with ``log``'s tail.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(
                f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:  # refused, reset, timeout, or an HTTP error status
            pass
        time.sleep(0.5)
    raise ServerStartError(f"{url} not up after {timeout_s:g} s:\n{log.read_text()[-4000:]}")


def stop_tree(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """Terminate ``proc`` and every process below it (servers run workers in their own groups)."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    # workers the server did not take down with it: ask, then force
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        child.kill()
    psutil.wait_procs(alive, timeout=5)


def keep_freed_memory(keep_mb: int) -> bool:
    """Let glibc keep up to ``keep_mb`` MiB of freed memory instead of returning it at once.

    For a server whose requests allocate many big arrays: each 512² request of the service
    allocates dozens of 0.3-7 MB arrays (decoded views, tiles, probabilities, overlay). glibc
    maps arrays that big afresh and unmaps them on free, so every request paid kernel page
    faults to zero new pages: ~5 of ~105 CPU-ms per request, 1-2 with this.
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
