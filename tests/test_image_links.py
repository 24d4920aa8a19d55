"""Images by URL: the fetcher's faults, the URL cache, the link report and the CLI, against a loopback server the
tests start themselves (127.0.0.1 only; nothing leaves the machine)."""

from __future__ import annotations

import io
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from conftest import CLASSES, draw_product, make_catalog
from PIL import Image
from typer.testing import CliRunner

from deepfusion.catalog import load_catalog
from deepfusion.cli import app
from deepfusion.image_links import (
    BROKEN,
    CACHED,
    DNS,
    FETCHED,
    NOT_IMAGE,
    REDIRECTS,
    TIMEOUT,
    TOO_LARGE,
    TOO_MANY_PIXELS,
    TRUNCATED,
    UNDECODABLE,
    BlockedHost,
    HostPolicy,
    LinkFetcher,
    LinkOptions,
    UrlCacheError,
    UrlImageCache,
    is_url,
)

runner = CliRunner()
# Short timeouts and backoff: every fault below resolves in well under a second.
FAST = {"connect_timeout": 0.5, "read_timeout": 0.3, "total_timeout": 2.0, "backoff": 0.01, "retries": 1}


def png_bytes(article: str = "Tshirts", mark: int = 0) -> bytes:
    buf = io.BytesIO()
    draw_product(article, random.Random(mark), mark=mark).save(buf, format="PNG")
    return buf.getvalue()


class ImageServer:
    """A loopback HTTP server: /img/NAME serves files of ``images``; the other paths are faults. ``hits`` counts
    requests by path."""

    def __init__(self, images: dict[str, bytes]) -> None:
        self.images = images
        self.hits: Counter[str] = Counter()
        self.flaky_failures = 1
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:  # keep the test output clean
                pass

            def send(self, status: int, body: bytes, ctype: str = "image/png", length: int | None = None,
                     headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                try:
                    self.answer()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the slow answer, past its timeout): expected

            def answer(self) -> None:
                path = self.path.split("?")[0]
                server.hits[path] += 1
                name = path.rsplit("/", 1)[-1]
                if path.startswith("/img/") and name in server.images:
                    self.send(200, server.images[name])
                elif path == "/flaky":  # 500 first, then the image
                    if server.hits[path] <= server.flaky_failures:
                        self.send(500, b"try again", "text/plain")
                    else:
                        self.send(200, png_bytes(mark=7))
                elif path == "/slow":
                    time.sleep(1.5)
                    self.send(200, png_bytes())
                elif path == "/truncated":
                    self.send(200, png_bytes()[:100], length=5000)
                    self.close_connection = True
                elif path == "/html":
                    self.send(200, b"<html>not found</html>", "text/html")
                elif path == "/big":
                    self.send(200, b"\x89PNG\r\n\x1a\n" + b"\0" * 300_000)
                elif path == "/big-unannounced":  # no Content-Length: the cap is enforced while reading
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for _ in range(30):
                        self.wfile.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 10_000)
                    self.close_connection = True
                elif path == "/many-pixels":  # a small file that decodes to 400x400 pixels
                    buf = io.BytesIO()
                    Image.new("L", (400, 400)).save(buf, format="PNG")
                    self.send(200, buf.getvalue())
                elif path == "/loop":
                    self.send(302, b"", headers={"Location": "/loop"})
                elif path == "/redirect-out":  # to the same server under a name that is not allowlisted
                    elsewhere = server.url.replace("127.0.0.1", "localhost") + "/img/a.png"
                    self.send(302, b"", headers={"Location": elsewhere})
                elif path == "/text-as-jpeg":
                    self.send(200, b"hello, this is text", "image/jpeg")
                elif path == "/broken-png":
                    self.send(200, b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
                else:
                    self.send(404, b"no such image", "text/plain")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def total(self) -> int:
        return sum(self.hits.values())


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with ImageServer({"a.png": png_bytes(mark=1), "b.png": png_bytes("Jeans", mark=2)}) as srv:
        yield srv


def test_is_url_and_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_url("https://x.com/a.jpg") and is_url(" HTTP://x") and not is_url("images/a.jpg")
    policy = HostPolicy.parse("cdn.example.com, *.images.example.org, 127.0.0.1")
    with pytest.raises(BlockedHost, match="allowlist"):
        policy.check("http://evil.example.net/a.jpg")
    with pytest.raises(BlockedHost, match="allowlist"):
        policy.check("http://localhost/a.jpg")  # loopback by another name: not in the list
    with pytest.raises(BlockedHost, match="http and https"):
        policy.check("file:///etc/passwd")
    policy.check("http://127.0.0.1:8000/a.jpg")  # the allowlist names this address, so it is allowed
    # An allowlisted name that resolves to a private, loopback or link-local address is refused (DNS answers
    # are the attacker's to choose), unless the allowlist names that address.
    answers = {"cdn.example.com": "10.0.0.5", "a.images.example.org": "169.254.169.254"}

    def fake_getaddrinfo(host: str, *_: object, **__: object) -> list[tuple[object, ...]]:
        return [(2, 1, 6, "", (answers.get(host, "93.184.215.14"), 80))]

    monkeypatch.setattr("socket.getaddrinfo", fake_getaddrinfo)
    for url in ("http://cdn.example.com/a.jpg", "https://a.images.example.org/b.png"):
        with pytest.raises(BlockedHost, match="non-public"):
            policy.check(url)
    HostPolicy.parse("cdn.example.com,10.0.0.5").check("http://cdn.example.com/a.jpg")
    answers["cdn.example.com"] = "93.184.215.14"
    policy.check("http://cdn.example.com/a.jpg")
    with pytest.raises(ValueError, match="empty"):
        HostPolicy.parse(" , ")


def test_fetcher_faults_each_get_their_reason(server: ImageServer, tmp_path: Path) -> None:
    # A connect timeout above FAST's: on a loaded machine the local server's accept can take over 0.5 s, and this
    # test is about each fault's reason, not about connect timeouts.
    options = LinkOptions(cache_dir=tmp_path / "cache", max_bytes=100_000, max_redirects=3, max_pixels=50_000,
                          **{**FAST, "connect_timeout": 3.0, "total_timeout": 5.0})
    cases = {
        "/img/a.png": (FETCHED, ""),
        "/missing.jpg": (BROKEN, "HTTP 404"),
        "/flaky": (FETCHED, ""),
        "/slow": (BROKEN, TIMEOUT),
        "/truncated": (BROKEN, TRUNCATED),
        "/html": (BROKEN, NOT_IMAGE),
        "/big": (BROKEN, TOO_LARGE),
        "/big-unannounced": (BROKEN, TOO_LARGE),
        "/many-pixels": (BROKEN, TOO_MANY_PIXELS),
        "/loop": (BROKEN, REDIRECTS),
        "/text-as-jpeg": (BROKEN, NOT_IMAGE),
        "/broken-png": (BROKEN, UNDECODABLE),
    }
    # The slow answer's TIMEOUT reason and its two hits show each attempt cut at the timeout (no wall-time
    # assertion: a loaded machine decides the wall time).
    with LinkFetcher(options) as fetcher:
        results = fetcher.fetch_many([(server.url + path, "p") for path in cases], progress=False)
    for (path, (status, reason)), result in zip(cases.items(), results, strict=True):
        assert (result.status, result.reason) == (status, reason), (path, result)
    # 4xx is never retried; 5xx is (500 then 200); the slow one is retried once, each attempt cut at the timeout.
    assert server.hits["/missing.jpg"] == 1 and server.hits["/flaky"] == 2 and server.hits["/slow"] == 2
    assert server.hits["/html"] == 1 and server.hits["/loop"] == 4  # the first request plus 3 redirects
    ok = results[0]
    assert ok.path is not None and ok.path.read_bytes() == server.images["a.png"]
    assert ok.bytes == len(server.images["a.png"])
    # The request announced itself politely.
    assert fetcher.client.headers["user-agent"].startswith("DeepFusion/")


def test_cache_is_atomic_and_a_second_run_fetches_nothing(server: ImageServer, tmp_path: Path) -> None:
    options = LinkOptions(cache_dir=tmp_path / "cache", **FAST)
    urls = [server.url + "/img/a.png", server.url + "/img/b.png", server.url + "/img/a.png"]
    with LinkFetcher(options) as fetcher:
        first = [fetcher.fetch(u, str(i)) for i, u in enumerate(urls)]
    assert [r.status for r in first] == [FETCHED, FETCHED, CACHED]  # the same link twice is fetched once
    assert server.total == 2
    with LinkFetcher(options) as fetcher:
        second = fetcher.fetch_many([(u, "x") for u in urls], progress=False)
    assert {r.status for r in second} == {CACHED} and server.total == 2 and fetcher.requests == 0
    # No temporary file left behind; one file per URL, named by its hash.
    files = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert len(files) == 2 and not any(f.startswith(".part-") for f in files)
    cache = UrlImageCache(tmp_path / "cache")
    assert cache.get(urls[0]) == first[0].path and cache.get("http://never.seen/x.png") is None


def test_unwritable_cache_is_a_user_error(server: ImageServer, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with LinkFetcher(LinkOptions(cache_dir=blocker, **FAST)) as fetcher, pytest.raises(
        UrlCacheError, match="DEEPFUSION_CACHE"
    ):
        fetcher.fetch(server.url + "/img/a.png")


def test_dead_links_fail_fast_offline(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    urls = [f"http://does-not-exist.invalid/{i}.jpg" for i in range(20)]
    urls += [f"http://127.0.0.1:{dead_port}/{i}.jpg" for i in range(20)]
    with LinkFetcher(LinkOptions(cache_dir=tmp_path, **FAST)) as fetcher:
        results = fetcher.fetch_many([(u, "p") for u in urls], progress=False)
    assert all(r.status == BROKEN for r in results)
    assert {r.reason for r in results[:20]} == {DNS}
    assert {r.reason for r in results[20:]} == {"connection failed"}
    # Each dead host is contacted a bounded number of times, not once per link.
    assert fetcher.requests < 20


def test_connect_timeouts_condemn_the_host(tmp_path: Path) -> None:
    import httpx

    def blackhole(request: httpx.Request) -> httpx.Response:  # a host that drops packets
        raise httpx.ConnectTimeout("timed out", request=request)

    with LinkFetcher(LinkOptions(cache_dir=tmp_path, **FAST)) as fetcher:
        fetcher.client = httpx.Client(transport=httpx.MockTransport(blackhole))
        results = fetcher.fetch_many([(f"http://blackhole.example/{i}.jpg", "p") for i in range(20)], progress=False)
    assert {r.reason for r in results} == {TIMEOUT}
    assert fetcher.requests == 2  # the first link and its one retry; the other 19 know the host is down


def toy_catalog(root: Path, server: ImageServer | None, n_per_class: int = 10) -> pd.DataFrame:
    """A generated export whose ``image`` column holds local paths; with ``server``, the same images as links
    (a dead link first for some products, and a local path for one)."""
    rng = random.Random(0)
    (root / "pics").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, article in enumerate(CLASSES):
        for i in range(n_per_class):
            sku = f"SKU-{k}{i:02d}"
            buf = io.BytesIO()
            draw_product(article, rng, mark=k * 100 + i).save(buf, format="PNG")
            (root / "pics" / f"{sku}.png").write_bytes(buf.getvalue())
            image = f"pics/{sku}.png"
            if server is not None:
                server.images[f"{sku}.png"] = buf.getvalue()
                image = f"{server.url}/img/{sku}.png"
                if i % 3 == 0:
                    image = f"{server.url}/gone/{sku}.jpg|{image}"  # the first link is dead: the second is used
                if i == 1:
                    image = f"pics/{sku}.png"  # local paths and links in one column
            rows.append({"sku": sku, "title": f"item {i}", "brand": f"B{i % 2}", "image": image,
                         "category": article})
    return pd.DataFrame(rows)


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_urls_train_and_predict_like_local_files(server: ImageServer, tmp_path: Path, cache_dir: Path) -> None:
    local = toy_catalog(tmp_path, None)
    links = toy_catalog(tmp_path, server)
    local.to_csv(tmp_path / "local.csv", index=False)
    links.loc[5, "image"] = server.url + "/missing/one.jpg"  # a product whose only link is dead: still categorized
    links.to_csv(tmp_path / "links.csv", index=False)
    common = ["--label", "category", "--image", "image", "--image-sep", "|", "--text", "title", "--categorical",
              "brand", "--model", "fusion", "--preset", "small", "--quiet"]
    run("train", "--data", str(tmp_path / "local.csv"), "--out", str(tmp_path / "run-local"), *common)
    run("train", "--data", str(tmp_path / "links.csv"), "--out", str(tmp_path / "run-links"), *common,
        "--link-timeout", "2")
    report = pd.read_csv(tmp_path / "run-links" / "links.csv")
    assert set(report.columns) >= {"url", "id", "status", "reason", "bytes", "ms"}
    broken = report[report["status"] == BROKEN]
    assert set(broken["reason"]) == {"HTTP 404"} and len(broken) == 1 + len([i for i in range(10) if i % 3 == 0]) * 4
    assert (report["status"] == FETCHED).sum() == 10 * 4 - 4 - 1  # one local per class, one dead product
    hits_after_train = server.total

    # predict: same categories from links as from local files, and nothing fetched again but the dead links.
    run("predict", str(tmp_path / "run-local" / "fusion"), "--data", str(tmp_path / "local.csv"), "--out",
        str(tmp_path / "local-preds.csv"), "--quiet")
    run("predict", str(tmp_path / "run-links" / "fusion"), "--data", str(tmp_path / "links.csv"), "--out",
        str(tmp_path / "links-preds.csv"), "--quiet")
    refetched = server.total - hits_after_train
    image_hits = sum(n for p, n in server.hits.items() if p.startswith("/img/"))
    assert image_hits == 10 * 4 - 4 - 1, server.hits  # every working link fetched once, by train only
    assert refetched == len(broken)  # only the dead links are tried again on a later run
    preds_local = pd.read_csv(tmp_path / "local-preds.csv")
    preds_links = pd.read_csv(tmp_path / "links-preds.csv")
    assert len(preds_links) == len(links) and preds_links["prediction"].notna().all()
    same = (preds_local["prediction"] == preds_links["prediction"]).mean()
    assert same >= 0.95, same
    assert (preds_links["prediction"] == links["category"]).mean() >= 0.9
    predict_report = pd.read_csv(tmp_path / "links-preds.links.csv")
    assert (predict_report["status"] == FETCHED).sum() == 0 and (predict_report["status"] == CACHED).sum() > 0

    run("evaluate", str(tmp_path / "run-links" / "fusion"), "--data", str(tmp_path / "links.csv"), "--out",
        str(tmp_path / "eval"), "--quiet")
    assert (tmp_path / "eval" / "links.csv").is_file()
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["accuracy"] >= 0.9


def test_every_link_dead_still_categorizes(tmp_path: Path, cache_dir: Path) -> None:
    table = toy_catalog(tmp_path, None)
    table["image"] = [
        "|".join(f"http://images.invalid/{sku}-{j}.jpg" for j in range(5)) for sku in table["sku"]
    ]
    table.to_csv(tmp_path / "dead.csv", index=False)
    started = time.perf_counter()
    catalog = load_catalog(tmp_path / "dead.csv", label="category", image="image", image_sep="|", progress=False)
    assert time.perf_counter() - started < 10
    assert len(catalog.products) == len(table) and (catalog.products["image_status"] == "missing").all()
    assert catalog.links is not None and len(catalog.links) == 5 * len(table)
    assert set(catalog.links["reason"]) == {DNS}
    run("train", "--data", str(tmp_path / "dead.csv"), "--label", "category", "--image", "image", "--image-sep",
        "|", "--model", "fusion", "--preset", "small", "--out", str(tmp_path / "run"), "--quiet")
    assert len(pd.read_csv(tmp_path / "run" / "links.csv")) == 5 * len(table)


def test_eda_check_links_samples(server: ImageServer, tmp_path: Path, cache_dir: Path) -> None:
    root = make_catalog(tmp_path / "cat", messy=False)
    styles = pd.read_csv(root / "styles.csv", dtype=str)
    styles["link"] = [f"{server.url}/img/a.png" if i % 2 else f"http://dead.invalid/{i}.jpg"
                      for i in range(len(styles))]
    styles.to_csv(root / "styles.csv", index=False)
    out = tmp_path / "eda"
    run("eda", "--data", str(root), "--out", str(out), "--image", "link", "--check-links", "10", "--quiet")
    report = pd.read_csv(out / "links.csv")
    assert len(report) == 10 and server.total <= 1
    eda = json.loads((out / "eda.json").read_text())
    assert eda["links"]["checked"] == 10 and DNS in eda["links"]["by_reason"]
    html = (out / "eda.html").read_text()
    assert "Image links" in html and "dead.invalid" in html


def test_service_image_url_only_when_enabled_and_allowlisted(server: ImageServer, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from deepfusion.service import create_app

    catalog = make_catalog(tmp_path / "cat", messy=False)
    run("train", "--data", str(catalog), "--model", "metadata", "--preset", "small", "--out", str(tmp_path / "run"),
        "--quiet")
    model = tmp_path / "run" / "metadata"
    product = {"productDisplayName": "Brand1 Men Black Tshirt 3", "gender": "Men"}

    def predict(client: TestClient, url: str) -> tuple[int, str]:
        response = client.post("/v1/predict", json={"products": [{**product, "image_url": url}]})
        return response.status_code, response.json().get("detail", "")

    with TestClient(create_app(model)) as client:  # off by default
        status, detail = predict(client, server.url + "/img/a.png")
        assert status == 422 and "--image-url-hosts" in detail
    assert server.total == 0
    with TestClient(create_app(model, image_url_hosts="127.0.0.1")) as client:
        assert predict(client, server.url + "/img/a.png")[0] == 200
        assert server.hits["/img/a.png"] == 1
        status, detail = predict(client, "http://localhost:1/img/a.png")  # loopback under another name
        assert status == 422 and "allowlist" in detail
        status, detail = predict(client, "http://169.254.169.254/latest/meta-data/")  # cloud metadata: never
        assert status == 422 and "allowlist" in detail
        status, detail = predict(client, server.url + "/redirect-out")  # each redirect hop is checked
        assert status == 422 and "blocked address" in detail and server.hits["/img/a.png"] == 1
        status, detail = predict(client, server.url + "/nothing.jpg")
        assert status == 422 and "HTTP 404" in detail
        response = client.post("/v1/predict", json={"products": [
            {**product, "image_url": server.url + "/img/a.png", "image_base64": "AAAA"}]})
        assert response.status_code == 422 and "not both" in response.json()["detail"]
