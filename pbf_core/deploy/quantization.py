"""Post-training quantization of the exported model and the parity gate every variant must pass.

Variants (see :data:`VARIANTS`):

- ``torch-fp32``: the trained PyTorch model, eager mode — the reference.
- ``torch-dynamic-int8``: the prototype's ``torch.ao.quantization.quantize_dynamic`` over
  ``nn.Linear``. A U-Net has no Linear layer, so it changes nothing but overhead; it is kept only
  as the baseline the prototype reported.
- ``onnx-fp32``: the ONNX export run by ONNX Runtime.
- ``onnx-int8``: ONNX Runtime static int8, QDQ format, calibrated on tiles of real training
  layers, with its own decision threshold (see :func:`match_threshold`).

The defaults of :class:`~pbf_core.config.QuantizeConfig` were chosen by measurement on a U-Net /
MobileNetV2 and a CPU with VNNI (``benchmarks/inference.py``, ``benchmarks/results/``):
per-channel weights agree with the fp32 masks better than per-tensor ones; uint8 activations give
the same masks as int8 ones and hit the faster U8S8 kernels; entropy calibration gave the same
masks as MinMax at many times the calibration time. ONNX Runtime's int8 convolution is slow for
narrow layers over many pixels, which is why the default network
(:class:`pbf_core.model.networks.ShuffleHead`) has no convolution at full resolution and
convolutions with at most ``float_max_channels`` outputs (the final logit layer) stay in float.
The quantized model's scores sit slightly higher than fp32's (rounding noise rectified by the
ReLUs), so at the fp32 threshold its masks grow; with its own threshold, matched on validation
layers, they agree with fp32's.

The parity gate scores every variant's masks against the evaluation layers' labels next to the
fp32 model's; a variant losing more Dice or recall than the configured tolerance fails, with the
numbers in the result.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pbf_core.config import QuantizeConfig
from pbf_core.deploy.export import INPUT_NAME
from pbf_core.deploy.metadata import read_metadata
from pbf_core.deploy.parity import REFERENCE_VARIANT, Parity, check_parity, match_threshold
from pbf_core.errors import QuantizationError
from pbf_core.files import write_json

if TYPE_CHECKING:
    import torch

    from pbf_core.data.dataset import PreparedDataset, Sample
    from pbf_core.deploy.export import ExportedModel
    from pbf_core.deploy.tiling import PredictFn
    from pbf_core.model.spec import ModelSpec

VARIANTS: tuple[str, ...] = ("torch-fp32", "torch-dynamic-int8", "onnx-fp32", "onnx-int8")


def sample_calibration_tiles(
    images: Sequence[np.ndarray],
    tile: int,
    cfg: QuantizeConfig,
    masks: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Draw ``cfg.calibration_samples`` tiles of ``tile`` px from ``images``.

    Activation ranges are set by what the model sees at inference: tiles of real layers at native
    resolution. Defects are rare, so ``cfg.defect_tile_fraction`` of the tiles are centred on a
    random labelled pixel (when ``masks`` are given), the rest placed uniformly; images are used
    in turn so every layer contributes.

    Args:
        images: ``(C, H, W) float32`` model inputs (already normalised), each at least one tile.
        tile: tile side (px), the model's inference tile.
        cfg: sample count, defect fraction, seed.
        masks: optional ``(H, W) bool`` label per image (weak or true).

    Returns:
        ``(cfg.calibration_samples, C, tile, tile) float32``.

    Raises:
        QuantizationError: no images, mixed channel counts, or an image smaller than a tile.
    """
    if not images:
        raise QuantizationError("<calibration>", "no images to calibrate on")
    t = tile  # short name for the slicing below
    channels = {img.shape[0] for img in images}
    if len(channels) != 1:
        raise QuantizationError("<calibration>", f"images have mixed channel counts {channels}")
    rng = np.random.default_rng(cfg.seed)
    tiles = np.empty((cfg.calibration_samples, channels.pop(), t, t), np.float32)
    order = rng.permutation(len(images))
    for i in range(cfg.calibration_samples):
        k = int(order[i % len(order)])
        img = images[k]
        h, w = img.shape[1:]
        if h < t or w < t:
            raise QuantizationError(
                f"<calibration image {k}>", f"{h}x{w} is smaller than the {t} px tile"
            )
        ys = xs = None
        if masks is not None and rng.random() < cfg.defect_tile_fraction:
            ys, xs = np.nonzero(masks[k])
        if ys is not None and ys.size:
            j = rng.integers(ys.size)
            y0 = int(np.clip(ys[j] - t // 2, 0, h - t))
            x0 = int(np.clip(xs[j] - t // 2, 0, w - t))
        else:
            y0, x0 = int(rng.integers(h - t + 1)), int(rng.integers(w - t + 1))
        tiles[i] = img[:, y0 : y0 + t, x0 : x0 + t]
    return tiles


class _TileReader:
    """ONNX Runtime ``CalibrationDataReader`` over ``(N, C, H, W)`` tiles in batches."""

    def __init__(self, tiles: np.ndarray, batch: int) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [tiles[i : i + batch] for i in range(0, len(tiles), batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch)}


def quantize_static(
    fp32_onnx: str | Path,
    out: str | Path,
    tiles: np.ndarray,
    cfg: QuantizeConfig | None = None,
) -> Path:
    """Static int8 quantization (QDQ) of an exported fp32 model, calibrated on ``tiles``.

    Weights are int8, activations ``cfg.activation_type``; ``cfg.per_channel`` gives each output
    channel of a convolution its own weight scale; convolutions with at most
    ``cfg.float_max_channels`` output channels stay in float. The file keeps the fp32 file's ``pbf.*``
    metadata and adds ``variant`` and ``quantization`` (the config used).

    Args:
        fp32_onnx: file written by :func:`pbf_core.deploy.export.export_onnx`.
        out: output ``.onnx`` file.
        tiles: ``(N, C, H, W) float32`` calibration inputs, normalised like the model's input.
        cfg: calibration method, per-channel, types, float layers.

    Returns:
        ``out``.

    Raises:
        QuantizationError: missing model, tiles of the wrong shape, or a quantizer failure.
    """
    cfg = cfg or QuantizeConfig()
    fp32_onnx, out = Path(fp32_onnx), Path(out)
    meta = read_metadata(fp32_onnx)
    if tiles.ndim != 4 or tiles.dtype != np.float32 or not len(tiles):
        raise QuantizationError(
            fp32_onnx, f"calibration tiles must be (N, C, H, W) float32, got {tiles.shape}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        _run_quantizer(fp32_onnx, out, tiles, cfg)
    except Exception as exc:
        out.unlink(missing_ok=True)
        raise QuantizationError(fp32_onnx, f"static quantization failed: {exc}") from exc
    quantization = cfg.model_dump(mode="json")
    _set_file_metadata(out, {**meta, "variant": "onnx-int8", "quantization": quantization})
    return out


def _run_quantizer(fp32_onnx: Path, out: Path, tiles: np.ndarray, cfg: QuantizeConfig) -> None:
    """ONNX Runtime's pre-processing and static QDQ quantizer, narrow convolutions left float."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
    )
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory(prefix="pbf-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
        ort_quantize_static(
            str(pre),
            str(out),
            _TileReader(tiles, cfg.calibration_batch),
            quant_format=QuantFormat.QDQ,
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
            activation_type=types[cfg.activation_type],
            weight_type=QuantType.QInt8,
            nodes_to_exclude=_narrow_convs(onnx.load_model(str(pre)), cfg.float_max_channels),
            calibrate_method=methods[cfg.calibration_method],
            extra_options={"CalibPercentile": cfg.percentile},
        )


def _narrow_convs(model, max_channels: int) -> list[str]:
    """Names of the Conv nodes with at most ``max_channels`` output channels."""
    from onnx import numpy_helper

    shapes = {w.name: numpy_helper.to_array(w).shape for w in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Conv" and n.input[1] in shapes and shapes[n.input[1]][0] <= max_channels
    ]


def quantize_dynamic_torch(model: torch.nn.Module) -> torch.nn.Module:
    """The prototype's dynamic quantization: ``quantize_dynamic(model, {nn.Linear}, qint8)``.

    Kept only as the baseline to compare: a U-Net has no Linear layer, so nothing is quantized.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        # torch.ao eager quantization is deprecated upstream; this baseline reproduces it as is.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            model.eval(), {torch.nn.Linear}, dtype=torch.qint8
        )


@dataclass(frozen=True)
class QuantizedModel:
    """The static int8 file beside its fp32 one, how it was made, and the parity of both.

    Attributes:
        fp32, int8: the ONNX files (each carries its threshold and parity in its metadata).
        checkpoint: the PyTorch model both were made from (the parity reference).
        thresholds: decision threshold of each variant (``onnx-int8`` may have its own).
        threshold_matched_on: the split part the int8 threshold was matched on (None: not).
        calibration_labels: what the defect-centred calibration tiles were centred on.
        calibration_tiles: shape of the calibration batch ``(N, C, tile, tile)``.
        parity: ``onnx-fp32`` and ``onnx-int8`` against the PyTorch fp32 model.
        report: ``quantize.json``.
    """

    fp32: Path
    int8: Path
    checkpoint: Path
    thresholds: dict[str, float]
    threshold_matched_on: str | None
    calibration_labels: str
    calibration_tiles: tuple[int, ...]
    parity: dict[str, Parity]
    report: Path

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.parity.values())

    @property
    def int8_parity(self) -> Parity:
        return self.parity["onnx-int8"]


def calibration_set(
    samples: Sequence[Sample], spec: ModelSpec, cfg: QuantizeConfig
) -> tuple[np.ndarray, str]:
    """Calibration tiles of the training layers and the labels the defect tiles centre on.

    The labels are those the model was trained on (``spec.labels``) when every layer has them,
    else the weak labels.
    """
    from pbf_core.data.dataset import target_of

    labels = spec.labels if all(s.truth is not None for s in samples) else "weak"
    tiles = sample_calibration_tiles(
        [s.image for s in samples],
        cfg.calibration_tile or spec.tile_size,
        cfg,
        [target_of(s, labels) for s in samples],
    )
    return tiles, labels


def _layer_probabilities(predict: PredictFn, samples: Sequence[Sample], spec: ModelSpec) -> list:
    from pbf_core.deploy.tiling import predict_layer

    return [predict_layer(predict, s.image, spec) for s in samples]  # as serving predicts


def _set_file_metadata(path: Path, metadata: dict) -> None:
    import onnx

    from pbf_core.deploy.metadata import set_metadata

    proto = onnx.load_model(str(path))
    set_metadata(proto, metadata)
    onnx.save_model(proto, str(path))


def _predictors(exported: ExportedModel, int8: Path) -> dict[str, PredictFn]:
    from pbf_core.deploy.inference import onnx_predictor, torch_predictor
    from pbf_core.deploy.runtimes import open_session
    from pbf_core.model.checkpoints import load_checkpoint

    model, _ = load_checkpoint(exported.checkpoint)
    return {
        REFERENCE_VARIANT: torch_predictor(model),
        "onnx-fp32": onnx_predictor(open_session(exported.path)),
        "onnx-int8": onnx_predictor(open_session(int8)),
    }


def _matched_int8_threshold(
    predictors: dict[str, PredictFn], samples: Sequence[Sample], spec: ModelSpec
) -> float:
    """The int8 threshold whose masks agree best with the fp32 model's on ``samples``."""
    reference = [
        p >= spec.threshold
        for p in _layer_probabilities(predictors[REFERENCE_VARIANT], samples, spec)
    ]
    threshold, _ = match_threshold(
        reference, _layer_probabilities(predictors["onnx-int8"], samples, spec)
    )
    return threshold


def _gate(
    predictors: dict[str, PredictFn],
    thresholds: dict[str, float],
    samples: Sequence[Sample],
    spec: ModelSpec,
    cfg: QuantizeConfig,
) -> dict[str, Parity]:
    """Parity of the ONNX variants on ``samples``, each at its own threshold, against fp32."""
    from pbf_core.data.dataset import target_of

    label_kind = "truth" if all(s.truth is not None for s in samples) else "weak"
    labels = [target_of(s, label_kind) for s in samples]
    masks = {
        name: [p >= thresholds[name] for p in _layer_probabilities(fn, samples, spec)]
        for name, fn in predictors.items()
    }
    return {
        name: check_parity(name, masks[REFERENCE_VARIANT], masks[name], labels, cfg, label_kind)
        for name in ("onnx-fp32", "onnx-int8")
    }


def quantize_model(
    exported: ExportedModel,
    dataset: PreparedDataset,
    cfg: QuantizeConfig,
    out: str | Path,
) -> QuantizedModel:
    """Static int8 from the exported model, gated on parity (the pipeline's quantize step).

    Calibration tiles come from the split's training layers (see :func:`calibration_set`). With
    ``cfg.match_threshold`` the int8 file gets its own decision threshold (see
    :func:`~pbf_core.deploy.parity.match_threshold`), matched on the validation layers (training
    layers if there are none). Parity is measured on the split's evaluation layers against the
    PyTorch fp32 model, every variant segmenting as serving does (tiles of the spec's size,
    stitched, thresholded). Both ONNX files get their threshold and parity in their metadata.

    Writes ``out/model.int8.onnx`` and ``out/quantize.json``.

    Returns:
        Files, thresholds and parity; a failed gate is reported there (and in
        ``quantize.json``), not raised, so the numbers are kept.

    Raises:
        DatasetError: the dataset has no split. QuantizationError: unusable calibration data.
    """
    split, spec, out = dataset.require_split(), exported.spec, Path(out)
    tiles, calibrated_on = calibration_set(dataset.samples(split.train), spec, cfg)
    int8 = quantize_static(exported.path, out / "model.int8.onnx", tiles, cfg)
    predictors = _predictors(exported, int8)
    thresholds = dict.fromkeys(predictors, spec.threshold)
    matched_on = None
    if cfg.match_threshold:
        matched_on = "val" if split.val else "train"
        layers = dataset.samples(split.part(matched_on))
        thresholds["onnx-int8"] = _matched_int8_threshold(predictors, layers, spec)
        _set_file_metadata(
            int8, {"threshold": thresholds["onnx-int8"], "reference_threshold": spec.threshold}
        )
    parity = _gate(predictors, thresholds, dataset.samples(split.eval_ids), spec, cfg)
    for name, path in (("onnx-fp32", exported.path), ("onnx-int8", int8)):
        _set_file_metadata(
            path, {"parity": parity[name].to_dict()}
        )  # the verdict travels with the file
    result = QuantizedModel(
        exported.path, int8, exported.checkpoint, thresholds, matched_on, calibrated_on,
        tuple(tiles.shape), parity, out / "quantize.json",
    )  # fmt: skip
    write_json(
        result.report, _report(result, exported, split.evaluated_on, len(split.eval_ids), cfg)
    )
    return result


def _report(
    result: QuantizedModel,
    exported: ExportedModel,
    evaluated_on: str,
    layers: int,
    cfg: QuantizeConfig,
) -> dict:
    """``quantize.json``: config, export check, calibration, thresholds, sizes, parity."""
    return {
        "checkpoint": str(result.checkpoint),
        "config": cfg.model_dump(mode="json"),
        "export_check": asdict(exported.check),
        "calibration_tiles": list(result.calibration_tiles),
        "calibration_labels": result.calibration_labels,
        "thresholds": result.thresholds,
        "threshold_matched_on": result.threshold_matched_on,
        "evaluated_on": evaluated_on,
        "evaluation_layers": layers,
        "files": {
            name: {"path": path.name, "size_mb": round(path.stat().st_size / 1e6, 2)}
            for name, path in (("onnx-fp32", result.fp32), ("onnx-int8", result.int8))
        },
        "parity": {k: p.to_dict() for k, p in result.parity.items()},
        "passed": result.passed,
    }
