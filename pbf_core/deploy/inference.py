"""Run a trained segmenter on whole layers: raw layer in, probabilities, mask and components out.

Nothing here trains. A :class:`Segmenter` wraps either a torch module or an ONNX Runtime session
behind one ``predict(batch) -> probabilities`` function (a :data:`~pbf_core.deploy.tiling.PredictFn`),
so the service, the batch flow and the evaluation share one code path: normalise the layer as the
model's spec says (:mod:`pbf_core.deploy.inputs`), cut it into tiles at native resolution and
stitch them (:mod:`pbf_core.deploy.tiling`), threshold, find components
(:mod:`pbf_core.deploy.overlays`).

``torch`` and ``onnxruntime`` are imported inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pbf_core.deploy.inputs import keep_to_bed, model_input, normalized_views, stored_views
from pbf_core.deploy.overlays import Component, find_components
from pbf_core.deploy.tiling import PredictFn, predict_layer
from pbf_core.model.spec import ModelSpec

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Segmentation:
    """A segmented layer: ``prob`` ``(H, W)`` float32, ``mask`` ``(H, W)`` bool, components."""

    prob: np.ndarray
    mask: np.ndarray
    components: tuple[Component, ...]
    threshold: float


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function of logits, as float32 (clipped: no overflow warnings)."""
    return (1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))).astype(np.float32)


def torch_predictor(
    model: torch.nn.Module,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> PredictFn:
    """Wrap a logits model as a :data:`PredictFn` (eval mode, no gradients).

    Args:
        model: maps ``(N, C, h, w)`` to logits ``(N, 1, h, w)``; moved to ``device`` and put in
            eval mode by the returned function at each call, so a model still in training can be
            validated with it.
        autocast_dtype: bf16/fp16 autocast, or None for float32.
    """
    import torch

    from pbf_core.model.devices import autocast

    dev = torch.device(device)

    def predict(batch: np.ndarray) -> np.ndarray:
        was_training = model.training
        model.eval()
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(dev)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            with torch.inference_mode(), autocast(dev, autocast_dtype):
                logits = model(x)
            return torch.sigmoid(logits.float())[:, 0].cpu().numpy()
        finally:
            model.train(was_training)

    return predict


def onnx_predictor(session: Any) -> PredictFn:
    """Wrap an ``onnxruntime.InferenceSession`` (input ``(N, C, H, W)``, logits output)."""
    name = session.get_inputs()[0].name

    def predict(batch: np.ndarray) -> np.ndarray:
        (logits, *_) = session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})
        return sigmoid(logits[:, 0])

    return predict


class Segmenter:
    """A trained model plus its spec: raw or prepared layer in, :class:`Segmentation` out."""

    def __init__(self, predict: PredictFn, spec: ModelSpec, batch_size: int = 4) -> None:
        self.predict = predict
        self.spec = spec
        self.batch_size = batch_size

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        spec: ModelSpec,
        device: str = "cpu",
        precision: str = "fp32",
        batch_size: int = 4,
    ) -> Segmenter:
        """Wrap a torch model (``device``/``precision`` as in :mod:`pbf_core.model.devices`)."""
        import torch

        from pbf_core.model.devices import resolve_device, resolve_precision

        dev = resolve_device(device)
        dtype = resolve_precision(precision, dev)
        # channels-last: convolutions on CPU run markedly faster in NHWC
        model = model.to(dev).eval().to(memory_format=torch.channels_last)
        return cls(torch_predictor(model, dev, dtype, channels_last=True), spec, batch_size)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "cpu", precision: str = "fp32", batch_size: int = 4
    ) -> Segmenter:
        """Load a safetensors checkpoint (see :func:`pbf_core.model.checkpoints.load_checkpoint`)."""
        from pbf_core.model.checkpoints import load_checkpoint

        model, spec = load_checkpoint(path)
        return cls.from_model(model, spec, device, precision, batch_size)

    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        spec: ModelSpec | None = None,
        providers: list[str] | None = None,
        batch_size: int = 4,
    ) -> Segmenter:
        """Run an ONNX file with ONNX Runtime; the spec defaults to the file's ``pbf.*`` metadata.

        Raises:
            ValueError: no ``spec`` given and the file carries none.
        """
        import onnxruntime as ort

        if spec is None:
            from pbf_core.deploy.metadata import read_onnx_spec

            spec = read_onnx_spec(path)  # ExportError (a ValueError) without one
        session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        return cls(onnx_predictor(session), spec, batch_size)

    def predict_proba(
        self, image: np.ndarray | Mapping[str, np.ndarray], bed: np.ndarray | None = None
    ) -> np.ndarray:
        """``(H, W)`` float32 defect probabilities of a raw or prepared layer (0 outside the
        powder bed for a ``bed_only`` model: ``bed``, else found on raw views, see
        :func:`~pbf_core.deploy.inputs.keep_to_bed`)."""
        views = stored_views(image, self.spec)
        if bed is None:
            x, bed = model_input(views, self.spec)
        else:
            x = normalized_views(views, self.spec)
        prob = predict_layer(self.predict, x, self.spec, self.batch_size)
        return keep_to_bed(prob, views, self.spec, bed)

    def segment(
        self,
        image: np.ndarray | Mapping[str, np.ndarray],
        threshold: float | None = None,
        bed: np.ndarray | None = None,
    ) -> Segmentation:
        """Probabilities, mask (``prob >= threshold``, the spec's by default) and components."""
        th = self.spec.threshold if threshold is None else threshold
        prob = self.predict_proba(image, bed)
        mask = prob >= th
        return Segmentation(prob, mask, find_components(mask, prob), th)


def load_segmenter(path: str | Path, device: str = "cpu") -> Segmenter:
    """A :class:`Segmenter` for a model file: an ``.onnx`` file with pbf metadata (ONNX Runtime)
    or a ``.safetensors`` checkpoint (PyTorch on ``device``).

    Raises:
        ExportError, CheckpointError: unreadable file or no pbf spec in it.
    """
    if Path(path).suffix == ".onnx":
        return Segmenter.from_onnx(path)
    return Segmenter.from_checkpoint(path, device=device)
