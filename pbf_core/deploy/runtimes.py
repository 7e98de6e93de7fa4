"""Run an exported ONNX file on the CPU: ONNX Runtime, or OpenVINO where it is installed.

Both read the same file (fp32 or the static int8 QDQ model) and give a
:data:`~pbf_core.deploy.tiling.PredictFn`. The service takes OpenVINO when it can
(``runtime="auto"``; ``benchmarks/serve.py`` compares the two), checked against ONNX Runtime at
load. Float parts of a model run in float32 under both (OpenVINO would otherwise pick bfloat16 on
CPUs that have it). OpenVINO compiles a model for static input shapes, so a batch is run in
chunks of at most ``chunk`` tiles, each chunk size compiled once and kept.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pbf_core.deploy.inference import onnx_predictor, sigmoid
from pbf_core.deploy.tiling import PredictFn
from pbf_core.errors import ExportError


def open_session(
    path: str | Path,
    threads: int | None = None,
    optimized: str | Path | None = None,
    *,
    spinning: bool = True,
):
    """Open an ONNX Runtime CPU session with every graph optimisation on.

    Args:
        path: ONNX file.
        threads: intra-op threads (None: ONNX Runtime's default, one per core); inter-op is 1
            because the U-Net is a single chain.
        optimized: where to also save the optimised graph (tied to this machine's CPU features).
        spinning: let worker threads busy-wait between operators (fastest alone; a service whose
            request threads share the cores should turn it off).

    Returns:
        An ``onnxruntime.InferenceSession``.

    Raises:
        ExportError: missing or invalid file.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ExportError(path, "ONNX file not found")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(path, f"ONNX Runtime cannot load it: {exc}") from exc


Runtime = Literal["auto", "openvino", "onnxruntime"]

#: Compiled input shapes an OpenVINO predictor keeps (tiles of other sizes are rare).
MAX_COMPILED_SHAPES = 8
#: Load-time check: largest mean |probability difference| OpenVINO may show vs ONNX Runtime.
MAX_RUNTIME_DIFFERENCE = 0.02

logger = logging.getLogger(__name__)


def openvino_available() -> bool:
    """Whether the ``openvino`` package can be imported here."""
    return importlib.util.find_spec("openvino") is not None


def resolve_runtime(runtime: Runtime) -> Literal["openvino", "onnxruntime"]:
    """``auto`` → OpenVINO when installed, else ONNX Runtime; explicit choices are checked.

    Raises:
        ValueError: ``openvino`` asked for but not installed, or an unknown name.
    """
    if runtime == "auto":
        return "openvino" if openvino_available() else "onnxruntime"
    if runtime == "openvino" and not openvino_available():
        raise ValueError("runtime 'openvino' asked for, but the openvino package is not installed")
    if runtime not in ("openvino", "onnxruntime"):
        raise ValueError(f"unknown runtime {runtime!r} (auto, openvino or onnxruntime)")
    return runtime


class OpenVINOPredictor:
    """A :data:`PredictFn` over an ONNX file compiled by OpenVINO for the CPU.

    Thread-safe: each calling thread has its own infer requests, and up to ``streams``
    inferences run at once, each on ``threads`` threads. (Inputs are handed over as shared
    tensors: OpenVINO's Python input dispatch deadlocked under concurrent calls in the service.)
    """

    def __init__(
        self,
        path: str | Path,
        threads: int = 1,
        chunk: int = 3,
        warm_tile: int | None = None,
        streams: int = 1,
    ) -> None:
        import openvino as ov

        path = Path(path)
        if not path.is_file():
            raise ExportError(path, "ONNX file not found")
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(path))
        except Exception as exc:
            raise ExportError(path, f"OpenVINO cannot read it: {exc}") from exc
        self._path, self._chunk = path, max(1, chunk)
        self._tensor = ov.Tensor
        self._config = {
            "INFERENCE_NUM_THREADS": max(1, threads) * max(1, streams),
            "NUM_STREAMS": max(1, streams),
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self._compiled: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._lock = threading.Lock()  # the compiled models
        self._local = threading.local()  # each thread's infer requests
        #: input channels of the model
        self.channels = self._model.inputs[0].get_partial_shape()[1].get_length()
        if warm_tile is not None:
            for n in range(1, self._chunk + 1):
                self._compiled_for((n, self.channels, warm_tile, warm_tile))

    def _compiled_for(self, shape: tuple[int, ...]) -> Any:
        with self._lock:
            if shape in self._compiled:
                self._compiled.move_to_end(shape)
                return self._compiled[shape]
            import openvino as ov

            model = self._model.clone()
            model.reshape({model.inputs[0]: ov.PartialShape(list(shape))})
            try:
                compiled = self._core.compile_model(model, "CPU", self._config)
            except Exception as exc:
                raise ExportError(
                    self._path, f"OpenVINO cannot compile it for {shape}: {exc}"
                ) from exc
            self._compiled[shape] = compiled
            if len(self._compiled) > MAX_COMPILED_SHAPES:
                self._compiled.popitem(last=False)
            return compiled

    def _request(self, shape: tuple[int, ...]) -> Any:
        """This thread's infer request for ``shape``."""
        compiled = self._compiled_for(shape)
        requests = self._local.__dict__.setdefault("requests", {})
        request = requests.get(shape)
        if request is None or request[0] is not compiled:
            for old in [k for k, (c, _) in requests.items() if self._compiled.get(k) is not c]:
                del requests[old]  # compiled models the cache let go of
            request = (compiled, compiled.create_infer_request())
            requests[shape] = request
        return request[1]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``(N, C, h, w)`` float32 tiles → ``(N, h, w)`` float32 probabilities."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        out = []
        for i in range(0, len(x), self._chunk):
            part = x[i : i + self._chunk]
            request = self._request(part.shape)
            request.set_input_tensor(self._tensor(part, shared_memory=True))
            request.infer()
            # a new array: the request reuses its output buffer
            out.append(sigmoid(request.get_output_tensor().data[:, 0]))
        return out[0] if len(out) == 1 else np.concatenate(out)


def open_predictor(
    path: str | Path,
    runtime: Runtime = "auto",
    threads: int | None = 1,
    *,
    chunk: int = 3,
    warm_tile: int | None = None,
    streams: int | None = None,
) -> tuple[PredictFn, Literal["openvino", "onnxruntime"]]:
    """A CPU :data:`PredictFn` for an ONNX file, and the runtime it uses.

    Args:
        path: ONNX file (fp32 or int8 QDQ).
        runtime: ``auto`` (OpenVINO if installed), ``openvino`` or ``onnxruntime``.
        threads: threads per inference (None: one per core).
        chunk: OpenVINO: tiles per inference (batches are split into chunks of this size).
        warm_tile: OpenVINO: compile the ``(1..chunk, C, warm_tile, warm_tile)`` shapes now
            instead of on first use.
        streams: OpenVINO: inferences that may run at once (None: as many as fill the cores
            with ``threads`` each; ONNX Runtime runs every concurrent call at once).

    With ``warm_tile``, OpenVINO is checked against ONNX Runtime on the same file
    (:func:`runtime_difference`). If OpenVINO fails to load or run the file, or differs beyond
    :data:`MAX_RUNTIME_DIFFERENCE`, ``auto`` falls back to ONNX Runtime with a warning and an
    explicit ``openvino`` raises.

    Raises:
        ExportError: missing or unreadable file; ``openvino`` failing the check.
        ValueError: an unknown or unavailable runtime.
    """
    chosen = resolve_runtime(runtime)
    if chosen == "onnxruntime":
        return _onnxruntime(path, threads), chosen
    try:
        predictor, ort, diff = _checked_openvino(path, threads, chunk, warm_tile, streams)
    except Exception as exc:  # an OpenVINO that cannot load or run this file
        if runtime == "openvino":
            raise
        logger.warning("%s: OpenVINO failed (%s); using ONNX Runtime", path, exc)
        return _onnxruntime(path, threads), "onnxruntime"
    if diff <= MAX_RUNTIME_DIFFERENCE:
        return predictor, chosen
    if runtime == "openvino":
        raise ExportError(
            path, f"OpenVINO's probabilities differ from ONNX Runtime's by {diff:.4f}"
        )
    logger.warning(
        "%s: OpenVINO differs from ONNX Runtime by %.4f (mean |dp|); using ONNX Runtime", path, diff
    )
    return ort, "onnxruntime"


def _checked_openvino(
    path: str | Path, threads: int | None, chunk: int, warm_tile: int | None, streams: int | None
) -> tuple[OpenVINOPredictor, PredictFn | None, float]:
    """OpenVINO's predictor, and (with ``warm_tile``) ONNX Runtime's and how far apart they are."""
    import os

    per_inference = threads or os.cpu_count() or 1
    predictor = OpenVINOPredictor(
        path,
        threads=per_inference,
        chunk=chunk,
        warm_tile=warm_tile,
        streams=streams or max(1, (os.cpu_count() or 1) // per_inference),
    )
    if warm_tile is None:
        return predictor, None, 0.0
    ort = _onnxruntime(path, threads)
    return predictor, ort, runtime_difference(predictor, ort, warm_tile, predictor.channels)


def _onnxruntime(path: str | Path, threads: int | None) -> PredictFn:
    # ONNX Runtime's busy-waiting workers starve request threads on shared cores.
    return onnx_predictor(open_session(path, threads, spinning=False))


def runtime_difference(a: PredictFn, b: PredictFn, tile: int, channels: int) -> float:
    """Mean absolute difference of two predictors' probabilities on two fixed smooth tiles.

    A load-time guard against a runtime that reads the model wrongly (an unsupported operator
    variant, a precision setting), not a quality measure: ``benchmarks/serve.py`` compares the
    runtimes' masks on real layers.
    """
    rng = np.random.default_rng(0)
    noise = rng.random((2, channels, tile // 8, tile // 8), dtype=np.float32)
    tiles = np.repeat(np.repeat(noise, 8, axis=2), 8, axis=3)  # blobs the model reacts to
    return float(np.abs(a(tiles) - b(tiles)).mean())
