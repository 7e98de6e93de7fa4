"""Model runners without a server: background loading with retries, the remote runner's retries."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pbf_core.serving.model import ModelNotReadyError
from pbf_core.serving.runner import BackgroundLoader, RemoteRunner


def test_background_loader_retries_until_loaded():
    calls = []

    def load() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise OSError("tracking server down")
        return "model"

    loader = BackgroundLoader(load, "test model", max_wait_s=0.1)
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    # the first retry comes a second after the failure
    with pytest.raises(ModelNotReadyError, match="test model not loaded"):
        loader.get()
    while not loader.ready and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loader.get() == "model" and len(calls) == 2


class FlakyClient:
    """The inference service's client: ``infer`` fails ``drops`` times with ``error`` first."""

    def __init__(self, drops: int, error: Exception) -> None:
        self.drops, self.error, self.calls = drops, error, 0

    def describe(self) -> dict:
        raise self.error

    def infer(self, tiles: np.ndarray) -> list:
        self.calls += 1
        if self.calls <= self.drops:
            raise self.error
        return tiles[:, 0].tolist()


def test_remote_infer_repeats_a_dropped_connection():
    client = FlakyClient(2, RuntimeError("Connection closed."))
    out = RemoteRunner(lambda: client).infer(np.ones((2, 3, 4, 4), np.float32))
    assert out.shape == (2, 4, 4) and out.dtype == np.float32 and client.calls == 3


@pytest.mark.parametrize(
    ("drops", "error"),
    [(3, RuntimeError("Connection closed.")), (1, RuntimeError("model exploded"))],
)
def test_remote_infer_gives_up(drops, error):
    client = FlakyClient(drops, error)
    with pytest.raises(RuntimeError, match=str(error)):
        RemoteRunner(lambda: client).infer(np.ones((1, 3, 4, 4), np.float32))
    assert client.calls == min(drops, 3)


def test_remote_describe_of_an_unreachable_service():
    client = FlakyClient(0, OSError("connection refused"))
    with pytest.raises(ModelNotReadyError, match="inference service not reachable: connection"):
        RemoteRunner(lambda: client).describe()
