"""Helpers of the service tests: a tiny hand-made model, synthetic layers, starting the server.

The model is not trained: one 3x3 convolution whose logit is ``40 * (local mean - 0.75)``, so
after the spec's percentile normalisation a bright square is a defect and a flat layer is not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers.processes import free_port, stop_tree, wait_ready

REPO = Path(__file__).resolve().parents[2]
TILE = 64
#: Small limits, so the size tests need small files: 1 MiB per file, 300k pixels per image, and
#: a stalled body is cut off after 3 s.
SERVER_ENV = {
    "PBF_SERVE_MAX_UPLOAD_MB": "1",
    "PBF_SERVE_MAX_PIXELS": "300000",
    "PBF_SERVE_BODY_TIMEOUT_S": "3",
}
STARTUP_S = 180


def bright_spot_model():
    """``(N, 3, H, W)`` → logits ``(N, 1, H, W)``: positive where the 3x3 mean exceeds 0.75."""
    import torch
    from torch import nn

    conv = nn.Conv2d(3, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(40.0 / 27.0)
        conv.bias.fill_(-30.0)
    return conv.eval()


def tiny_spec(views=("a", "b", "c")):
    from pbf_core.model.spec import ModelSpec

    return ModelSpec(
        in_channels=len(views),
        views=views,
        tile_size=TILE,
        tile_overlap=8,
        threshold=0.5,
        train_data_digest="tiny-test-model",
    )


def export_tiny_pair(out: Path) -> dict[str, Path]:
    """fp32 and int8 ONNX files of :func:`bright_spot_model` with the spec in their metadata."""
    from pbf_core.config import QuantizeConfig
    from pbf_core.deploy.export import export_onnx
    from pbf_core.deploy.metadata import spec_metadata
    from pbf_core.deploy.quantization import quantize_static

    spec = tiny_spec()
    fp32 = out / "fp32.onnx"
    export_onnx(bright_spot_model(), fp32, in_channels=3, metadata=spec_metadata(spec, "onnx-fp32"))
    rng = np.random.default_rng(0)
    tiles = rng.random((8, 3, TILE, TILE), dtype=np.float32)
    tiles[:4, :, 16:40, 16:40] = 1.0  # calibration must see defect-like logits too
    int8 = quantize_static(fp32, out / "int8.onnx", tiles, QuantizeConfig())
    return {"fp32": fp32, "int8": int8}


def layer(size=(96, 128), spot=(30, 40, 20), dtype=np.uint16, seed=0) -> np.ndarray:
    """``(H, W)`` noisy layer with a bright square ``(y, x, side)`` (None: no square)."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    img = rng.normal(0.3 * top, 0.02 * top, size).clip(0, top)
    if spot is not None:
        y, x, s = spot
        img[y : y + s, x : x + s] = 0.95 * top
    return img.astype(dtype)


def png_bytes(image: np.ndarray) -> bytes:
    import cv2

    arr = image if image.ndim == 2 else image[:, :, ::-1]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    assert ok
    return buf.tobytes()


def triplet_files(spot=(30, 40, 20), size=(96, 128)) -> dict[str, tuple[str, bytes, str]]:
    """Multipart ``a``/``b``/``c`` 16-bit PNGs of the same layer seen under three lights."""
    return {
        v: (f"L0001{v}.png", png_bytes(layer(size, spot, seed=i)), "image/png")
        for i, v in enumerate("abc")
    }


def bentoml_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment for a child process, with BentoML at ``home`` and no outside settings.

    The caller's serving, BentoML and tracking settings are dropped so a test never reaches a
    real store or server.
    """
    ours = ("PBF_SERVE_", "BENTOML_", "PBF_TRACKING_URI", "MLFLOW_TRACKING_URI", "PBF_STATE_DIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env.update(
        BENTOML_HOME=str(home),
        BENTOML_DO_NOT_TRACK="True",
        PYTHONPATH=str(REPO),
        **extra,
    )
    return env


def start_server(
    home: Path, log: Path, probe: str = "/readyz", **env: str
) -> tuple[subprocess.Popen, str]:
    """Start ``bentoml serve service:DefectService`` on a free port; wait until ``probe`` is 200."""
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("bentoml")), "serve", "service:DefectService"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=bentoml_env(home, **env), stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        # each entry process loads its own model and answers /readyz for itself alone
        wait_ready(f"{url}{probe}", proc, log, STARTUP_S, in_a_row=12)
    except BaseException:
        stop_tree(proc)
        raise
    return proc, url
