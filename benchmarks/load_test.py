"""Loopback load test of the DeepFusion HTTP service: latency percentiles and throughput.

    python benchmarks/load_test.py MODEL_DIR --requests 500 --concurrency 4 --out load.json
    python benchmarks/load_test.py RUN/fusion --data CATALOG_DIR --images --batch 8 --out load.json

The server runs in a subprocess (``deepfusion.service.serve``, as in production) on 127.0.0.1 with a free
port, or in a thread of this process with ``--in-process``. Clients are ``--concurrency`` threads, each with
its own keep-alive connection, sending ``POST /v1/predict`` until ``--requests`` are done or ``--time-cap``
seconds have passed. Products come from ``--data`` (a catalog folder) or are synthetic. Only loopback
addresses are used. The tests import ``server_in_thread`` and ``run_load`` from this file.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import logging
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HOST = "127.0.0.1"  # loopback only
FIELDS = ["gender", "masterCategory", "subCategory", "baseColour", "season", "year", "usage",
          "productDisplayName"]
log = logging.getLogger("load_test")


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_healthy(base_url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before it was ready")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base_url}/healthz did not answer within {timeout_s:.0f}s")


@contextlib.contextmanager
def server_in_thread(app: Any, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a background thread; yields the base URL."""
    import uvicorn

    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on connections accepted from a socket that says
    # it is TCP, and without it every response stalls ~40 ms (Nagle + delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@contextlib.contextmanager
def server_in_subprocess(
    model_dir: str | Path, timeout_s: float = 120.0, env: dict[str, str] | None = None, **limits: float
) -> Iterator[str]:
    """Run ``deepfusion.service.serve`` in a child process (its log goes to a temporary file); ``env``: variables
    added to its environment; ``limits``: serve's keyword options."""
    port = free_port()
    code = ("import json, sys; from deepfusion.service import serve; "
            "serve(sys.argv[1], host=sys.argv[2], port=int(sys.argv[3]), **json.loads(sys.argv[4]))")
    with tempfile.TemporaryFile("w+") as server_log:
        command = [sys.executable, "-c", code, str(model_dir), HOST, str(port), json.dumps(limits)]
        process = subprocess.Popen(
            command, stdout=server_log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        try:
            base_url = f"http://{HOST}:{port}"
            try:
                wait_healthy(base_url, timeout_s, process)
            except (RuntimeError, TimeoutError):
                server_log.seek(0)
                log.error("server log:\n%s", server_log.read()[-4000:])
                raise
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def synthetic_products(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    kinds = [("Men", "Apparel", "Topwear", "Tshirt"), ("Men", "Apparel", "Bottomwear", "Jeans"),
             ("Women", "Footwear", "Shoes", "Heels"), ("Unisex", "Accessories", "Watches", "Watch")]
    colours = ["Black", "White", "Blue", "Red", "Navy Blue", "Grey"]
    products = []
    for i in range(n):
        gender, master, sub, noun = rng.choice(kinds)
        colour = rng.choice(colours)
        products.append({"id": str(i), "gender": gender, "masterCategory": master, "subCategory": sub,
                         "baseColour": colour, "season": rng.choice(["Summer", "Fall", "Winter", "Spring"]),
                         "year": rng.randint(2008, 2018), "usage": rng.choice(["Casual", "Sports", "Formal"]),
                         "productDisplayName": f"Brand{rng.randint(0, 9)} {gender} {colour} {noun}"})
    return products


def catalog_products(data: str | Path, limit: int, images: bool,
                     max_image_bytes: int = 5_000_000) -> list[dict[str, Any]]:
    """Products of a catalog folder as API payload dicts (optionally with base64 images)."""
    from deepfusion import load_catalog

    catalog = load_catalog(data, require_target=False, check_image_files=images, progress=False)
    return frame_products(catalog.products.head(limit), images, max_image_bytes)


def frame_products(frame: Any, images: bool, max_image_bytes: int = 5_000_000) -> list[dict[str, Any]]:
    """Rows of a loaded catalog's products (a DataFrame) as API payload dicts (optionally with base64 images)."""
    products = []
    for row in frame.to_dict("records"):
        product: dict[str, Any] = {"id": str(row["id"])}
        for field in FIELDS:
            value = row.get(field)
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            product[field] = int(value) if field == "year" else str(value)
        path = row.get("image_path")
        if images and path and os.path.getsize(path) <= max_image_bytes:
            product["image_base64"] = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        products.append(product)
    return products


def make_payloads(products: Sequence[dict[str, Any]], batch: int, top_k: int = 3) -> list[dict[str, Any]]:
    batches = [list(products[i : i + batch]) for i in range(0, len(products), batch)]
    return [{"products": b, "top_k": top_k} for b in batches if b]


def run_load(base_url: str, payloads: Sequence[dict[str, Any]], *, requests: int = 300, concurrency: int = 4,
             time_cap_s: float = 60.0, timeout_s: float = 30.0, path: str = "/v1/predict") -> dict[str, Any]:
    """Send ``requests`` POSTs (cycling over ``payloads``) from ``concurrency`` threads; latencies in ms."""
    if not payloads:
        raise ValueError("no payloads to send")
    bodies = [json.dumps(p).encode() for p in payloads]
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    deadline = time.monotonic() + time_cap_s

    def worker() -> None:
        with httpx.Client(base_url=base_url, timeout=timeout_s,
                          headers={"content-type": "application/json"}) as client:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter)
                if i >= requests:
                    return
                start = time.perf_counter()
                try:
                    response = client.post(path, content=bodies[i % len(bodies)])
                    ok = response.status_code == 200
                    error = None if ok else f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if error:
                        failures.append(error)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    sent = len(latencies)
    products = [len(p["products"]) for p in payloads]
    sent_products = sum(products[i % len(products)] for i in range(sent))
    return {
        "requests": sent,
        "ok": sent - len(failures),
        "failures": len(failures),
        "failure_examples": failures[:5],
        "stopped_by_time_cap": sent < requests,
        "concurrency": concurrency,
        "products_per_request": float(np.mean(products)),
        "wall_s": round(wall, 3),
        "requests_per_s": round(sent / wall, 2) if wall > 0 else None,
        "products_per_s": round(sent_products / wall, 2) if wall > 0 else None,
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "max_ms": round(float(ms.max()), 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="A model folder written by `deepfusion train`.")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1, help="Products per request.")
    parser.add_argument("--data", type=Path, help="Catalog folder to take products from (default synthetic).")
    parser.add_argument("--images", action="store_true", help="Send the catalog's images as base64.")
    parser.add_argument("--time-cap", type=float, default=120.0, help="Stop sending after this many seconds.")
    parser.add_argument("--warmup", type=int, default=10, help="Requests sent before measuring.")
    parser.add_argument("--in-process", action="store_true", help="Serve from a thread of this process.")
    parser.add_argument("--out", type=Path, help="Write the results as JSON here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if args.requests < 1 or args.concurrency < 1 or args.batch < 1:
        parser.error("--requests, --concurrency and --batch must be positive")
    if args.images and not args.data:
        parser.error("--images needs --data")

    n_products = max(args.batch * 50, 200)
    products = (catalog_products(args.data, n_products, args.images) if args.data
                else synthetic_products(n_products))
    payloads = make_payloads(products, args.batch)
    if args.in_process:
        from deepfusion.service import create_app

        server = server_in_thread(create_app(args.model_dir))
    else:
        server = server_in_subprocess(args.model_dir)
    with server as base_url:
        if args.warmup:
            run_load(base_url, payloads, requests=args.warmup, concurrency=1)
        results = run_load(base_url, payloads, requests=args.requests, concurrency=args.concurrency,
                           time_cap_s=args.time_cap)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    results.update({"model_dir": str(args.model_dir), "server": "thread" if args.in_process else "subprocess",
                    "data": str(args.data) if args.data else "synthetic", "images": args.images,
                    "machine": machine})
    print(f"{results['requests']} requests ({results['failures']} failed), concurrency {args.concurrency}, "
          f"{results['products_per_request']:.0f} product(s) each: p50 {results['p50_ms']} ms, p95 "
          f"{results['p95_ms']} ms, p99 {results['p99_ms']} ms, {results['requests_per_s']} requests/s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"-> {args.out}")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
