"""Uploaded layers: which fields a request may send, their checks, and decoding them.

A request sends one layer: ``image`` (one view, or an RGB file of the a/b/c views) or the triplet
``a``, ``b``, ``c``; one file per field. Everything refused is an :class:`UploadError` that
answers itself as 4xx JSON naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from starlette.responses import JSONResponse

from pbf_core.data.imaging import decode_image
from pbf_core.errors import ImageReadError

SINGLE_FIELD = "image"
TRIPLET_FIELDS = ("a", "b", "c")
UPLOAD_FIELDS = (SINGLE_FIELD, *TRIPLET_FIELDS)

Mode = Literal["single", "triplet"]
#: The decoded upload: one ``(H, W)``/``(H, W, C)`` array, or ``{"a", "b", "c"}`` arrays.
RawLayer = np.ndarray | dict[str, np.ndarray]


class UploadError(ValueError):
    """A request the service cannot use: HTTP status, the field at fault and the reason.

    ``kind`` says what was wrong: ``request``, ``size``, ``timeout``, ``image``, ``shape``,
    ``layer_set``, ``model``, ``busy`` or ``auth``.
    """

    def __init__(
        self,
        status: int,
        field: str | None,
        reason: str,
        kind: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status, self.field, self.reason, self.kind = status, field, reason, kind
        self.headers = dict(headers or {})
        super().__init__(reason)

    def response(self) -> JSONResponse:
        """The 4xx/5xx JSON answer: ``error``, ``kind`` and ``field`` (and any ``headers``)."""
        body = {"error": self.reason, "kind": self.kind, "field": self.field}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def choose_mode(uploads: Mapping[str, Sequence[Path]]) -> Mode:
    """Whether the upload is a single image or a triplet.

    Args:
        uploads: field → the files sent in it (empty when not sent).

    Raises:
        UploadError: more than one file in a field, no file, ``image`` mixed with a triplet, or
            an incomplete triplet (all 400).
    """
    sent = [k for k in UPLOAD_FIELDS if uploads.get(k)]
    triplet = [k for k in TRIPLET_FIELDS if k in sent]
    for field in sent:
        if len(uploads[field]) > 1:
            reason = f"{len(uploads[field])} files in field {field!r}; send one file per field"
            raise UploadError(400, field, reason, "request")
    if not sent:
        reason = "no file uploaded: send 'image', or 'a', 'b' and 'c'"
        raise UploadError(400, None, reason, "request")
    if SINGLE_FIELD in sent and triplet:
        reason = (
            f"send either 'image' or the triplet 'a', 'b', 'c', not both (got {', '.join(sent)})"
        )
        raise UploadError(400, SINGLE_FIELD, reason, "request")
    if triplet and len(triplet) != len(TRIPLET_FIELDS):
        missing = [k for k in TRIPLET_FIELDS if k not in triplet]
        reason = f"a triplet needs 'a', 'b' and 'c'; missing {', '.join(repr(m) for m in missing)}"
        raise UploadError(400, missing[0], reason, "request")
    return "single" if SINGLE_FIELD in sent else "triplet"


def read_upload(
    field: str, path: Path, max_mb: float, max_pixels: int, max_aspect: float | None = None
) -> np.ndarray:
    """The uploaded file of ``field`` decoded as stored (``(H, W)`` or ``(H, W, C)``, uint8/16).

    Raises:
        UploadError: the file is over ``max_mb`` MiB (413), or not an image the service can
            read, or over ``max_pixels`` pixels, or longer than ``max_aspect`` times its width
            (or the reverse) (422); sizes are checked in the file's header, before decoding.
    """
    size = path.stat().st_size
    if size > int(max_mb * 1024**2):
        reason = f"upload {field!r}: {size:,} bytes exceeds {max_mb:g} MiB"
        raise UploadError(413, field, reason, "size")
    try:
        return decode_image(
            path.read_bytes(), f"upload {field!r}", max_pixels=max_pixels, max_aspect=max_aspect
        )
    except ImageReadError as exc:
        raise UploadError(422, field, str(exc), "image") from None


def read_uploads(
    uploads: Mapping[str, Sequence[Path]],
    max_mb: float,
    max_pixels: int,
    max_aspect: float | None = None,
) -> tuple[RawLayer, Mode]:
    """The decoded single image or ``{a, b, c}`` mapping, and the mode.

    Raises:
        UploadError: see :func:`choose_mode` and :func:`read_upload`.
    """
    mode = choose_mode(uploads)
    limits = (max_mb, max_pixels, max_aspect)
    if mode == "single":
        return read_upload(SINGLE_FIELD, uploads[SINGLE_FIELD][0], *limits), mode
    return {k: read_upload(k, uploads[k][0], *limits) for k in TRIPLET_FIELDS}, mode
