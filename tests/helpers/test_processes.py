"""Server process helpers: free port, readiness wait, stopping a process tree."""

from __future__ import annotations

import socket
import subprocess
import sys

import psutil
import pytest

from helpers.processes import ServerStartError, free_port, stop_tree, wait_ready


def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_wait_ready_then_stop_tree_kills_children(tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    # a parent whose child is the HTTP server, like a server with worker processes
    child = f"import subprocess,sys; subprocess.run([sys.executable,'-m','http.server','{port}'])"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", child], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}/", proc, log, timeout_s=30)
        kids = psutil.Process(proc.pid).children(recursive=True)
        assert kids
    finally:
        stop_tree(proc)
    assert proc.poll() is not None
    assert not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in kids)


def test_wait_ready_reports_an_exited_server_with_its_log(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("boom: port in use\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(ServerStartError, match=r"exited with 3:\n.*boom: port in use"):
        wait_ready(f"http://127.0.0.1:{free_port()}/", proc, log, timeout_s=5)


def test_wait_ready_times_out_naming_the_url(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    url = f"http://127.0.0.1:{free_port()}/"
    try:
        with pytest.raises(ServerStartError, match="not up after 1 s"):
            wait_ready(url, proc, log, timeout_s=1)
    finally:
        stop_tree(proc)
