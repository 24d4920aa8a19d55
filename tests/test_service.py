"""The HTTP service on a small metadata model trained on a tiny catalog: same answers as `deepfusion predict`,
4xx (never 5xx) for bad input, a property test over random payloads, and a loopback load test."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import math
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import make_catalog
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from deepfusion import __version__, load_catalog
from deepfusion.cli import app as cli_app
from deepfusion.predictor import ModelLoadError
from deepfusion.service import create_app, serve

FIELDS = ["gender", "masterCategory", "subCategory", "baseColour", "season", "year", "usage",
          "productDisplayName"]
LIMITS = {"max_items": 64, "max_image_bytes": 20_000, "max_body_bytes": 300_000, "max_image_pixels": 25_000_000}
JSON = {"content-type": "application/json"}
MULTIPART = {"content-type": "multipart/form-data; boundary=x"}
ROOT = Path(__file__).resolve().parents[1]


def _load_test_module() -> Any:
    path = ROOT / "benchmarks" / "load_test.py"
    spec = importlib.util.spec_from_file_location("deepfusion_load_test", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("service")
    catalog = make_catalog(root / "catalog")
    result = CliRunner().invoke(cli_app, ["train", "--data", str(catalog), "--model", "metadata", "--preset",
                                          "small", "--out", str(root / "run"), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return {"root": root, "catalog": catalog, "model": root / "run" / "metadata"}


@pytest.fixture(scope="module")
def client(trained: dict[str, Path]) -> Iterator[TestClient]:
    with TestClient(create_app(trained["model"], **LIMITS)) as c:
        yield c


def jpeg_bytes(size: tuple[int, int] = (30, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def catalog_payload(catalog: Path) -> list[dict[str, Any]]:
    """The products `deepfusion predict` reads from ``catalog``, as API payloads (good images attached)."""
    products = load_catalog(catalog, require_target=False, progress=False).products
    payload = []
    for row in products.to_dict("records"):
        product: dict[str, Any] = {"id": row["id"]}
        for field in FIELDS:
            value = row[field]
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                product[field] = int(value) if field == "year" else value
        if row["image_status"] == "ok":
            product["image_base64"] = b64(Path(row["image_path"]).read_bytes())
        payload.append(product)
    return payload


def assert_message(response: Any, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"], body
    for word in words:
        assert word in body["detail"], body["detail"]


# ---------------------------------------------------------------------------------------------- basics
def test_health_model_info_and_docs(client: TestClient, trained: dict[str, Path]) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    config = json.loads((trained["model"] / "config.json").read_text())
    metrics = json.loads((trained["model"] / "metrics.json").read_text())
    assert info["classes"] == sorted(config["train_counts"])
    assert info["modalities"] == ["metadata"] and info["version"] == __version__
    assert info["format_version"] == config["format_version"]
    assert info["temperature"] == pytest.approx(config["temperature"])
    assert info["metrics"]["accuracy"] == pytest.approx(metrics["accuracy"])
    assert info["metrics"]["macro_f1"] == pytest.approx(metrics["macro_f1"])
    assert info["limits"] == LIMITS and info["backend"] == "model"
    assert info["review_threshold"] == pytest.approx(config.get("review_threshold", 1.0))
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/healthz", "/v1/model", "/v1/predict", "/v1/predict/upload", "/metrics"} <= set(paths)


def test_docs_are_served_offline(client: TestClient) -> None:
    """/docs is Swagger UI from the swagger-ui-bundle package's files: no CDN, no external URL in the page, and
    every script and stylesheet it names is served by the app itself."""
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", page.text), page.text
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert any(r.endswith("swagger-ui-bundle.js") for r in refs) and any(r.endswith(".css") for r in refs), refs
    for ref in refs:
        assert ref.startswith("/"), ref
        asset = client.get(ref)
        assert asset.status_code == 200 and len(asset.content) > 100, ref
    assert "/openapi.json" in page.text
    assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN
    from swagger_ui_bundle import swagger_ui_path

    # Swagger UI 4 cannot read OpenAPI 3.1, which FastAPI writes ("Unable to render this definition").
    version = re.search(r"swagger-ui-(\d+)\.", str(swagger_ui_path))
    assert version and int(version.group(1)) >= 5, swagger_ui_path
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert {"catalog row", "title only", "metadata only", "with image", "batch"} <= set(body["examples"])
    prediction = schema["components"]["schemas"]["Prediction"]
    assert {"inputs", "needs_review"} <= set(prediction["required"]) and prediction["examples"]
    errors = schema["paths"]["/v1/predict"]["post"]["responses"]["422"]["content"]["application/json"]
    assert "no_input" in errors["examples"]


def _metrics(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_metrics_in_prometheus_format(trained: dict[str, Path]) -> None:
    """Requests by endpoint and status, latency, predicted classes, confidence and needs_review; each app has a
    registry of its own, so two apps in one process count separately."""
    with TestClient(create_app(trained["model"], **LIMITS)) as c, TestClient(create_app(trained["model"])) as other:
        products = catalog_payload(trained["catalog"])[:5]
        for p in products:
            p.pop("image_base64", None)
        preds = c.post("/v1/predict", json={"products": products}).json()["predictions"]
        c.post("/v1/predict", json={"products": [{}, {"id": "x"}]})  # 422: no input
        c.get("/no/such/page")
        c.get("/healthz")
        m = _metrics(c)
        assert m[("deepfusion_http_requests_total", (("endpoint", "/v1/predict"), ("method", "POST"),
                                                     ("status", "200")))] == 1
        assert m[("deepfusion_http_requests_total", (("endpoint", "/v1/predict"), ("method", "POST"),
                                                     ("status", "422")))] == 1
        assert m[("deepfusion_http_requests_total", (("endpoint", "other"), ("method", "GET"), ("status", "404")))] == 1
        assert m[("deepfusion_http_request_duration_seconds_count", (("endpoint", "/v1/predict"),))] == 2
        by_label = {dict(k[1])["label"]: v for k, v in m.items() if k[0] == "deepfusion_predictions_total"}
        assert set(by_label) == set(c.get("/v1/model").json()["classes"])  # every class, 0 until predicted
        assert sum(by_label.values()) == 5
        for p in preds:
            assert by_label[p["prediction"]] >= 1
        assert m[("deepfusion_prediction_inputs_total", (("inputs", "metadata"),))] == 5
        assert m[("deepfusion_prediction_confidence_count", ())] == 5
        assert m[("deepfusion_prediction_confidence_sum", ())] == pytest.approx(sum(p["confidence"] for p in preds))
        flagged = sum(p["needs_review"] for p in preds)
        assert m[("deepfusion_predictions_needs_review_total", ())] == flagged
        assert m[("deepfusion_needs_review_ratio", ())] == pytest.approx(flagged / 5)
        assert m[("deepfusion_products_rejected_total", ())] == 2
        assert m[("deepfusion_model_batch_size_count", (("stage", "head"),))] == 1
        assert m[("deepfusion_model_info", (("backend", "model"), ("classes", "4"), ("modalities", "metadata"),
                                            ("path", str(trained["model"])), ("version", __version__)))] == 1
        assert sum(v for k, v in _metrics(other).items() if k[0] == "deepfusion_predictions_total") == 0


def test_concurrent_single_requests_share_one_model_call(trained: dict[str, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Micro-batching: single-product requests that arrive while the model is busy go through it in one call, and
    each gets the answer it gets alone (its own top_k too)."""
    app = create_app(trained["model"], batch_wait_ms=5)
    service = app.state.service
    products = [{k: v for k, v in p.items() if k != "image_base64"} for p in catalog_payload(trained["catalog"])[:8]]
    with TestClient(app) as client:
        alone = [client.post("/v1/predict", json={"products": [p], "top_k": 1 + i % 3}).json()["predictions"][0]
                 for i, p in enumerate(products)]
        calls: list[int] = []
        predict_rows = service.backend.predict_rows
        monkeypatch.setattr(service.backend, "predict_rows",
                            lambda rows, *a: (calls.append(len(rows)), predict_rows(rows, *a))[1])
        results: dict[int, Any] = {}

        def post(i: int) -> None:
            results[i] = client.post("/v1/predict", json={"products": [products[i]], "top_k": 1 + i % 3})

        with service._lock.turn():  # the model is busy: the requests queue up behind it
            threads = [threading.Thread(target=post, args=(i,)) for i in range(len(products))]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            while service.head_batcher.waiting < len(products) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert service.head_batcher.waiting == len(products)
        for t in threads:
            t.join(timeout=30)
    assert calls == [len(products)]
    for i, expected in enumerate(alone):
        got = results[i].json()["predictions"][0]
        assert got["id"] == expected["id"] and got["prediction"] == expected["prediction"]
        assert [e["label"] for e in got["top_k"]] == [e["label"] for e in expected["top_k"]]
        assert len(got["top_k"]) == 1 + i % 3
        assert got["confidence"] == pytest.approx(expected["confidence"], abs=1e-6)


def test_service_constants_match_the_catalog() -> None:
    """http_app spells out the catalog's columns and image formats so that it need not import pandas."""
    from deepfusion import catalog, embeddings, http_app, runtime, service

    assert http_app.CATEGORICAL == catalog.CATEGORICAL and http_app.NUMERIC == catalog.NUMERIC
    assert (http_app.ID, http_app.TITLE) == (catalog.ID, catalog.TITLE)
    assert http_app.IMAGE_FORMATS == catalog.IMAGE_FORMATS == runtime.IMAGE_FORMATS
    assert http_app.CHECK_DECODE_SIZE == catalog.CHECK_DECODE_SIZE
    assert set(http_app.DECODE_ERRORS) <= set(embeddings.DECODE_ERRORS)
    assert service.EXPORT_MANIFEST == runtime.MANIFEST
    from deepfusion.features import clean_title

    for text in ["", " ", "!!!", "-", "a", "Shirt", "İ", "\u212a", "日本", "x-y", "  9 ", "é", "_"]:
        assert http_app._present_title(text) == bool(clean_title(text)), text


def test_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a DeepFusion model folder"):
        create_app(tmp_path)
    with pytest.raises(ValueError, match="max_items"):
        create_app(tmp_path, max_items=0)


def test_serve_runs_uvicorn_on_loopback(trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    calls: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.update(app=app, **kwargs))
    serve(trained["model"], port=8123, max_items=3)
    assert calls["host"] == "127.0.0.1" and calls["port"] == 8123
    assert calls["app"].state.service.limits["max_items"] == 3


# ---------------------------------------------------------------------------------------------- same as CLI
def test_predictions_equal_cli_predict(client: TestClient, trained: dict[str, Path]) -> None:
    preds_path = trained["root"] / "cli_preds.csv"
    result = CliRunner().invoke(cli_app, ["predict", str(trained["model"]), "--data", str(trained["catalog"]),
                                          "--out", str(preds_path), "--quiet"])
    assert result.exit_code == 0, result.output
    label_columns = ("id", "prediction", "top2_label", "top3_label")
    expected = pd.read_csv(preds_path, dtype=dict.fromkeys(label_columns, str))
    # The CLI writes confidences to 4 decimals and the runners-up only (top2, top3): the first is the prediction.
    expected = expected.assign(top1_label=expected["prediction"], top1_confidence=expected["confidence"])
    rounding = 5.1e-5

    payload = catalog_payload(trained["catalog"])
    assert any("image_base64" in p for p in payload) and any("image_base64" not in p for p in payload)
    response = client.post("/v1/predict", json={"products": payload, "top_k": 3})
    assert response.status_code == 200, response.text
    got = response.json()["predictions"]
    assert [p["id"] for p in got] == list(expected["id"])
    for pred, (_, row) in zip(got, expected.iterrows(), strict=True):
        assert pred["prediction"] == row["prediction"]
        assert pred["confidence"] == pytest.approx(row["confidence"], abs=rounding)
        assert pred["inputs"] == row["inputs"] and pred["needs_review"] == bool(row["needs_review"])
        assert len(pred["top_k"]) == 3
        for k, entry in enumerate(pred["top_k"], start=1):
            assert entry["label"] == row[f"top{k}_label"]
            assert entry["confidence"] == pytest.approx(row[f"top{k}_confidence"], abs=rounding)

    # One product at a time (JSON and multipart upload) gives the same answer as the batch.
    by_id = {p["id"]: p for p in got}
    for product in payload[:3] + [p for p in payload if p["id"] in ("5003", "5007")]:
        single = client.post("/v1/predict", json={"products": [product]}).json()["predictions"][0]
        assert single["prediction"] == by_id[product["id"]]["prediction"]
        assert single["confidence"] == pytest.approx(by_id[product["id"]]["confidence"], abs=1e-6)
        form = {k: str(v) for k, v in product.items() if k != "image_base64"}
        photo = product.get("image_base64")
        files = {"image": ("photo.jpg", base64.b64decode(photo))} if photo else None
        upload = client.post("/v1/predict/upload", data=form, files=files)
        assert upload.status_code == 200, upload.text
        uploaded = upload.json()["predictions"][0]
        assert uploaded["id"] == product["id"] and uploaded["prediction"] == single["prediction"]
        assert uploaded["inputs"] == single["inputs"] and uploaded["needs_review"] == single["needs_review"]
        assert uploaded["confidence"] == pytest.approx(single["confidence"], abs=1e-6)


def test_missing_inputs_still_predicted(client: TestClient) -> None:
    products = [{"id": 42, "gender": "Men"}, {"year": 2012, "image_base64": None},
                {"usage": " Casual ", "productDisplayName": ""}, {"season": "Summer", "productDisplayName": "Shirt"}]
    response = client.post("/v1/predict", json={"products": products, "top_k": 99})
    assert response.status_code == 200, response.text
    preds = response.json()["predictions"]
    assert [p["id"] for p in preds] == ["42", "1", "2", "3"]  # missing id -> position; integer id -> text
    assert [p["inputs"] for p in preds] == ["metadata"] * 4  # a metadata-only model uses no title
    for p in preds:
        assert len(p["top_k"]) == 4  # top_k is capped at the number of classes
        assert sum(e["confidence"] for e in p["top_k"]) == pytest.approx(1.0)
        assert isinstance(p["needs_review"], bool)
    upload = client.post("/v1/predict/upload", data={"gender": "Women", "year": ""},
                         files={"image": ("", b"")})  # a browser's "no file chosen"
    assert upload.status_code == 200, upload.text
    assert upload.json()["predictions"][0]["inputs"] == "metadata"
    # A blank year or id is an absent one, as an empty cell in a CSV: predicted without it, the id by position.
    blank = client.post("/v1/predict", json={"products": [{"id": " ", "gender": "Men", "year": ""},
                                                          {"id": "", "gender": "Men", "year": "  "}]})
    absent = client.post("/v1/predict", json={"products": [{"gender": "Men"}, {"gender": "Men"}]})
    assert blank.status_code == 200, blank.text
    assert blank.json()["predictions"] == absent.json()["predictions"]
    assert [p["id"] for p in blank.json()["predictions"]] == ["0", "1"]
    form = client.post("/v1/predict/upload", data={"gender": "Women", "year": " "})
    assert form.status_code == 200, form.text


NO_INPUT = [{}, {"id": "only-an-id"}, {"productDisplayName": ""}, {"gender": "   ", "season": ""},
            {"image_base64": None}, {"image_base64": ""}]


def test_products_without_any_input_are_refused(client: TestClient) -> None:
    """A product with none of the model's inputs gets a 422 that names it and lists the inputs, not a guess. This
    model reads metadata only, so a title or an image alone is no input either."""
    for product in NO_INPUT:
        assert_message(client.post("/v1/predict", json={"products": [product]}), 422, "Product 0 has none",
                       "metadata (gender, masterCategory, subCategory, baseColour, season, usage, year)")
    batch = [{"gender": "Men"}, {}, {"year": 2011}, {"id": "x"}, {"productDisplayName": "Blue Shirt"},
             {"image_base64": b64(jpeg_bytes())}]
    response = client.post("/v1/predict", json={"products": batch})
    assert_message(response, 422, "Products 1, 3, 4, 5 have none of the inputs this model reads")
    assert [e["loc"] for e in response.json()["errors"]] == [["body", "products", i] for i in (1, 3, 4, 5)]
    assert_message(client.post("/v1/predict/upload", data={"id": "7"}), 422, "The product has none", "metadata")
    assert_message(client.post("/v1/predict/upload", data={"productDisplayName": "x"},
                               files={"image": ("x.jpg", jpeg_bytes())}), 422, "none of the inputs")


def test_images_are_checked_but_never_written(trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that does not read images still refuses a broken one, and no image reaches the disk (the image
    model's path, embedding in memory, is tested in test_hostile_service.py)."""
    import tempfile

    def no_disk(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the service wrote a temporary file")

    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryDirectory", "TemporaryFile"):
        monkeypatch.setattr(tempfile, name, no_disk)
    photo = jpeg_bytes()
    with TestClient(create_app(trained["model"])) as c:
        response = c.post("/v1/predict", json={"products": [{"id": "a", "gender": "Men", "image_base64": b64(photo)},
                                                            {"id": "b", "year": 2012}]})
        assert response.status_code == 200, response.text
        upload = c.post("/v1/predict/upload", data={"id": "c", "gender": "Men"}, files={"image": ("x.jpg", photo)})
        assert upload.status_code == 200, upload.text
        assert_message(c.post("/v1/predict/upload", data={"gender": "Men"}, files={"image": ("x.jpg", photo[:200])}),
                       422, "image", "not a readable image")


# ---------------------------------------------------------------------------------------------- bad input
def _chunks(total: int, size: int = 50_000) -> Iterator[bytes]:
    yield b'{"products": [{"productDisplayName": "'
    for _ in range(total // size):
        yield b"x" * size


def _huge_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (8000, 6000)).save(buf, "PNG")  # a few KB that would decode to 48 million pixels
    return buf.getvalue()


BAD_JSON = [
    # (name, request kwargs, status, words in the message)
    ("missing body", {}, 422, ["Field required"]),
    ("not JSON", {"content": b"{products: ", "headers": JSON}, 422, ["not valid JSON"]),
    ("not UTF-8", {"content": b"\xff\xfe", "headers": JSON}, 422, ["JSON"]),
    ("body is a list", {"json": [1, 2]}, 422, ["body"]),
    ("products not a list", {"json": {"products": "abc"}}, 422, ["products"]),
    ("no products", {"json": {"products": []}}, 422, ["products"]),
    ("year not a number", {"json": {"products": [{"year": "abc"}]}}, 422, ["products.0.year"]),
    ("year NaN", {"content": b'{"products": [{"year": NaN}]}', "headers": JSON}, 422, ["year"]),
    ("year out of range", {"json": {"products": [{"year": 10**30}]}}, 422, ["year"]),
    ("gender not text", {"json": {"products": [{"gender": 5}]}}, 422, ["products.0.gender"]),
    ("id is a bool", {"json": {"products": [{"id": True}]}}, 422, ["products.0.id"]),
    ("unknown field", {"json": {"products": [{"productName": "x"}]}}, 422, ["productName", "Extra inputs"]),
    ("top_k zero", {"json": {"products": [{}], "top_k": 0}}, 422, ["top_k"]),
    ("lone surrogate", {"content": b'{"products": [{"id": "\\ud800"}]}', "headers": JSON}, 422,
     ["surrogate"]),
    ("surrogate key", {"content": b'{"products": [{"\\ud800": 1}]}', "headers": JSON}, 422, ["products.0"]),
    ("invalid base64", {"json": {"products": [{"image_base64": "not base64!"}]}}, 422, ["base64"]),
    ("data URL without base64", {"json": {"products": [{"image_base64": "data:image/png,abc"}]}}, 422,
     ["base64"]),
    ("not an image", {"json": {"products": [{"image_base64": b64(b"this is not a jpeg")}]}}, 422,
     ["products.0.image_base64", "not an image"]),
    ("truncated image", {"json": {"products": [{"image_base64": b64(jpeg_bytes()[:300])}]}}, 422,
     ["not a readable image"]),
    ("image over the byte limit", {"json": {"products": [{"image_base64": b64(b"\xff" * 30_000)}]}}, 413,
     ["image limit of 20,000 bytes"]),
    ("image over the pixel limit", {"json": {"products": [{"image_base64": b64(_huge_png())}]}}, 413,
     ["pixels"]),
    ("too many products", {"json": {"products": [{}] * 65}}, 413, ["65 products", "limit is 64"]),
    ("body over the limit (Content-Length)", {"content": b" " * 300_001, "headers": JSON}, 413,
     ["300,000 bytes"]),
    ("body over the limit (chunked)", {"content": _chunks(400_000), "headers": JSON}, 413, ["300,000 bytes"]),
]


@pytest.mark.parametrize("kwargs,status,words", [case[1:] for case in BAD_JSON], ids=[c[0] for c in BAD_JSON])
def test_bad_json_input_is_a_4xx_with_a_message(client: TestClient, kwargs: dict, status: int,
                                                 words: list[str]) -> None:
    if "content" in kwargs and not isinstance(kwargs["content"], bytes):  # generators are consumed once
        kwargs = {**kwargs, "content": _chunks(400_000)}
    assert_message(client.post("/v1/predict", **kwargs), status, *words)
    assert client.get("/healthz").status_code == 200  # and the server keeps serving
    assert client.post("/v1/predict", json={"products": [{"gender": "Men"}]}).status_code == 200


def test_corrupt_and_truncated_catalog_images_refused(client: TestClient, trained: dict[str, Path]) -> None:
    corrupt = (trained["catalog"] / "images" / "5004.jpg").read_bytes()
    truncated = (trained["catalog"] / "images" / "5005.jpg").read_bytes()
    for data in (corrupt, truncated):
        response = client.post("/v1/predict", json={"products": [{"image_base64": b64(data)}]})
        assert_message(response, 422, "image")
        assert_message(client.post("/v1/predict/upload", files={"image": ("x.jpg", data)}), 422, "image")


def test_bad_upload_input_is_a_4xx_with_a_message(client: TestClient) -> None:
    cases = [
        ({"files": {"image": ("x.jpg", b"not an image")}}, 422, ["image", "not an image"]),
        ({"files": {"image": ("x.jpg", jpeg_bytes()[:300])}}, 422, ["not a readable image"]),
        ({"files": {"image": ("x.jpg", b"\xff" * 30_000)}}, 413, ["image limit"]),
        ({"data": {"year": "abc"}}, 422, ["year"]),
        ({"data": {"colour": "Red"}}, 422, ["colour", "Extra inputs"]),
        ({"data": {"image": "a string, not a file"}}, 422, ["image"]),
        ({"json": {"gender": "Men"}}, 415, ["multipart/form-data"]),
        ({"content": b"x" * 300_001, "headers": MULTIPART}, 413, ["bytes"]),
        ({"content": b"garbage", "headers": MULTIPART}, 400, []),
    ]
    for kwargs, status, words in cases:
        assert_message(client.post("/v1/predict/upload", **kwargs), status, *words)
    assert client.post("/v1/predict/upload", data={"gender": "Men"}).status_code == 200


# ---------------------------------------------------------------------------------------------- properties
_GOOD_IMAGE = b64(jpeg_bytes((12, 16)))
_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
            | st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
_field_value = (_json | st.sampled_from(["", " ", "Men", "Apparel", "2012", "Casual", "Blue Jeans"])
                | st.integers(990, 3010))
_image_value = st.sampled_from([_GOOD_IMAGE, "data:image/jpeg;base64," + _GOOD_IMAGE, "", "!!",
                                b64(b"GIF89a"), b64(b"\x00" * 64), _GOOD_IMAGE[:40], None])
_text = st.none() | st.text(max_size=30) | st.sampled_from(["Men", "Women", "Apparel", "Casual", " "])
_valid_product = st.fixed_dictionaries({}, optional={
    **dict.fromkeys(FIELDS, _text), "id": st.none() | st.text(max_size=8) | st.integers(0, 10**9),
    "year": st.none() | st.integers(1000, 3000), "image_base64": _image_value})
_keys = st.sampled_from([*FIELDS, "id", "image_base64", "articleType", "other"])
_fuzzy_product = st.dictionaries(_keys, _field_value | _image_value, max_size=9)
# Mostly well-formed products (so many requests reach the model), some fuzzed ones, and arbitrary JSON.
_product = st.integers(0, 4).flatmap(lambda i: _fuzzy_product if i == 0 else _valid_product)
_top_k = st.integers(0, 5).flatmap(lambda i: _json | st.integers(-3, 1_500) if i == 0 else st.integers(1, 5))
_request = st.fixed_dictionaries({"products": st.lists(_product, max_size=5)}, optional={"top_k": _top_k})
_payload = st.integers(0, 3).flatmap(lambda i: _json if i == 0 else _request)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=_payload, raw=st.booleans())
def test_random_payloads_never_5xx(client: TestClient, payload: Any, raw: bool) -> None:
    body = json.dumps(payload, ensure_ascii=raw).encode("utf-8", "surrogatepass")
    response = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    data = response.json()
    if response.status_code == 200:
        assert len(data["predictions"]) == len(payload["products"])
        for p in data["predictions"]:
            assert 0.0 <= p["confidence"] <= 1.0 and p["top_k"][0]["label"] == p["prediction"]
    else:
        assert response.status_code in (400, 413, 422) and isinstance(data["detail"], str)


# ---------------------------------------------------------------------------------------------- load
def test_loopback_load(trained: dict[str, Path]) -> None:
    load_test = _load_test_module()
    payloads = load_test.make_payloads(catalog_payload(trained["catalog"]), batch=1)
    with load_test.server_in_thread(create_app(trained["model"])) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        stats = load_test.run_load(base_url, payloads, requests=300, concurrency=4, time_cap_s=60)
    print(f"\nloopback load test: {json.dumps(stats)}")
    assert stats["failures"] == 0, stats["failure_examples"]
    assert stats["requests"] == 300 and not stats["stopped_by_time_cap"]
    assert 0 < stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert stats["requests_per_s"] > 0 and np.isfinite(stats["requests_per_s"])


def test_fusion_model_over_http_matches_cli_predict(tmp_path: Path, cache_dir: Path) -> None:
    """The product's main model (image + metadata + title) gives the same answers over HTTP as `predict`."""
    catalog = make_catalog(tmp_path / "catalog")
    result = CliRunner().invoke(cli_app, ["train", "--data", str(catalog), "--model", "fusion", "--preset", "small",
                                          "--image-size", "64x48", "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    model = tmp_path / "run" / "fusion"
    result = CliRunner().invoke(cli_app, ["predict", str(model), "--data", str(catalog), "--out",
                                          str(tmp_path / "p.csv"), "--quiet"])
    assert result.exit_code == 0, result.output
    expected = pd.read_csv(tmp_path / "p.csv", dtype={"id": str, "prediction": str})
    with TestClient(create_app(model, **LIMITS)) as c:
        response = c.post("/v1/predict", json={"products": catalog_payload(catalog), "top_k": 3})
    assert response.status_code == 200, response.text
    got = response.json()["predictions"]
    assert [p["id"] for p in got] == list(expected["id"])
    assert [p["prediction"] for p in got] == list(expected["prediction"])
    # The CLI writes confidences to 4 decimals.
    np.testing.assert_allclose([p["confidence"] for p in got], expected["confidence"], atol=6e-5)
