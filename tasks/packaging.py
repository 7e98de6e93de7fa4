"""Packaging: the registry's champion → one model in the BentoML model store, ready to serve.

A bento built from the store carries the ONNX files and their metadata, so its container needs
no tracking server. The packaged model is named after the registered model
(``pbf-defect-segmenter``) and holds the int8 file the service serves by default and, when
registered, its fp32 sibling (``PBF_SERVE_VARIANT=fp32``). Its version is derived from the
registry versions and the file contents, so packaging the same champion twice is a no-op.

Metadata of the BentoML model (the contract ``service.py`` reads):

- ``format``: 1
- ``registry_name``, ``source`` (``models:/<name>@<alias>`` or ``files``), ``run_id``,
  ``data_digest``
- ``default_variant``: ``int8`` (or ``fp32`` when only that file was given)
- ``variants``: ``{variant: {"file", "version" (registry version or None), "sha256"}}``
- ``spec``: the :class:`~pbf_core.model.spec.ModelSpec` fields from the ONNX ``pbf.*`` metadata

Where the store is: ``BENTOML_HOME``, else ``<state dir>/bentoml`` (``PBF_STATE_DIR``, default
``.pbf``), like everything else the pipeline writes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pbf_core.config import Settings
from pbf_core.deploy.metadata import read_onnx_spec
from pbf_core.errors import ExportError, SubjectError
from pbf_core.evaluation.promotion import CHAMPION
from pbf_core.files import file_digest

PACKAGE_FORMAT = 1
VARIANTS = ("int8", "fp32")
#: Metadata keys of the ONNX files that are not part of the spec (and may differ by variant).
_VARIANT_KEYS = {"variant", "quantization"}


class PackagingError(SubjectError, ValueError):
    """The model to package is missing, inconsistent or not a pbf ONNX file; names which."""


def use_state_store(settings: Settings | None = None) -> Path:
    """Point BentoML at ``<state dir>/bentoml`` unless ``BENTOML_HOME`` is set; return the home.

    Must run before BentoML first touches its store (BentoML reads the variable once).
    """
    settings = settings or Settings()
    home = os.environ.setdefault("BENTOML_HOME", str((settings.state_dir / "bentoml").resolve()))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    return Path(home)


def _spec_of(path: Path) -> dict[str, Any]:
    """The spec fields of an ONNX file's ``pbf.*`` metadata, validated as a ModelSpec."""
    try:
        return read_onnx_spec(path).model_dump(mode="json")
    except ExportError as exc:
        raise PackagingError(str(path), exc.reason) from None


def _without_none(value: Any) -> Any:
    """BentoML metadata holds basic types only: drop None entries (readers use ``.get``)."""
    if isinstance(value, Mapping):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_none(v) for v in value]
    return value


def package_onnx(
    files: Mapping[str, str | Path],
    *,
    name: str | None = None,
    versions: Mapping[str, str | None] | None = None,
    source: str = "files",
    run_id: str | None = None,
) -> str:
    """Write ONNX variants with their metadata into the BentoML model store.

    Args:
        files: variant (``int8``/``fp32``) → ONNX file written by the export or quantize step
            (its ``pbf.*`` metadata carries the spec).
        name: BentoML model name; the registry name by default.
        versions: variant → registry version, recorded for the service's answers.
        source: where the files came from, e.g. ``models:/pbf-defect-segmenter@champion``.
        run_id: MLflow run that produced them.

    Returns:
        The BentoML model tag (``name:version``); an existing identical model is reused.

    Raises:
        PackagingError: unknown variant, missing file, no spec, or variants with different specs.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    name = name or Settings().registry_name
    versions = dict(versions or {})
    paths, spec = _checked_files(files, source)
    digests = {v: file_digest(p) for v, p in paths.items()}
    registry = "-".join(f"{versions[v]}" for v in paths if versions.get(v)) or "local"
    content = hashlib.sha256("".join(digests[v] for v in paths).encode()).hexdigest()[:12]
    tag = f"{name}:{re.sub(r'[^a-z0-9._-]', '-', f'r{registry}-{content}'.lower())}"
    try:
        return str(bentoml.models.get(tag).tag)
    except NotFound:
        pass
    metadata = {
        "format": PACKAGE_FORMAT,
        "registry_name": name,
        "source": source,
        "run_id": run_id,
        "data_digest": spec.get("train_data_digest"),
        "default_variant": "int8" if "int8" in paths else "fp32",
        "variants": {
            v: {"file": f"{v}.onnx", "version": versions.get(v), "sha256": digests[v]}
            for v in paths
        },
        "spec": spec,
    }
    labels = {"variants": "-".join(paths), "source": "registry" if versions else "files"}
    with bentoml.models.create(tag, labels=labels, metadata=_without_none(metadata)) as model:
        for variant, path in paths.items():
            shutil.copyfile(path, model.path_of(f"{variant}.onnx"))
    return tag


def _checked_files(
    files: Mapping[str, str | Path], source: str
) -> tuple[dict[str, Path], dict[str, Any]]:
    """The variants' files in :data:`VARIANTS` order and the spec they share.

    Raises:
        PackagingError: unknown variant, missing file, no spec, or inputs that differ.
    """
    unknown = sorted(set(files) - set(VARIANTS))
    if unknown or not files:
        raise PackagingError(source, f"variants must be among {VARIANTS}, got {sorted(files)}")
    paths = {v: Path(files[v]) for v in VARIANTS if v in files}
    for variant, path in paths.items():
        if not path.is_file():
            raise PackagingError(str(path), f"{variant} ONNX file not found")
    specs = {v: _spec_of(p) for v, p in paths.items()}
    # What the input of both must be agrees; each file carries its own decision threshold (the
    # int8 one is matched to the fp32 masks by the quantize step), which the service reads.
    served = ("views", "normalization", "percentiles", "tile_size", "tile_overlap")
    first = next(iter(specs.values()))
    for variant, spec in specs.items():
        differ = [k for k in served if spec[k] != first[k]]
        if differ:
            raise PackagingError(source, f"{variant} spec differs in {', '.join(differ)}")
    return paths, first


def package_champion(
    alias: str = CHAMPION, *, settings: Settings | None = None, with_fp32: bool = True
) -> str:
    """Download ``models:/<registry>@<alias>`` (int8) and ``@<alias>-fp32`` and package them.

    Args:
        alias: registry alias of the int8 variant; the fp32 sibling is ``<alias>-fp32``.
        settings: tracking URI and registry name (``PBF_*`` environment by default).
        with_fp32: also package the fp32 sibling (needed for ``PBF_SERVE_VARIANT=fp32``).

    Returns:
        The BentoML model tag.

    Raises:
        PackagingError: no such alias, or the two aliases point at different training runs.
    """
    from tasks.tracking.registry import download_alias
    from tasks.tracking.store import resolve_store

    store = resolve_store(settings)
    source = f"models:/{store.registry_name}@{alias}"
    with tempfile.TemporaryDirectory(prefix="pbf-package-") as tmp:
        found = {"int8": download_alias(alias, Path(tmp) / "int8", settings)}
        if found["int8"] is None:
            raise PackagingError(source, "no model version has this alias; run the pipeline first")
        if with_fp32:
            fp32 = download_alias(f"{alias}-fp32", Path(tmp) / "fp32", settings)
            if fp32 is None:
                raise PackagingError(f"{source}-fp32", "alias not set: no fp32 sibling to package")
            int8 = found["int8"]
            if fp32.run_id != int8.run_id:
                raise PackagingError(
                    source,
                    f"int8 v{int8.version} (run {int8.run_id}) and fp32 v{fp32.version} (run "
                    f"{fp32.run_id}) come from different runs; the aliases moved while "
                    "packaging, run it again",
                )
            found["fp32"] = fp32
        return package_onnx(
            {v: f.path for v, f in found.items()},
            name=store.registry_name,
            versions={v: f.version for v, f in found.items()},
            source=source,
            run_id=found["int8"].run_id,
        )
