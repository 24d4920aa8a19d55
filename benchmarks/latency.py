"""Serving latency and throughput, one product per request (``python benchmarks/run.py --sections serving``).

The scenarios of the serving section, on load_test.py's server and client: a server is started per scenario
(``deepfusion.service.serve`` in a process of its own, as ``deepfusion serve`` runs it) and 1 or 4 client threads,
each with its own keep-alive connection, send one product per ``POST /v1/predict``. "new image": every request
carries a photo the server has not seen (its embedding cache cannot help); "cached image": the same few products
again and again after one warm-up pass, so the server reads their embeddings from its cache. Latency is the
client's wall time per request; throughput is requests / wall time of the scenario. Client and server share the
machine's cores, as they would on one small host.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import load_test as lt

log = logging.getLogger("benchmark.latency")


def payloads(products: Any, n: int) -> list[dict[str, Any]]:
    """``n`` products of a loaded catalog that have an image, as the service's request items, photo inline."""
    return lt.frame_products(products[products["image_path"].notna()].head(n), images=True)


def _load(url: str, items: Sequence[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """Every item once, as a request of its own, from ``concurrency`` threads."""
    stats = lt.run_load(url, lt.make_payloads(items, batch=1), requests=len(items), concurrency=concurrency,
                        time_cap_s=600)
    if stats["failures"]:
        raise RuntimeError(f"{stats['failures']} requests failed; first: {stats['failure_examples'][0]}")
    return stats


def scenarios(
    model: str | Path,
    items: Sequence[dict[str, Any]],
    *,
    requests: int = 300,
    cached_products: int = 32,
    concurrencies: Sequence[int] = (1, 4),
    env: dict[str, str] | None = None,
    **serve_options: float,
) -> list[dict[str, Any]]:
    """New-image and cached-image scenarios at each concurrency, each on a fresh server. ``items`` must hold at
    least ``requests * len(concurrencies) + cached_products`` distinct products (each new-image request gets its
    own; the last ``cached_products`` are the cached ones and the warm-up). ``serve_options``: serve's keyword
    options (e.g. ``batch_wait_ms``)."""
    rows = []
    need = requests * len(concurrencies)
    if len(items) < need + cached_products:
        raise ValueError(f"{len(items)} products for {need} new-image requests")
    hot = list(items[-cached_products:])
    for k, c in enumerate(concurrencies):
        with lt.server_in_subprocess(model, env=env, **serve_options) as url:
            _load(url, hot[:4], 1)  # warm-up: the first call opens sessions and allocates, not timed
            rows.append({"image": "new", **_load(url, items[k * requests : (k + 1) * requests], c)})
        with lt.server_in_subprocess(model, env=env, **serve_options) as url:
            _load(url, hot, 1)  # every cached product once: the server has embedded its photo
            repeated = (hot * math.ceil(requests / len(hot)))[:requests]
            rows.append({"image": "cached", **_load(url, repeated, c)})
        log.info("serving %s at concurrency %d: %s", model, c, rows[-2:])
    return rows
