"""The service under hostile image traffic, on a small fusion model that reads images: uploads never reach the
disk, each image is decoded once (outside the model lock, within the pixel budget), the model runs in turns,
and a flood of maximum-size requests does not stall a small request."""

from __future__ import annotations

import base64
import importlib.util
import io
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import make_catalog
from fastapi.testclient import TestClient
from PIL import Image

import deepfusion.embeddings as embeddings_module
from deepfusion import Predictor, load_catalog
from deepfusion.embeddings import EmbeddingStore
from deepfusion.service import TurnLock, create_app

SMALL = (64, 48)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The backbone's ONNX export goes to a cache of this module's own, never to the user's."""
    path = tmp_path_factory.mktemp("hostile_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPFUSION_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, env_cache: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("hostile_service")
    catalog = load_catalog(make_catalog(root / "catalog", messy=False), progress=False).products
    predictor = Predictor(["metadata", "title", "image"], preset="small", image_size=SMALL, progress=False,
                          cache_dir=root / "train-cache")
    predictor.fit(catalog.iloc[::2], catalog.iloc[1::2])
    return {"dir": predictor.save(root / "model"), "catalog": catalog}


def png_bytes(size: tuple[int, int], colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(size: tuple[int, int], colour: tuple[int, int, int] = (30, 30, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def products_with_images(catalog: pd.DataFrame, n: int) -> list[dict[str, Any]]:
    rows = catalog.head(n).to_dict("records")
    return [{"id": r["id"], "gender": r["gender"], "productDisplayName": r["productDisplayName"],
             "image_base64": b64(Path(r["image_path"]).read_bytes())} for r in rows]


# ---------------------------------------------------------------------------------------------- no disk, one decode
def test_request_images_stay_in_memory(model: dict[str, Any], env_cache: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """No temporary file, no shard in the embedding cache; embeddings go to the bounded LRU, and a repeated image
    is neither decoded nor embedded again. Answers equal the Predictor's on the same images read from files."""
    app = create_app(model["dir"], embedding_cache_size=3)
    service = app.state.service

    def no_disk(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the service wrote to disk")

    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryDirectory", "TemporaryFile"):
        monkeypatch.setattr(tempfile, name, no_disk)
    monkeypatch.setattr(EmbeddingStore, "add", no_disk)
    forwards: list[int] = []
    embedder = service.backend.embedder
    forward = embedder.forward
    monkeypatch.setattr(embedder, "forward", lambda batch: (forwards.append(len(batch)), forward(batch))[1])
    products = products_with_images(model["catalog"], 5)
    with TestClient(app) as client:
        first = client.post("/v1/predict", json={"products": products})
        assert first.status_code == 200, first.text
        assert sum(forwards) == 5 and len(service.cache) == 3  # bounded: the oldest two were evicted
        again = client.post("/v1/predict", json={"products": products[-3:]})
        assert again.status_code == 200, again.text
        assert sum(forwards) == 5  # the three most recent images came from the cache
    assert not (env_cache / "embeddings").exists()

    monkeypatch.undo()
    files = Predictor.load(model["dir"], cache_dir=tmp_path, progress=False)  # embeds from files, disk cache
    expected = files.predict_frame(model["catalog"].head(5)[["id", "gender", "productDisplayName", "image_path"]])
    got = first.json()["predictions"]
    assert [p["prediction"] for p in got] == list(expected["prediction"])
    np.testing.assert_allclose([p["confidence"] for p in got], expected["confidence"], atol=1e-5)
    assert [p["confidence"] for p in again.json()["predictions"]] == pytest.approx(
        [p["confidence"] for p in got[-3:]], abs=1e-6)


def test_each_image_is_decoded_once_outside_the_lock(model: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(model["dir"], embedding_cache_size=0)
    service = app.state.service
    decodes: list[bool] = []  # whether the model lock was held during each decode
    real = embeddings_module.open_image_within_budget

    def spy(data: bytes, *args: Any, **kwargs: Any) -> Image.Image:
        decodes.append(service._lock.held)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(embeddings_module, "open_image_within_budget", spy)
    products = products_with_images(model["catalog"], 3)
    products.append({**products[0], "id": "copy"})  # the same photo twice in one request
    with TestClient(app) as client:
        response = client.post("/v1/predict", json={"products": products})
        assert response.status_code == 200, response.text
        assert decodes == [False, False, False]
        upload = client.post("/v1/predict/upload", data={"id": "u"},
                             files={"image": ("x.png", base64.b64decode(products[1]["image_base64"]))})
        assert upload.status_code == 200, upload.text
        assert decodes == [False] * 4
    preds = {p["id"]: p for p in response.json()["predictions"]}
    assert preds["copy"]["confidence"] == pytest.approx(preds[products[0]["id"]]["confidence"])
    assert upload.json()["predictions"][0]["confidence"] == pytest.approx(preds[products[1]["id"]]["confidence"])


def test_big_requests_run_in_turns_with_the_same_answers(model: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(model["dir"], embedding_cache_size=0)
    service = app.state.service
    products = products_with_images(model["catalog"], 7)
    with TestClient(app) as client:
        whole = client.post("/v1/predict", json={"products": products}).json()["predictions"]
        service.image_chunk, service.head_chunk = 2, 3
        images: list[int] = []
        rows: list[int] = []
        embedder, predictor = service.backend.embedder, service.backend.predictor
        forward, predict_frame = embedder.forward, predictor.predict_frame
        monkeypatch.setattr(embedder, "forward", lambda b: (images.append(len(b)), forward(b))[1])
        monkeypatch.setattr(predictor, "predict_frame",
                            lambda frame, **kw: (rows.append(len(frame)), predict_frame(frame, **kw))[1])
        chunked = client.post("/v1/predict", json={"products": products}).json()["predictions"]
    assert images == [2, 2, 2, 1] and rows == [3, 3, 1]
    assert [p["id"] for p in chunked] == [p["id"] for p in whole]
    assert [p["prediction"] for p in chunked] == [p["prediction"] for p in whole]
    np.testing.assert_allclose([p["confidence"] for p in chunked], [p["confidence"] for p in whole], atol=1e-6)


# ---------------------------------------------------------------------------------------------- bad images
def _count_loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every image Pillow decodes from here on."""
    from PIL import ImageFile

    loads: list[tuple[int, int]] = []
    real = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> Any:
        if self.tile:  # still to decode (later calls on a decoded image return at once)
            loads.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return loads


def test_pixel_budget_is_checked_before_decoding(model: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    with TestClient(create_app(model["dir"], max_image_pixels=10_000)) as client:
        loads = _count_loads(monkeypatch)
        response = client.post("/v1/predict", json={"products": [{"image_base64": b64(png_bytes((200, 100)))}]})
        assert response.status_code == 413, response.text
        assert "200x100 pixels, over the limit of 10,000 pixels" in response.json()["detail"]
        assert loads == []  # refused from the header: no pixel was decoded
        # A large JPEG is decoded at a reduced scale (1/8 here, 100x75), which is within the budget.
        response = client.post("/v1/predict", json={"products": [{"image_base64": b64(jpeg_bytes((800, 600)))}]})
        assert response.status_code == 200, response.text
        assert loads == [(100, 75)]


@pytest.mark.parametrize("data,status,words", [
    (b"not an image", 422, ["not an image in a supported format"]),
    (png_bytes((40, 30))[:60], 422, ["not a readable image"]),
    (jpeg_bytes((40, 30))[:200], 422, ["not a readable image"]),
    (b"GIF89a" + b"\x00" * 20, 422, ["image"]),
    (png_bytes((3000, 3000)), 413, ["3000x3000 pixels", "1,000,000 pixels"]),
], ids=["text", "truncated png", "truncated jpeg", "broken gif", "pixel bomb"])
def test_bad_images_are_refused_by_an_image_model(model: dict[str, Any], data: bytes, status: int,
                                                  words: list[str]) -> None:
    with TestClient(create_app(model["dir"], max_image_pixels=1_000_000)) as client:
        for response in (client.post("/v1/predict", json={"products": [{"image_base64": b64(data)}]}),
                         client.post("/v1/predict/upload", files={"image": ("x.png", data)})):
            assert response.status_code == status, response.text
            for word in words:
                assert word in response.json()["detail"]
        assert client.post("/v1/predict", json={"products": [{"gender": "Men"}]}).status_code == 200


def test_service_limits_are_checked(model: dict[str, Any]) -> None:
    for bad in ({"max_image_pixels": 0}, {"embedding_cache_size": -1}, {"embedding_cache_size": "10"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            create_app(model["dir"], **bad)


# ---------------------------------------------------------------------------------------------- turns and floods
def test_turn_lock_serves_small_requests_first() -> None:
    lock = TurnLock()
    order: list[str] = []
    started = threading.Barrier(2)

    def waiter(name: str, priority: int) -> None:
        with lock.turn(priority):
            order.append(name)

    with lock.turn():
        threads = [threading.Thread(target=waiter, args=(n, p)) for n, p in [("big-1", 1), ("big-2", 1)]]
        for t in threads:
            t.start()
            time.sleep(0.05)  # arrival order: big-1, big-2, then small
        small = threading.Thread(target=lambda: (started.wait(), waiter("small", 0)))
        small.start()
        started.wait()
        time.sleep(0.05)
        assert lock.held and order == []
    for t in [*threads, small]:
        t.join(timeout=5)
    assert order == ["small", "big-1", "big-2"] and not lock.held


def _load_test_module() -> Any:
    path = ROOT / "benchmarks" / "load_test.py"
    spec = importlib.util.spec_from_file_location("deepfusion_load_test", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


FLOOD_CLIENTS = 8
FLOOD_ITEMS = 8  # max_items: every flood request is as big as the service allows
FLOOD_SIDE = 2000  # each flood image is 2000 x 2000 = the pixel budget
SMALL_REQUESTS = 30


def test_flood_of_maximum_requests_does_not_stall_small_ones(model: dict[str, Any]) -> None:
    """8 clients send requests of max_items images at the pixel budget (embedding cache off, so every image is
    decoded and embedded) while one client sends small requests; the small ones' p95 stays under a second.
    Bounded: the flood stops when the small requests are done, or after its time cap."""
    load_test = _load_test_module()
    app = create_app(model["dir"], max_items=FLOOD_ITEMS, max_image_pixels=FLOOD_SIDE**2, embedding_cache_size=0)
    big = {"products": [{"id": str(i), "gender": "Men", "image_base64": b64(png_bytes(
        (FLOOD_SIDE, FLOOD_SIDE), (i * 20, 90, 160)))} for i in range(FLOOD_ITEMS)]}
    small = products_with_images(model["catalog"], 1)[0]
    stop = threading.Event()
    flood_done: list[int] = []
    flood_errors: list[str] = []
    in_flight = [0]
    counter = threading.Lock()

    def flood(base_url: str) -> None:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            while not stop.is_set():
                with counter:
                    in_flight[0] += 1
                try:
                    response = client.post("/v1/predict", json=big)
                    if response.status_code == 200:
                        flood_done.append(1)
                    else:
                        flood_errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    flood_errors.append(f"{type(exc).__name__}: {exc}")
                finally:
                    with counter:
                        in_flight[0] -= 1

    with load_test.server_in_thread(app) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        threads = [threading.Thread(target=flood, args=(base_url,), daemon=True) for _ in range(FLOOD_CLIENTS)]
        for t in threads:
            t.start()
        latencies = []
        busy = []  # flood requests in flight as each small request starts
        deadline = time.monotonic() + 25
        try:
            time.sleep(1.0)  # let the flood build up
            with httpx.Client(base_url=base_url, timeout=30) as client:
                while len(latencies) < SMALL_REQUESTS and time.monotonic() < deadline:
                    busy.append(in_flight[0])
                    start = time.perf_counter()
                    response = client.post("/v1/predict", json={"products": [small]})
                    latencies.append(time.perf_counter() - start)
                    assert response.status_code == 200, response.text
                    time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
    p95 = float(np.percentile(latencies, 95))
    print(f"\nflood: {len(flood_done)} maximum requests served, a median {np.median(busy):.0f} in flight; small "
          f"requests p50 {np.percentile(latencies, 50) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    assert not flood_errors, flood_errors[:3]
    assert len(flood_done) >= FLOOD_CLIENTS and np.median(busy) >= FLOOD_CLIENTS - 1  # the flood ran throughout
    assert len(latencies) == SMALL_REQUESTS
    assert p95 < 1.0, sorted(latencies)
