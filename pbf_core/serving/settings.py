"""The service's settings: ``PBF_SERVE_*`` environment variables.

What runs the model (``PBF_SERVE_RUNTIME``): ``auto`` takes OpenVINO when it is installed, else
ONNX Runtime; both read the same ONNX file. At load OpenVINO is checked against ONNX Runtime on
that file (:func:`pbf_core.deploy.runtimes.open_predictor`) and ``auto`` falls back to ONNX
Runtime if they differ. Answers name the runtime (``model.runtime``).

Where the model runs (``PBF_SERVE_BATCHING``):

- off (default): in each entry process (one per core, one thread per inference). On CPU,
  batching buys little: the CPU time per tile hardly falls with the batch, while handing tiles
  to other processes costs serialisation and HTTP both ways (``benchmarks/serve.py --batching``
  measures both layouts; its results are in ``benchmarks/results/``).
- on: BentoML's adaptive batching. A separate inference service owns the model in its own
  processes and batches the tiles of concurrent requests into one call, sized apart from request
  handling. Big batches pay on accelerators.

One single-threaded model per core serves the most requests per second; one request alone then
runs on one core, so for the lowest latency of single requests set ``PBF_SERVE_WORKERS=1
PBF_SERVE_THREADS=0``.

Limits (each a setting; the defaults are safe on a 2-core, 24 GiB machine):

- an upload is at most ``PBF_SERVE_MAX_UPLOAD_MB`` per file, ``PBF_SERVE_MAX_PIXELS`` per image
  (4096² by default: a 6000² triplet would need ~1.3 GB to segment) and ``PBF_SERVE_MAX_ASPECT``
  long side over short side (a 1x300,000 strip is no layer); checked in the image header,
  before decoding (413/422);
- a client has ``PBF_SERVE_BODY_TIMEOUT_S`` to send its whole body (408); bodies are spooled to
  a temporary file as they arrive, so a stalled upload holds disk, not memory;
- each entry process segments ``PBF_SERVE_MAX_ACTIVE`` requests at once and lets
  ``PBF_SERVE_MAX_QUEUED`` wait; beyond, 503 with ``Retry-After``
  (:mod:`pbf_core.serving.admission`). BentoML's own ``traffic.max_concurrency`` does not fit:
  it counts requests still uploading, keeps no queue and answers 429 without ``Retry-After``;
  its ``traffic.timeout`` (600 s) stays the cap on one request;
- uvicorn has no header timeout (a stalled header holds at most 16 KiB): a reverse proxy in
  front sets one (README, "Exposing the service safely").

``PBF_SERVE_API_KEY`` locks every path but the probes, the page's files and the API docs
(:mod:`pbf_core.serving.access`).

Where the model comes from (``PBF_SERVE_SOURCE``): ``store``, the BentoML model written by
``pbf package`` (the one a bento carries), or ``tracking``, the registry's
``models:/<registry>@<alias>`` on ``PBF_TRACKING_URI``/``MLFLOW_TRACKING_URI`` (the fp32 variant
is ``@<alias>-fp32``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Files in the largest request (an a/b/c triplet).
MAX_FILES = 3
#: Bytes of a multipart body besides its files (field names, headers, boundaries).
FORM_OVERHEAD_BYTES = 1024**2


class ServeSettings(BaseSettings):
    """``PBF_SERVE_*`` environment variables (see the module docstring)."""

    model_config = SettingsConfigDict(env_prefix="PBF_SERVE_", extra="ignore")

    variant: Literal["int8", "fp32"] = Field("int8", description="ONNX variant served.")
    source: Literal["store", "tracking"] = Field(
        "store", description="BentoML model store, or the tracking server's registry alias."
    )
    model: str = Field(
        "pbf-defect-segmenter:latest", description="BentoML model tag (source `store`)."
    )
    alias: str = Field("champion", description="Registry alias (source `tracking`).")
    max_upload_mb: float = Field(48.0, gt=0, description="Largest file per upload field (MiB).")
    max_pixels: int = Field(
        16_777_216, gt=0, description="Most pixels per uploaded image (4096² by default)."
    )
    max_aspect: float = Field(
        16.0, ge=1.0, description="Longest over shortest side of an uploaded image, at most."
    )
    max_active: int = Field(
        2, gt=0, description="Requests segmented at once per entry process; the rest wait."
    )
    max_queued: int = Field(
        16, ge=0, description="Requests waiting per entry process; beyond, 503 + Retry-After."
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="Seconds a client has to send a whole request body (else 408)."
    )
    api_key: SecretStr | None = Field(
        None, description="When set, API calls need it (`Authorization: Bearer` or `X-API-Key`)."
    )
    threads: int = Field(1, description="Threads per inference; 0 = one per core.")
    max_batch_tiles: int = Field(32, description="Batching: most tiles per batch.")
    max_latency_ms: int = Field(60_000, description="Batching: latency budget (ms).")
    tiles_per_call: int = Field(
        0, description="Tiles per model call; 0 = 3 in process, 16 with batching."
    )
    workers: int = Field(0, description="Entry processes; 0 = one per core, or 1 with batching.")
    inference_workers: int = Field(
        0, description="Batching: inference processes; 0 = one per core."
    )
    batching: bool = Field(False, description="Run the model behind BentoML's adaptive batching.")
    heap_keep_mb: int = Field(
        256,
        description="Freed memory each process keeps for the next request (MiB); 0 = the C "
        "library's default (see pbf_core.serving.memory.keep_freed_memory).",
    )
    runtime: Literal["auto", "openvino", "onnxruntime"] = Field(
        "auto", description="`auto` = OpenVINO when installed, else ONNX Runtime."
    )

    @property
    def tiles_per_inference(self) -> int:
        """Tiles per model call: set, or 3 in process (where the CPU time per tile of concurrent
        runs was lowest) and 16 to the batching service (fewer hops)."""
        return self.tiles_per_call or (16 if self.batching else 3)

    @property
    def api_key_value(self) -> str | None:
        """The API key in clear (None: the service is open)."""
        return self.api_key.get_secret_value() if self.api_key else None

    @property
    def registry_alias(self) -> str:
        """The registry alias of the served variant: ``alias``, or ``<alias>-fp32`` for fp32."""
        return self.alias if self.variant == "int8" else f"{self.alias}-fp32"

    @property
    def max_upload_bytes(self) -> int:
        """Largest file per upload field (bytes)."""
        return int(self.max_upload_mb * 1024**2)

    @property
    def max_body_bytes(self) -> int:
        """Largest request body (bytes): a full triplet plus the form around it."""
        return self.max_upload_bytes * MAX_FILES + FORM_OVERHEAD_BYTES
