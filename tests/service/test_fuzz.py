"""The real service under a generated corpus of hostile requests (:mod:`fuzz_corpus`, 300+ cases).

Every request goes over a raw socket, exactly as built (lying lengths, odd headers and paths
included). Each must be answered, within the time limit, with a status below 500; afterwards the
service still segments a valid layer.
"""

from __future__ import annotations

import contextlib
import socket
from urllib.parse import urlsplit

import httpx
import pytest
from fuzz_corpus import Case, corpus
from service_support import triplet_files

pytestmark = pytest.mark.integration

CASES = corpus()
ANSWER_S = 60  # a hang is an answer slower than this


def send_raw(server: str, case: Case) -> tuple[int, bytes]:
    """``case`` sent over one connection; the final status code and the answer's bytes."""
    url = urlsplit(server)
    headers = {"host": url.netloc, "content-length": str(len(case.body)), **case.headers}
    headers["connection"] = "close"
    head = f"{case.method} {case.path} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection((url.hostname, url.port), timeout=ANSWER_S) as sock:
        # Refused before the whole body was read: the answer is still there.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head.encode("latin-1", "replace") + case.body)
        answer = b""
        while chunk := _recv(sock):
            answer += chunk
    return _final_status(answer), answer


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def _final_status(answer: bytes) -> int:
    """The status of the last response head (after any ``100 Continue``); 0 when none came."""
    status = 0
    for block in answer.split(b"\r\n\r\n"):
        if block.startswith(b"HTTP/1."):
            status = int(block.split(b" ", 2)[1])
            if status >= 200:
                return status
    return status


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_gets_an_answer_below_500(server, case):
    try:
        status, answer = send_raw(server, case)
    except TimeoutError:
        pytest.fail(f"{case.name}: no answer within {ANSWER_S} s")
    assert 100 <= status < 500, f"{case.name}: {answer[:600]!r}"


def test_the_corpus_is_big_and_varied():
    families = {c.name.split("-")[0] for c in CASES}
    assert len(CASES) >= 300 and len(families) >= 10


def test_the_service_still_segments_after_the_corpus(server):
    assert httpx.get(f"{server}/readyz").status_code == 200
    r = httpx.post(f"{server}/segment", files=triplet_files(), timeout=60)
    assert r.status_code == 200 and r.json()["is_defective"] is True
