"""Hostile and heavy traffic against a real ``bentoml serve``: memory, refusals, latency.

The service serves the default U-Net (random weights unless ``--checkpoint``: memory and speed
do not depend on the weights) as int8, with its default settings (``PBF_SERVE_*`` variables in
the environment reach it). RSS is summed over the server's whole process tree.

Hostile phase (after a warm-up of valid requests):

- a thin 1x300,000 16-bit triplet, a 6000² triplet (over the default pixel limit), a 4096²
  triplet (the largest the defaults serve): status, seconds and RSS growth (peak over the
  warmed-up baseline) for each;
- 8 concurrent 6000² triplets and 8 concurrent 4096² triplets: statuses, peak growth, and
  whether a valid request is answered afterwards;
- 16 stalled uploads: 16 clients each send 120 MiB of a triplet upload and stop: RSS growth
  while they hang, and what they get back when the body timeout ends them.

Soak phase: ``--requests`` (default 10,000) valid 512² triplet requests at ``--concurrency``
(default 16); RSS sampled every second; the RSS slope (KB per request) fitted after the warm-up
(the first ``--warmup-fraction`` of the requests), p50/p95 latency, errors and 503s.

Results: ``benchmarks/results/soak.json`` and ``soak.md``.

    python benchmarks/soak.py                        # both phases (about 15 min on 2 cores)
    python benchmarks/soak.py --requests 2000 --skip-hostile
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

# the serving benchmark's model, uploads and server helpers
from serve import (
    RESULTS,
    _shoot,
    build_model,
    encode_forms,
    package_model,
    start_bentoml,
    stop_tree,
    uploads,
)

MIB = 1024**2


def rss_tree(pid: int) -> int:
    """Resident bytes of a process and all its children."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in (root, *root.children(recursive=True)):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def rss_by_process(pid: int) -> dict[str, int]:
    """RSS (MB) of each process of the tree, by pid and command."""
    import psutil

    root = psutil.Process(pid)
    out = {}
    for proc in (root, *root.children(recursive=True)):
        try:
            out[f"{proc.pid} {' '.join(proc.cmdline()[1:3])[:60]}"] = proc.memory_info().rss // MIB
        except psutil.NoSuchProcess:
            continue
    return out


class Sampler:
    """RSS of a process tree every ``interval`` seconds on a thread, with a caller's counter."""

    def __init__(self, pid: int, interval: float, count=lambda: 0) -> None:
        self.pid, self.interval, self.count = pid, interval, count
        self.samples: list[tuple[float, int, int]] = []  # (time, count, rss)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self.count(), rss_tree(self.pid)))
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(s[2] for s in self.samples)


def triplet_body(views: list[np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """A multipart a/b/c upload of three 16-bit arrays as PNGs."""
    import cv2

    files = {
        v: (f"{v}.png", cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes())
        for v, img in zip("abc", views, strict=True)
    }
    return encode_forms([files])[0]


def smooth_layer(height: int, width: int, seed: int) -> np.ndarray:
    """A legal-looking big 16-bit layer that compresses well (gradient + sparse bright spots)."""
    rng = np.random.default_rng(seed)
    row = np.linspace(9_000, 24_000, width, dtype=np.float32)
    img = np.broadcast_to(row, (height, width)).astype(np.uint16)
    for y, x in rng.integers(0, [height - 40, width - 40], size=(50, 2)):
        img[y : y + 30, x : x + 30] = 60_000
    return img


def post(url: str, body: tuple[bytes, dict[str, str]], timeout: float = 600) -> tuple[int, float]:
    """Status and seconds of one POST (status 0: the connection failed)."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/segment", body=body[0], headers=body[1])
        answer = conn.getresponse()
        answer.read()
        return answer.status, time.perf_counter() - t0
    except (OSError, http.client.HTTPException):
        return 0, time.perf_counter() - t0
    finally:
        conn.close()


def one_big(url: str, pid: int, name: str, body, copies: int, valid) -> dict:
    """``copies`` concurrent uploads of ``body``: statuses, seconds and peak RSS growth."""
    base = rss_tree(pid)
    with Sampler(pid, 0.05) as s, ThreadPoolExecutor(copies) as pool:
        answers = list(pool.map(lambda _: post(url, body), range(copies)))
    after = post(url, valid)[0]
    row = {
        "case": name,
        "copies": copies,
        "upload_mib": round(len(body[0]) / MIB, 1),
        "statuses": sorted(a[0] for a in answers),
        "seconds_max": round(max(a[1] for a in answers), 2),
        "rss_base_mb": round(base / MIB),
        "rss_growth_peak_mb": round((s.peak - base) / MIB),
        "valid_request_after": after,
    }
    print(json.dumps(row), flush=True)
    return row


def stalled_uploads(url: str, pid: int, clients: int, mib: int) -> dict:
    """``clients`` uploads that send ``mib`` MiB of a triplet body, then stop sending."""
    host, port = url.removeprefix("http://").split(":")
    boundary = "stall"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="a"; filename="a.png"\r\n\r\n'
    declared = (mib + 8) * MIB
    chunk = b"\0" * MIB
    base = rss_tree(pid)
    socks = []
    t0 = time.perf_counter()
    with Sampler(pid, 0.1) as s:
        for _ in range(clients):
            sock = socket.create_connection((host, int(port)), timeout=600)
            sock.sendall(
                f"POST /segment HTTP/1.1\r\nHost: {host}\r\nContent-Length: {declared}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n{head}".encode()
            )
            for _ in range(mib):
                sock.sendall(chunk)
            socks.append(sock)
        time.sleep(3)
        held = rss_tree(pid)
    answers = []
    for sock in socks:
        sock.settimeout(600)
        answers.append(sock.recv(200).split(b"\r\n", 1)[0].decode(errors="replace"))
        sock.close()
    row = {
        "case": "stalled uploads",
        "clients": clients,
        "sent_mib_each": mib,
        "rss_base_mb": round(base / MIB),
        "rss_growth_held_mb": round((held - base) / MIB),
        "rss_growth_peak_mb": round((s.peak - base) / MIB),
        "answers": sorted(set(answers)),
        "seconds_until_answered": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def hostile(url: str, pid: int, valid) -> list[dict]:
    thin = triplet_body([np.full((1, 300_000), 20_000, np.uint16)] * 3)
    rows = [one_big(url, pid, "thin 1x300,000 triplet", thin, 1, valid)]
    huge = triplet_body([smooth_layer(6000, 6000, s) for s in range(3)])
    rows.append(one_big(url, pid, "6000² triplet", huge, 1, valid))
    del huge
    limit = triplet_body([smooth_layer(4096, 4096, s) for s in range(3)])
    rows.append(one_big(url, pid, "4096² triplet", limit, 1, valid))
    rows.append(one_big(url, pid, "4096² triplet", limit, 8, valid))
    del limit
    huge = triplet_body([smooth_layer(6000, 6000, s) for s in range(3)])
    rows.append(one_big(url, pid, "6000² triplet", huge, 8, valid))
    del huge
    rows.append(stalled_uploads(url, pid, 16, 120))
    return rows


def soak(url: str, pid: int, forms, args) -> dict:
    """``args.requests`` valid requests at ``args.concurrency``, RSS sampled every second."""
    done = [0]
    counting = _Counted(forms, done)
    with Sampler(pid, 1.0, lambda: done[0]) as s:
        latencies, errors, wall, _ = _shoot(url, counting, args.concurrency, args.requests)
    time.sleep(30)
    idle = rss_tree(pid)
    start = int(args.requests * args.warmup_fraction)
    points = np.array([(c, r) for _, c, r in s.samples if c >= start], dtype=np.float64)
    slope = np.polyfit(points[:, 0], points[:, 1], 1)[0] / 1024 if len(points) > 2 else None
    ms = np.array(latencies) * 1000
    row = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "warmup_requests": start,
        "throughput_rps": round(args.requests / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "errors": len(errors),
        "busy_503": sum(e.startswith("503") for e in errors),
        "first_error": errors[0] if errors else None,
        "rss_start_mb": round(s.samples[0][2] / MIB),
        "rss_after_warmup_mb": round(points[0, 1] / MIB) if len(points) else None,
        "rss_end_mb": round(s.samples[-1][2] / MIB),
        "rss_after_30s_idle_mb": round(idle / MIB),
        "rss_by_process_end_mb": rss_by_process(pid),
        "rss_slope_kb_per_request": round(slope, 2) if slope is not None else None,
        "samples": [
            (c, round(r / MIB, 1)) for _, c, r in s.samples[:: max(1, len(s.samples) // 60)]
        ],
    }
    print(json.dumps({k: v for k, v in row.items() if k != "samples"}), flush=True)
    return row


class _Counted(list):
    """The forms, counting how many were handed out (the client takes one per request)."""

    def __init__(self, forms, done: list[int]) -> None:
        super().__init__(forms)
        self._done = done

    def __getitem__(self, i):
        self._done[0] += 1
        return super().__getitem__(i)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Hostile and heavy traffic (soak)",
        "",
        f"{report['when']} on {m['cpu_count']} CPU cores ({m['processor']}), load average "
        f"before {m['loadavg_start']}; `bentoml serve` with default settings "
        f"({report['settings']}); model {report['model']}. RSS summed over the server's process "
        "tree.",
        "",
    ]
    if report.get("hostile"):
        lines += [
            "| case | copies | upload (MiB) | statuses | seconds (max) | RSS base (MB) "
            "| RSS growth, peak (MB) | valid request after |",
            "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        for r in report["hostile"]:
            if "clients" in r:
                continue
            lines.append(
                f"| {r['case']} | {r['copies']} | {r['upload_mib']} | {r['statuses']} | "
                f"{r['seconds_max']} | {r['rss_base_mb']} | {r['rss_growth_peak_mb']} | "
                f"{r['valid_request_after']} |"
            )
        st = next(r for r in report["hostile"] if "clients" in r)
        lines += [
            "",
            f"{st['clients']} stalled uploads ({st['sent_mib_each']} MiB sent each, then "
            f"nothing): RSS growth while held {st['rss_growth_held_mb']} MB (peak "
            f"{st['rss_growth_peak_mb']} MB); answered {st['answers']} after "
            f"{st['seconds_until_answered']} s.",
        ]
    s = report.get("soak")
    if s:
        lines += [
            "",
            f"Soak: {s['requests']:,} valid 512² triplet requests at concurrency "
            f"{s['concurrency']}: {s['throughput_rps']} req/s, p50 {s['p50_ms']:.0f} ms, p95 "
            f"{s['p95_ms']:.0f} ms, {s['errors']} errors ({s['busy_503']} busy 503s). RSS "
            f"{s['rss_start_mb']} MB at the start, {s['rss_after_warmup_mb']} MB after the "
            f"warm-up ({s['warmup_requests']:,} requests), {s['rss_end_mb']} MB at the end, "
            f"{s['rss_after_30s_idle_mb']} MB after 30 s idle; **slope after the warm-up "
            f"{s['rss_slope_kb_per_request']} KB/request**.",
        ]
    lines += ["", report["note"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="trained checkpoint (default: random init)")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup-fraction", type=float, default=0.2)
    parser.add_argument("--skip-hostile", action="store_true")
    parser.add_argument("--skip-soak", action="store_true")
    parser.add_argument("--name", default="soak", help="results file stem")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="pbf-bench-soak-") as tmp:
        work = Path(tmp)
        print("building and packaging the model...", flush=True)
        home = package_model(build_model(work, args.checkpoint, 512), work / "bentoml")
        forms = encode_forms(uploads(512, 8))
        proc, url = start_bentoml(home, work / "serve.log")
        report: dict = {}
        try:
            _shoot(f"{url}/segment", forms, args.concurrency, 64)  # warm-up
            if not args.skip_hostile:
                report["hostile"] = hostile(url, proc.pid, forms[0])
            if not args.skip_soak:
                report["soak"] = soak(f"{url}/segment", proc.pid, forms, args)
        finally:
            stop_tree(proc)
    settings = {k: v for k, v in os.environ.items() if k.startswith("PBF_SERVE_")}
    report.update(
        when=datetime.now(UTC).isoformat(timespec="seconds"),
        machine={
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_start": load_start,
        },
        settings=", ".join(f"{k}={v}" for k, v in settings.items()) or "no PBF_SERVE_* set",
        model=str(args.checkpoint) if args.checkpoint else "U-Net mobilenet_v2, random init",
        note="Growth is the peak RSS of the tree while the requests ran over the RSS just "
        "before; the soak slope is a least-squares fit of RSS against requests done.",
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
