"""Where the layers of a build are scored: in this process, or on a Dask cluster.

``local`` scores the layers one after another in this process, the model on every core.
``dask`` maps them over a Dask cluster: an existing one (``tcp://HOST:PORT``) or a
``LocalCluster`` of ``workers`` single-threaded processes on 127.0.0.1. Each worker process loads
the model once (:func:`scoring_segmenter`, cached per process) and writes its layers' masks and
records into the shared output directory, so the workers must see the build and ``OUT`` at the
same paths (one machine, or a shared file system).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pbf_core.data.layers import LayerRecord
from pbf_core.deploy.inference import Segmenter
from pbf_core.scoring.layers import ScoredLayer, score_layer

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Runner:
    """How to map the layers: ``local`` (one process, ``threads`` for the model; None = one per
    core) or ``dask`` (``address`` or a local cluster of ``workers`` single-threaded processes;
    None = one per core)."""

    kind: Literal["local", "dask"] = "local"
    address: str | None = None
    workers: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("local", "dask"):
            raise ValueError(f"unknown runner {self.kind!r}; valid: local, dask")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.address is not None and not self.address.startswith(("tcp://", "tls://")):
            raise ValueError(f"dask address must look like tcp://HOST:PORT, got {self.address!r}")


#: glibc's ``M_MMAP_THRESHOLD``: allocations above it are mmapped afresh each time.
_M_MMAP_THRESHOLD = -3


def keep_layer_buffers_on_the_heap(limit: int = 32 * 2**20) -> bool:
    """Let glibc serve allocations up to ``limit`` bytes from the heap (Linux; else a no-op).

    Dask starts its workers with ``MALLOC_TRIM_THRESHOLD_`` set, which also freezes glibc's
    mmap threshold at 128 KiB: every layer-sized array is then mmapped and faulted in afresh,
    and a worker scores a layer about 1.5x slower than a plain process (measured: 0.73 vs 0.47
    s per 512² layer). Returns whether the setting took.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not name.startswith("libc.so"):
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(_M_MMAP_THRESHOLD, limit))
    except (OSError, AttributeError):
        return False


@functools.lru_cache(maxsize=4)
def scoring_segmenter(model: str, threads: int | None, key: str) -> tuple[Segmenter, str]:
    """The model loaded once per process (``key`` tells versions of a file apart): ONNX on
    OpenVINO with ONNX Runtime as the fallback, or a checkpoint on PyTorch. Returns it and the
    runtime's name."""
    keep_layer_buffers_on_the_heap()
    if Path(model).suffix == ".onnx":
        from pbf_core.deploy.metadata import read_onnx_spec
        from pbf_core.deploy.runtimes import open_predictor

        spec = read_onnx_spec(model)
        predict, runtime = open_predictor(model, "auto", threads, warm_tile=spec.tile_size)
        return Segmenter(predict, spec), runtime
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return Segmenter.from_checkpoint(model), "pytorch"


def score_layer_file(
    record: LayerRecord,
    index: int,
    digest: str,
    model: str,
    out: str,
    model_key: str,
    threads: int | None = 1,
) -> ScoredLayer:
    """Score one layer with the model at ``model`` (loaded once per process): what a Dask or
    Prefect worker runs for each layer."""
    segmenter, _ = scoring_segmenter(model, threads, model_key)
    return score_layer(record, index, digest, segmenter, Path(out), model_key)


@contextmanager
def dask_client(runner: Runner) -> Iterator:
    """A client of the runner's cluster (a LocalCluster on 127.0.0.1 when no address)."""
    from distributed import Client, LocalCluster

    if runner.address:
        with Client(runner.address, timeout="30s") as client:
            yield client
        return
    workers = runner.workers or os.cpu_count() or 1
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, host="127.0.0.1",
                     dashboard_address="127.0.0.1:0", processes=True) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        yield client


def map_layers(
    records: Sequence[LayerRecord],
    digests: Sequence[str],
    model: str,
    out: Path,
    key: str,
    runner: Runner,
    progress: Progress | None = None,
) -> list[ScoredLayer]:
    """Score every layer on the runner; results in build order."""
    total = len(records)
    if runner.kind == "local":
        segmenter, _ = scoring_segmenter(model, runner.threads, key)
        results = []
        for i, (record, digest) in enumerate(zip(records, digests, strict=True)):
            results.append(score_layer(record, i, digest, segmenter, out, key))
            if progress:
                progress(i + 1, total)
        return results
    from distributed import as_completed

    with dask_client(runner) as client:
        futures = client.map(
            score_layer_file, list(records), list(range(total)), list(digests),
            model=model, out=str(out), model_key=key, pure=False,  # `key` is Dask's
        )  # fmt: skip
        for done, _ in enumerate(as_completed(futures), start=1):
            if progress:
                progress(done, total)
        return client.gather(futures)
