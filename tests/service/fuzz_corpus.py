"""A generated corpus of hostile requests to the service (seeded: the same cases every run).

Each case is a :class:`Case`: method, path, headers and a raw body, built by one family
function. The families: corrupt (bit-flipped) and truncated images, decompression bombs and
absurd dimensions, foreign formats and odd image modes, file names (path traversal, control
characters, over-long), form structure (unknown, repeated, mixed and text fields), content types
(urlencoded, JSON, none), oversized and lying bodies, methods and paths, random bytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from service_support import layer, png_bytes

BOUNDARY = "fuzzBoundary7MA4YWxkTrZu0gW"
SEED = 20261201


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    path: str = "/segment"


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = BOUNDARY) -> bytes:
    """A multipart body of ``(field, filename or None for a text field, content)`` parts."""
    out = io.BytesIO()
    for name, filename, content in parts:
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out.write(f"Content-Disposition: {disposition}\r\n".encode("utf-8", "surrogateescape"))
        if filename is not None:
            out.write(b"Content-Type: application/octet-stream\r\n")
        out.write(b"\r\n" + content + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def form_case(name: str, parts, path: str = "/segment") -> Case:
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    return Case(name, multipart(parts), {"content-type": ctype}, path=path)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, depth: int = 8, color: int = 0) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with a few bytes of (zero) pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def good_files() -> dict[str, bytes]:
    return {v: png_bytes(layer(seed=i)) for i, v in enumerate("abc")}


def bit_flips(rng: np.random.Generator, count: int) -> list[Case]:
    good = good_files()
    cases = []
    for i in range(count):
        data = bytearray(good["a"])
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 9))):
            data[pos] ^= 1 << int(rng.integers(0, 8))
        parts = [("a", "a.png", bytes(data)), ("b", "b.png", good["b"]), ("c", "c.png", good["c"])]
        cases.append(form_case(f"bitflip-{i}", parts, "/segment" if i % 2 else "/overlay"))
    return cases


def truncations(rng: np.random.Generator, count: int) -> list[Case]:
    good = good_files()["a"]
    cuts = sorted(int(c) for c in rng.integers(1, len(good) - 1, size=count))
    return [form_case(f"truncated-{c}", [("image", "x.png", good[:c])]) for c in cuts]


def bombs() -> list[Case]:
    dims = [
        (1, 300_000), (300_000, 1), (20_000, 20_000), (65_535, 65_535), (2**31 - 1, 1),
        (0, 0), (0, 512), (1, 1), (5_000, 60), (100_000, 3), (2**31 - 1, 2**31 - 1),
    ]  # fmt: skip
    cases = [form_case(f"png-{w}x{h}", [("image", "b.png", png_claiming(w, h))]) for w, h in dims]
    for depth, color in [(16, 0), (16, 2), (1, 0), (8, 3), (16, 6), (7, 0), (8, 9)]:
        data = png_claiming(4_000, 4_000, depth, color)
        cases.append(form_case(f"png-4000-depth{depth}-color{color}", [("image", "b.png", data)]))
    triplet = [(v, f"{v}.png", png_claiming(1, 300_000, 16)) for v in "abc"]
    cases.append(form_case("thin-triplet-1x300000", triplet))
    return cases


def formats() -> list[Case]:
    grey = Image.fromarray(layer(dtype=np.uint8))
    rgb = grey.convert("RGB")
    files = {
        "gif": _encoded(grey, "GIF"),
        "webp": _encoded(rgb, "WEBP"),
        "ico": _encoded(rgb.resize((64, 64)), "ICO"),
        "tga": _encoded(rgb, "TGA"),
        "ppm": _encoded(rgb, "PPM"),
        "pdf": _encoded(rgb, "PDF"),
        "tiff-float": _encoded(Image.fromarray(np.ones((32, 32), np.float32)), "TIFF"),
        "tiff-int32": _encoded(Image.fromarray(np.ones((32, 32), np.int32)), "TIFF"),
        "jpeg-cmyk": _encoded(rgb.convert("CMYK"), "JPEG"),
        "jpeg-truncated": _encoded(rgb, "JPEG")[:500],
        "png-palette": _encoded(rgb.convert("P"), "PNG"),
        "png-la": _encoded(grey.convert("LA"), "PNG"),
        "png-rgba": _encoded(rgb.convert("RGBA"), "PNG"),
        "png-1bit": _encoded(grey.convert("1"), "PNG"),
        "bmp": _encoded(rgb, "BMP"),
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg"><image href="http://127.0.0.1:1/x"/></svg>',
        "html": b"<html><script>alert(1)</script></html>",
        "zip": b"PK\x03\x04" + bytes(100),
        "gzip": zlib.compress(bytes(10_000)),
        "text-url": b"http://127.0.0.1:1/evil.png",
        "file-url": b"file:///etc/passwd",
        "empty": b"",
        "one-byte": b"\x89",
        "png-magic-only": b"\x89PNG\r\n\x1a\n",
    }
    cases = [form_case(f"format-{k}", [("image", f"x.{k}", v)]) for k, v in files.items()]
    for k in ("gif", "tiff-float", "png-palette", "png-rgba", "jpeg-cmyk"):
        parts = [("a", "a", files[k]), ("b", "b", files[k]), ("c", "c", files[k])]
        cases.append(form_case(f"triplet-format-{k}", parts, "/overlay"))
    return cases


def shapes() -> list[Case]:
    cases = []
    sizes = [((96, 128), (96, 128), (64, 64)), ((96, 128), (128, 96), (96, 128)),
             ((1, 1), (1, 1), (1, 1)), ((2, 2000), (2, 2000), (2, 2000)), ((40, 41), (40, 41), (41, 40))]  # fmt: skip
    for i, dims in enumerate(sizes):
        parts = [
            (v, f"{v}.png", png_bytes(layer(size=s, spot=None)))
            for v, s in zip("abc", dims, strict=True)
        ]
        cases.append(form_case(f"shapes-{i}", parts))
    mixed = [("a", "a.png", png_bytes(layer())), ("b", "b.png", png_bytes(layer(dtype=np.uint8)))]
    mixed.append(("c", "c.png", png_bytes(np.stack([layer()] * 3, axis=2))))
    cases.append(form_case("mixed-depth-and-channels", mixed))
    return cases


def filenames() -> list[Case]:
    png = good_files()["a"]
    names = [
        "../../../../etc/passwd", "..\\..\\windows\\win.ini", "/etc/shadow", "C:\\boot.ini",
        "a/../../b.png", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "....//....//x", "x.png\x00.txt",
        "\r\nX-Injected: 1", "con", "nul.png", "", " ", ".", "..", "~/.ssh/id_rsa",
        "x" * 200, "x" * 201, "x" * 244, "x" * 255, "x" * 256, "x" * 1_000, "é" * 200, "🙂" * 70, "\u202egnp.exe", "a;rm -rf /",
        "$(reboot).png", "`id`.png", "<script>.png", "x'\"\\.png", "file:///etc/passwd",
        "http://127.0.0.1:1/x.png", "\\\\server\\share\\x.png",
    ]  # fmt: skip
    return [form_case(f"filename-{i}", [("image", n, png)]) for i, n in enumerate(names)]


def structures() -> list[Case]:
    g = good_files()
    trip = [(v, f"{v}.png", g[v]) for v in "abc"]
    forms = {
        "unknown-field": [("x", "x.png", g["a"])],
        "unknown-text-field": [("note", None, b"hello"), *trip],
        "upper-case-field": [("IMAGE", "x.png", g["a"])],
        "field-with-spaces": [(" image ", "x.png", g["a"])],
        "text-in-image": [("image", None, b"http://127.0.0.1:1/x.png")],
        "text-in-a": [("a", None, b"abc"), *trip[1:]],
        "image-twice": [("image", "1.png", g["a"]), ("image", "2.png", g["b"])],
        "a-twice": [*trip, ("a", "a2.png", g["a"])],
        "image-and-a": [("image", "x.png", g["a"]), trip[0]],
        "only-b": [trip[1]],
        "a-and-c": [trip[0], trip[2]],
        "nine-parts": trip * 3,
        "thirty-parts": [("a", f"{i}.png", b"1") for i in range(30)],
        "no-parts": [],
        "empty-field-name": [("", "x.png", g["a"])],
        "quote-in-field": [('im"age', "x.png", g["a"])],
        "long-field-name": [("f" * 10_000, "x.png", g["a"])],
        "huge-text-field": [("image", None, b"x" * 900_000)],
    }
    cases = [form_case(f"form-{k}", v) for k, v in forms.items()]
    raw = {
        "no-boundary": (b"--x\r\n\r\n", "multipart/form-data"),
        "wrong-boundary": (multipart(trip, "other"), f"multipart/form-data; boundary={BOUNDARY}"),
        "no-closing": (multipart(trip)[:-40], f"multipart/form-data; boundary={BOUNDARY}"),
        "garbage": (b"\x00\xff" * 500, f"multipart/form-data; boundary={BOUNDARY}"),
        "header-only": (f"--{BOUNDARY}\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"),
        "no-disposition": (
            f"--{BOUNDARY}\r\nContent-Type: image/png\r\n\r\nabc\r\n--{BOUNDARY}--\r\n".encode(),
            f"multipart/form-data; boundary={BOUNDARY}",
        ),
        "boundary-too-long": (b"--" + b"b" * 5000, "multipart/form-data; boundary=" + "b" * 5000),
        "charset-junk": (multipart(trip), f"multipart/form-data; boundary={BOUNDARY}; charset=x"),
        "mixed-not-form": (multipart(trip), f"multipart/mixed; boundary={BOUNDARY}"),
        "upper-case-type": (multipart(trip), f"MULTIPART/FORM-DATA; boundary={BOUNDARY}"),
    }
    cases += [Case(f"raw-{k}", body, {"content-type": t}) for k, (body, t) in raw.items()]
    return cases


def content_types() -> list[Case]:
    url = b"image=http%3A%2F%2F127.0.0.1%3A1%2Fx.png"
    many = "&".join(f"f{i}=1" for i in range(1_500)).encode()
    bodies = {
        "urlencoded-url": (url, "application/x-www-form-urlencoded"),
        "urlencoded-1500-fields": (many, "application/x-www-form-urlencoded"),
        "urlencoded-triplet": (b"a=http://x/a&b=http://x/b&c=http://x/c", "application/x-www-form-urlencoded"),
        "json-url": (b'{"image": "http://127.0.0.1:1/x.png"}', "application/json"),
        "json-triplet": (b'{"a": "file:///etc/passwd", "b": "x", "c": "y"}', "application/json"),
        "json-broken": (b"{oops", "application/json"),
        "json-deep": (b"[" * 10_000 + b"]" * 10_000, "application/json"),
        "json-list": (b"[1, 2, 3]", "application/json"),
        "xml": (b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><x>&e;</x>", "application/xml"),
        "text": (b"hello", "text/plain"),
        "octet-stream": (good_files()["a"], "application/octet-stream"),
        "png-body": (good_files()["a"], "image/png"),
        "no-type-with-body": (b"abc", ""),
        "garbage-type": (b"abc", "\x01\x02"),
        "msgpack": (b"\x81\xa5image\xa3abc", "application/msgpack"),
        "ndjson": (b'{"image": "x"}\n', "application/x-ndjson"),
    }  # fmt: skip
    cases = []
    for k, (body, ctype) in bodies.items():
        headers = {"content-type": ctype} if ctype else {}
        cases += [
            Case(f"type-{k}{p[1:4]}", body, headers, path=p) for p in ("/segment", "/overlay")
        ]
    return cases


def sizes() -> list[Case]:
    trip = [(v, f"{v}.png", good_files()[v]) for v in "abc"]
    over = [("image", "x.png", np.random.default_rng(1).bytes(1_200_000))]
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    return [
        form_case("file-over-limit", over),
        form_case("triplet-files-over-limit", [(v, "x", b"\x89PNG" + bytes(1_100_000)) for v in "abc"]),
        Case("body-over-limit", multipart(trip) + bytes(4_500_000), {"content-type": ctype}),
        Case("declared-huge-length", b"x", {"content-type": ctype, "content-length": "99999999999"}),
        Case("declared-negative-length", b"", {"content-type": ctype, "content-length": "-1"}),
        Case("declared-junk-length", b"", {"content-type": ctype, "content-length": "12abc"}),
        Case("declared-short-length", multipart(trip), {"content-type": ctype, "content-length": "10"}),
    ]  # fmt: skip


def methods_and_paths() -> list[Case]:
    form = multipart([("image", "x.png", good_files()["a"])])
    ctype = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    cases = [Case(f"method-{m}", form, ctype, method=m) for m in ("GET", "PUT", "DELETE", "PATCH")]
    cases.append(Case("method-OPTIONS", b"", {}, method="OPTIONS"))
    paths = [
        "/segment/", "/segment?x=1", "/segment?image=http://127.0.0.1:1/x.png", "//segment",
        "/SEGMENT", "/segment%2f..%2fmodel", "/static/../service.py", "/static/%2e%2e/service.py",
        "/static/..%2f..%2fservice.py", "/model/..", "/does-not-exist", "/segment;x",
        "/" + "a" * 5_000, "/overlay?" + "&".join(f"p{i}=1" for i in range(2_000)),
    ]  # fmt: skip
    cases += [Case(f"path-{i}", form, ctype, path=p) for i, p in enumerate(paths)]
    cases += [Case(f"get-path-{i}", method="GET", path=p) for i, p in enumerate(paths[6:10])]
    weird = {"x-forwarded-host": "evil.example", "host": "evil.example", "expect": "100-continue"}
    cases += [Case(f"header-{k}", form, {**ctype, k: v}) for k, v in weird.items()]
    return cases


def random_bytes(rng: np.random.Generator, count: int) -> list[Case]:
    cases = []
    for i in range(count):
        size = int(rng.integers(0, 4_000))
        blob = rng.bytes(size)
        if i % 2:
            cases.append(form_case(f"random-file-{i}", [("image", "r.bin", blob)]))
        else:
            ctype = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
            cases.append(Case(f"random-body-{i}", blob, ctype, path="/overlay"))
    return cases


def corpus() -> list[Case]:
    """Every case, in a fixed order."""
    rng = np.random.default_rng(SEED)
    cases = [
        *bit_flips(rng, 60), *truncations(rng, 30), *bombs(), *formats(), *shapes(),
        *filenames(), *structures(), *content_types(), *sizes(), *methods_and_paths(),
        *random_bytes(rng, 40),
    ]  # fmt: skip
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), "fuzz case names must be unique"
    return cases
