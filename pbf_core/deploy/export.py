"""ONNX export of a segmentation model, checked against PyTorch, with its metadata embedded.

The exported graph takes ``image``: ``(N, C, H, W) float32`` (normalised as the model's spec says)
and returns ``logits``: ``(N, 1, H, W) float32``; batch, height and width are dynamic (H and W must
be multiples of the encoder's output stride, 32 for the U-Net). Everything needed to use the file
(views, normalisation, tile size, decision threshold, training-data digest) is written into the
file's ``metadata_props`` under ``pbf.*`` keys, so a served prediction never depends on a constant
kept elsewhere.

``torch`` and ``onnx`` are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pbf_core.deploy.metadata import set_metadata, spec_metadata
from pbf_core.deploy.runtimes import open_session
from pbf_core.errors import ExportError

if TYPE_CHECKING:
    import onnx
    import torch

    from pbf_core.model.spec import ModelSpec

#: Lowest opset the exporter and the quantizer are tested with (QDQ per-channel needs >= 13).
ONNX_OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
#: Shapes ``(N, H, W)`` the exported graph is compared with PyTorch at: batch > 1 and non-square,
#: so a dimension frozen at export time fails the check.
CHECK_SHAPES: tuple[tuple[int, int, int], ...] = ((1, 64, 64), (2, 64, 96))


@dataclass(frozen=True)
class ExportCheck:
    """Largest differences between ONNX Runtime and PyTorch logits over :data:`CHECK_SHAPES`."""

    shapes: tuple[tuple[int, int, int, int], ...]  # (N, C, H, W) inputs compared
    max_abs_diff: float  # logits units
    mismatched_mask_fraction: float  # pixels whose 0.5-mask (logit sign) differs
    within_tolerance: bool  # every |onnx - torch| <= atol + rtol * |torch|


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    *,
    in_channels: int,
    metadata: Mapping[str, Any] | None = None,
    opset: int = ONNX_OPSET,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ExportCheck:
    """Export ``model`` to one self-contained ONNX file and check it against PyTorch.

    The model is exported in eval mode with the ``torch.export`` based exporter; BatchNorm is folded
    into the preceding convolutions. The result is compared with PyTorch at :data:`CHECK_SHAPES`
    and the file is removed again if they differ by more than ``atol + rtol * |torch|``.

    Args:
        model: maps ``(N, in_channels, H, W) float32`` to ``(N, 1, H, W)`` logits.
        path: output ``.onnx`` file (parent directories are created).
        in_channels: channels of the model input (1 for one view, 3 for an a/b/c triplet).
        metadata: JSON-serialisable values, written under ``pbf.<key>``.
        opset: ONNX opset, at least 17.
        atol: absolute tolerance on logits.
        rtol: relative tolerance on logits.

    Returns:
        The measured differences.

    Raises:
        ExportError: opset too low, the exporter failed, or the outputs differ beyond tolerance.
    """
    import onnx

    path = Path(path)
    if opset < 17:
        raise ExportError(path, f"opset must be >= 17, got {opset}")
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    proto = _export_graph(model, path, in_channels, opset)
    _name_dynamic_dims(proto)
    set_metadata(proto, metadata or {})
    onnx.save_model(proto, str(path), save_as_external_data=False)
    try:
        check = check_onnx(model, path, in_channels=in_channels, atol=atol, rtol=rtol)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    if not check.within_tolerance:
        path.unlink(missing_ok=True)
        raise ExportError(
            path,
            f"ONNX output differs from PyTorch by up to {check.max_abs_diff:.3g} "
            f"(tolerance {atol} + {rtol} x |logits|)",
        )
    return check


def _export_graph(model: torch.nn.Module, path: Path, in_channels: int, opset: int):
    """The ``torch.export`` based exporter's graph, batch/height/width dynamic, BatchNorm folded."""
    import torch

    # Batch 2 and a non-square example: torch.export specialises dimensions of size 1.
    example = torch.rand(2, in_channels, 64, 96)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    # The exporter prints its progress to stdout whatever `verbose` says; a library stays quiet.
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=(dims,),
                optimize=True,
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(path, f"torch.onnx.export failed: {exc}") from exc
    return program.model_proto


def check_onnx(
    model: torch.nn.Module,
    path: str | Path,
    *,
    in_channels: int,
    shapes: Sequence[tuple[int, int, int]] = CHECK_SHAPES,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ExportCheck:
    """Run ``path`` in ONNX Runtime and ``model`` in PyTorch on the same random inputs.

    Args:
        model: the PyTorch model the file was exported from.
        path: ONNX file with input :data:`INPUT_NAME`.
        in_channels: input channels.
        shapes: ``(N, H, W)`` input shapes to compare at.
        atol: absolute tolerance on logits.
        rtol: relative tolerance on logits.

    Returns:
        Largest absolute logit difference, the fraction of pixels whose 0.5-mask differs, and
        whether every difference is within ``atol + rtol * |torch|``.

    Raises:
        ExportError: the file cannot be loaded or run at one of the shapes.
    """
    import torch

    session = open_session(path, threads=None)
    rng = np.random.default_rng(0)
    worst, flipped, total, compared, ok = 0.0, 0, 0, [], True
    model = model.eval()
    for n, h, w in shapes:
        x = rng.random((n, in_channels, h, w), dtype=np.float32)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).float().numpy()
        try:
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        except Exception as exc:
            raise ExportError(path, f"ONNX Runtime failed on input {x.shape}: {exc}") from exc
        if got.shape != ref.shape:
            raise ExportError(path, f"output shape {got.shape} != PyTorch {ref.shape}")
        diff = np.abs(got - ref)
        worst = max(worst, float(diff.max()))
        ok = ok and bool((diff <= atol + rtol * np.abs(ref)).all())
        flipped += int(((got > 0) != (ref > 0)).sum())
        total += ref.size
        compared.append(x.shape)
    return ExportCheck(tuple(compared), worst, flipped / max(total, 1), ok)


def _name_dynamic_dims(proto: onnx.ModelProto) -> None:
    """Rename the exporter's symbolic dims (``s77``…) of input and output to batch/height/width."""
    names = {}
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    for axis, name in ((0, "batch"), (2, "height"), (3, "width")):
        if dims[axis].dim_param:
            names[dims[axis].dim_param] = name
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


@dataclass(frozen=True)
class ExportedModel:
    """The fp32 ONNX file of a checkpoint, its spec (also in the file) and the export check."""

    path: Path
    checkpoint: Path
    spec: ModelSpec
    check: ExportCheck


def export_model(checkpoint: str | Path, path: str | Path) -> ExportedModel:
    """Export a checkpoint to fp32 ONNX with its spec embedded (the pipeline's export step).

    Raises:
        CheckpointError: unreadable checkpoint.
        ExportError: export failed or does not match PyTorch.
    """
    from pbf_core.model.checkpoints import load_checkpoint

    model, spec = load_checkpoint(checkpoint)
    check = export_onnx(
        model, path, in_channels=spec.in_channels, metadata=spec_metadata(spec, "onnx-fp32")
    )
    return ExportedModel(Path(path), Path(checkpoint), spec, check)
