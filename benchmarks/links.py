"""Images fetched from links vs read from local files (``python benchmarks/links.py``).

A loopback HTTP server (``http.server`` in a thread, 127.0.0.1) serves ``n`` generated JPEG product photos. Three
timings over the same photos:

- ``fetch``: ``LinkFetcher.fetch_many`` into an empty URL cache: the download, the content-type, magic-byte and
  decode checks, and the atomic write to the cache;
- ``cached``: the same links again with a new fetcher (a second run): every link is found in the URL cache;
- ``local``: ``catalog.check_images`` on the local files (read, hash and decode check, as a catalog load does).

Server and client share the machine's cores. Prints one JSON row with images/s for each.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from deepfusion.catalog import check_images
from deepfusion.image_links import LinkFetcher, LinkOptions


def photo(i: int, size: tuple[int, int] = (400, 533)) -> bytes:
    """A product-photo-like JPEG (a few tens of KB, like a catalog's thumbnails)."""
    rng = random.Random(i)
    im = Image.new("RGB", size, (245, 245, 245))
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x, y = rng.randint(0, size[0] - 60), rng.randint(0, size[1] - 60)
        d.rectangle((x, y, x + rng.randint(20, 160), y + rng.randint(20, 160)),
                    fill=tuple(rng.randint(0, 255) for _ in range(3)))
    d.text((10, 10), f"product {i}", fill=(0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def serve(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            data = (folder / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def fetch_vs_local(n: int = 500, workers: int = 16) -> dict[str, Any]:
    """images/s fetched from a loopback server (cold cache, then warm) and read from local files."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "www").mkdir()
        sizes = []
        for i in range(n):
            data = photo(i)
            sizes.append(len(data))
            (root / "www" / f"{i}.jpg").write_bytes(data)
        httpd, url = serve(root / "www")
        try:
            options = LinkOptions(workers=workers, cache_dir=root / "cache")
            items = [(f"{url}/{i}.jpg", str(i)) for i in range(n)]
            started = time.perf_counter()
            with LinkFetcher(options) as fetcher:
                results = fetcher.fetch_many(items, progress=False)
            fetch_s = time.perf_counter() - started
            assert all(r.status == "fetched" for r in results), {r.reason for r in results}
            started = time.perf_counter()
            with LinkFetcher(options) as fetcher:
                again = fetcher.fetch_many(items, progress=False)
            cached_s = time.perf_counter() - started
            assert fetcher.requests == 0 and all(r.status == "cached" for r in again)
        finally:
            httpd.shutdown()
            httpd.server_close()
        started = time.perf_counter()
        checks = check_images([root / "www" / f"{i}.jpg" for i in range(n)], progress=False)
        local_s = time.perf_counter() - started
        assert all(c.status == "ok" for c in checks)
    return {
        "images": n,
        "mean_kb": round(sum(sizes) / n / 1024, 1),
        "workers": workers,
        "fetch_images_per_s": round(n / fetch_s, 1),
        "cached_images_per_s": round(n / cached_s, 1),
        "local_images_per_s": round(n / local_s, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500, help="photos")
    parser.add_argument("--workers", type=int, default=16, help="downloads at once")
    args = parser.parse_args()
    print(json.dumps(fetch_vs_local(args.n, args.workers)))
