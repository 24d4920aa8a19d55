"""Serving latency and throughput, one product per request (``python benchmarks/run.py --sections serving``).

A server is started per scenario (``deepfusion serve DIR`` in a process of its own, as a user runs it) and a client
in this process sends one product per ``POST /v1/predict`` from 1 or 4 threads, each with its own keep-alive
connection. "new image": every request carries a photo the server has not seen (its embedding cache cannot help);
"cached image": the same few products again and again after one warm-up pass, so the server reads their
embeddings from its cache. Latency is the client's wall time per request (send to parsed answer); throughput is
requests / wall time of the whole scenario. Client and server share the machine's cores, as they would on one
small host.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

log = logging.getLogger("benchmark.latency")
FIELDS = ("gender", "masterCategory", "subCategory", "baseColour", "season", "year", "usage", "productDisplayName")


def payloads(products: Any, n: int) -> list[dict[str, Any]]:
    """``n`` products of a loaded catalog (with an image each) as the service's request items, photo inline."""
    out = []
    for row in products[products["image_path"].notna()].head(n).to_dict("records"):
        item: dict[str, Any] = {"id": str(row["id"])}
        for f in FIELDS:
            value = row.get(f)
            if value is not None and value == value:  # not NaN
                item[f] = int(value) if f == "year" else value
        item["image_base64"] = base64.b64encode(Path(row["image_path"]).read_bytes()).decode("ascii")
        out.append(item)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(model: str | Path, extra: Sequence[str] = (), env: dict[str, str] | None = None):  # noqa: ANN201
    """``deepfusion serve model`` on a free local port; yields its base URL once /healthz answers."""
    port = _free_port()
    cmd = [sys.executable, "-c", "from deepfusion.cli import app; app()", "serve", str(model), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, *extra], env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start within 180 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def load(url: str, items: Sequence[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """Send every item as its own request from ``concurrency`` threads; latency percentiles and throughput."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    shares = [list(items[i::concurrency]) for i in range(concurrency)]

    def worker(share: list[dict[str, Any]]) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            for item in share:
                start = time.perf_counter()
                response = client.post("/v1/predict", json={"products": [item]})
                response.json()
                took = time.perf_counter() - start
                with lock:
                    latencies.append(took)
                    if response.status_code != 200:
                        errors.append(f"{response.status_code}: {response.text[:200]}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in shares]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed; first: {errors[0]}")
    ms = np.array(latencies) * 1000
    return {
        "requests": len(ms),
        "concurrency": concurrency,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "requests_per_s": len(ms) / wall,
        "seconds": wall,
    }


def scenarios(
    model: str | Path,
    items: Sequence[dict[str, Any]],
    *,
    requests: int = 300,
    cached_products: int = 32,
    concurrencies: Sequence[int] = (1, 4),
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """New-image and cached-image scenarios at each concurrency, each on a fresh server. ``items`` must hold at
    least ``requests * len(concurrencies) + cached_products`` distinct products (each new-image request gets its
    own; the last ``cached_products`` are the cached ones and the warm-up)."""
    rows = []
    need = requests * len(concurrencies)
    if len(items) < need + cached_products:
        raise ValueError(f"{len(items)} products for {need} new-image requests")
    fresh = iter(range(0, need, requests))
    for c in concurrencies:
        with server(model, extra, env) as url:
            load(url, items[-4:], 1)  # warm-up: the first call opens sessions and allocates, not timed
            start = next(fresh)
            rows.append({"image": "new", **load(url, items[start : start + requests], c)})
        with server(model, extra, env) as url:
            hot = list(items[-cached_products:])
            load(url, hot, 1)  # every cached product once: the server has embedded its photo
            repeated = (hot * math.ceil(requests / len(hot)))[:requests]
            rows.append({"image": "cached", **load(url, repeated, c)})
        log.info("serving %s at concurrency %d: %s", model, c, rows[-2:])
    return rows
