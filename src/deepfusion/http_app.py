"""The HTTP layer of the prediction service, shared by both backends (``deepfusion.service``): a model folder
written by ``train`` (the full stack: pandas, scikit-learn, torch) and a folder written by ``export`` (onnxruntime,
numpy and Pillow only, ``deepfusion.runtime``).

Everything a request meets before and after the model is here: the request and response schemas, the limits,
the error handlers, the body-size middleware, image checks (base64, byte and pixel budgets, decoding once outside
the model lock), the embedding LRU, the ``TurnLock`` the model runs under, micro-batching of concurrent small
requests, Prometheus metrics, and the offline Swagger UI. A backend only says how to decode an image to the
backbone's pixels, how to embed pixels, and how to predict rows of catalog fields.

This module imports neither pandas, scikit-learn, scipy nor torch (tests/test_lean_serve.py checks it), so serving
an export stays lean.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import heapq
import io
import itertools
import json
import logging
import math
import os
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

import numpy as np
from fastapi import Body, FastAPI, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .schema import FASHION, CatalogSchema

log = logging.getLogger(__name__)

# The catalog columns a model reads, as catalog.ID / CATEGORICAL / NUMERIC / TITLE (tests check they agree; the
# catalog module is not imported here because it pulls in pandas).
ID = "id"
CATEGORICAL = ["gender", "masterCategory", "subCategory", "baseColour", "season", "usage"]
NUMERIC = ["year"]
METADATA = CATEGORICAL + NUMERIC
TITLE = "productDisplayName"
# As catalog.IMAGE_FORMATS: common photo formats only, so a crafted file cannot reach Pillow's less-tested decoders.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
CHECK_DECODE_SIZE = (1024, 1024)  # catalog.CHECK_DECODE_SIZE: a model without images only checks a JPEG at this size
# What decoding a broken or hostile file can raise (embeddings.DECODE_ERRORS, runtime.DECODE_ERRORS).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)

MAX_FIELD_CHARS = 200  # a categorical value or an id
MAX_TITLE_CHARS = 2_000
MAX_DESCRIPTION_CHARS = 100_000  # a further text column: a catalog's own descriptions, as long as the loader takes
MAX_ITEMS = 256
MAX_IMAGE_BYTES = 5_000_000
MAX_BODY_BYTES = 50_000_000
MAX_IMAGE_PIXELS = 25_000_000  # width x height (5000 x 5000); a small file can decode to gigabytes
EMBEDDING_CACHE_SIZE = 2048  # request-image embeddings kept in memory (a few KB each)
# Work done per turn of the model lock: a small request waits for at most one turn of a big one.
IMAGE_CHUNK = 4  # images through the backbone
HEAD_CHUNK = 64  # products through the classifier
# Micro-batching: concurrent small requests are combined into one model call. The first one waits at most this
# long for the others in flight to join (never when it is alone), and a batch never holds more than a turn's work.
BATCH_WAIT_MS = 2.0
# Images over this many pixels (as stored) decode at most DECODE_SLOTS at a time, one core fewer than the machine
# has: decoding releases the GIL, so without a bound a flood of large images takes every core from small requests.
HEAVY_PIXELS = 1_000_000
DECODE_SLOTS = max(1, (os.cpu_count() or 2) - 1)
MAX_TOP_K = 1_000
FORM_CONTENT_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
REVIEW_WINDOW = 1_000  # predictions behind the deepfusion_needs_review_ratio gauge
SWAGGER_PREFIX = "/static/swagger-ui"


# ---------------------------------------------------------------------------------------------- schemas
def _id_text(value: Any) -> Any:
    """Catalog ids are often numbers: accept an integer id and use its decimal text."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _unicode_text(value: str) -> str:
    """Reject text that cannot be encoded as UTF-8: JSON allows lone surrogates such as "\\ud800", which would
    fail later in pandas/pyarrow or when the id is echoed back."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it contains a lone surrogate)") from None
    return value


def _blank_is_absent(value: Any) -> Any:
    """A blank or whitespace-only value is an absent field, as an empty cell is in a CSV (a blank year or id is
    not a validation error: the product is predicted without it, and a product without an id gets its position)."""
    return None if isinstance(value, str) and not value.strip() else value


IdText = Annotated[str, BeforeValidator(_id_text), StringConstraints(max_length=MAX_FIELD_CHARS),
                   AfterValidator(_unicode_text)]
ShortText = Annotated[str, StringConstraints(max_length=MAX_FIELD_CHARS), AfterValidator(_unicode_text)]
TitleText = Annotated[str, StringConstraints(max_length=MAX_TITLE_CHARS), AfterValidator(_unicode_text)]
DescriptionText = Annotated[str, StringConstraints(max_length=MAX_DESCRIPTION_CHARS), AfterValidator(_unicode_text)]
Year = Annotated[int, Field(ge=1000, le=3000)]
OptionalId = Annotated[IdText | None, BeforeValidator(_blank_is_absent)]
OptionalYear = Annotated[Year | None, BeforeValidator(_blank_is_absent)]

_EXAMPLE_PRODUCT = {
    "id": "15970", "gender": "Men", "masterCategory": "Apparel", "subCategory": "Topwear",
    "baseColour": "Navy Blue", "season": "Fall", "year": 2011, "usage": "Casual",
    "productDisplayName": "Turtle Check Men Navy Blue Shirt",
}
# A 1x1 PNG: the smallest valid image_base64, for the examples.
_EXAMPLE_IMAGE = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNgYPgPAAEDAQAIicLsAAAAAElFTkSuQmCC")
_EXAMPLE_PREDICTION = {
    "id": "15970", "prediction": "Shirts", "confidence": 0.9421,
    "top_k": [{"label": "Shirts", "confidence": 0.9421}, {"label": "Tshirts", "confidence": 0.0388},
              {"label": "Kurtas", "confidence": 0.0061}],
    "inputs": "metadata+title", "needs_review": False,
}
PREDICT_EXAMPLES: dict[str, dict[str, Any]] = {
    "catalog row": {"summary": "One product with every catalog field",
                    "value": {"products": [_EXAMPLE_PRODUCT], "top_k": 3}},
    "title only": {"summary": "A product known only by its title (metadata missing)",
                   "value": {"products": [{"id": "a1", "productDisplayName": "Nike Men Black Running Shoes"}]}},
    "metadata only": {"summary": "Attributes without a title",
                      "value": {"products": [{"id": 7, "gender": "Women", "masterCategory": "Accessories",
                                              "subCategory": "Bags", "baseColour": "Brown"}], "top_k": 1}},
    "with image": {"summary": "A product with its photo, base64 (read by models trained with images)",
                   "value": {"products": [{"id": "p9", "gender": "Men", "productDisplayName": "Puma Blue Cap",
                                           "image_base64": _EXAMPLE_IMAGE}]}},
    "batch": {"summary": "Several products in one request (at most max_items)",
              "value": {"products": [_EXAMPLE_PRODUCT, {"productDisplayName": "Titan Women Silver Watch"},
                                     {"gender": "Girls", "subCategory": "Topwear", "year": 2012}], "top_k": 2}},
}


class ProductFields(BaseModel):
    """The catalog columns a model reads; all optional (absent = unknown)."""

    model_config = ConfigDict(extra="forbid")

    id: OptionalId = Field(None, description="Product id (text or integer), echoed back; defaults to the "
                              "product's position in the request.")
    gender: ShortText | None = Field(None, description="Metadata, e.g. 'Men', 'Women', 'Boys', 'Unisex'.")
    masterCategory: ShortText | None = Field(None, description="Metadata, e.g. 'Apparel', 'Accessories'.")
    subCategory: ShortText | None = Field(None, description="Metadata, e.g. 'Topwear', 'Shoes'.")
    baseColour: ShortText | None = Field(None, description="Metadata, e.g. 'Navy Blue'.")
    season: ShortText | None = Field(None, description="Metadata, e.g. 'Summer'.")
    year: OptionalYear = Field(None, description="Metadata: the catalog year, 1000 to 3000.")
    usage: ShortText | None = Field(None, description="Metadata, e.g. 'Casual', 'Sports'.")
    productDisplayName: TitleText | None = Field(None, description="The product title.")


class Product(ProductFields):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE_PRODUCT]})

    image_base64: str | None = Field(
        None, description="The product photo (JPEG, PNG, WebP, GIF or BMP), base64-encoded; a "
        "'data:image/...;base64,' prefix is accepted. Null or empty: no image.")
    image_url: str | None = Field(
        None, max_length=4096, description="The product photo's http(s) link, fetched by the server: only when "
        "it was started with --image-url-hosts, and only from those hosts. Not with image_base64.")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid",
                              json_schema_extra={"examples": [{"products": [_EXAMPLE_PRODUCT], "top_k": 3}]})

    products: list[Product] = Field(min_length=1, description="One or more products (at most max_items).")
    top_k: int = Field(3, ge=1, le=MAX_TOP_K, description="Ranked labels per product (capped at n classes).")


class UploadForm(ProductFields):
    """One product as a multipart form: the catalog columns as fields plus an optional ``image`` file."""

    top_k: int = Field(3, ge=1, le=MAX_TOP_K)
    image: UploadFile | None = Field(None, description="The product photo as a file upload.")


CatalogNumber = Annotated[float | ShortText, Field(union_mode="left_to_right")]


@dataclass(frozen=True)
class RequestModels:
    """The request models of one model's catalog schema: each catalog column a field under the column's own name
    (``attributes`` maps a column to the model attribute holding it), so /docs shows the user's fields."""

    request: type[BaseModel]
    form: type[BaseModel]
    attributes: dict[str, str]
    id_field: str
    metadata: tuple[str, ...]
    text: tuple[str, ...]
    examples: dict[str, dict[str, Any]]


def _fashion_models() -> RequestModels:
    columns = [ID, *METADATA, TITLE]
    return RequestModels(PredictRequest, UploadForm, {c: c for c in columns}, ID,
                         tuple(METADATA), (TITLE,), PREDICT_EXAMPLES)


def request_models(schema: CatalogSchema) -> RequestModels:
    """Request models for a catalog in ``schema``: the fashion catalog's hand-written ones, or models built from
    the schema's columns (id, text, categorical, numeric; every field optional, unknown fields refused)."""
    if schema.is_fashion:
        return _fashion_models()
    id_field = schema.id or ID
    specs: dict[str, tuple[str, Any, str]] = {
        id_field: ("id", IdText, "Product id (text or integer), echoed back; defaults to the product's position "
                   "in the request."),
    }
    for k, col in enumerate(schema.text):
        role = "The product title." if k == 0 else "More product text (only its first words are read)."
        specs[col] = ("text", TitleText if k == 0 else DescriptionText, role)
    for col in schema.categorical:
        specs[col] = ("categorical", ShortText, "An attribute (text).")
    for col in schema.numeric:
        specs[col] = ("numeric", CatalogNumber, "A number; text such as '£3.42' or '1,299' is read as a catalog "
                      "writes it.")
    attributes = {col: f"field_{i}" for i, col in enumerate(specs)}
    definitions = {
        attributes[col]: (Annotated[kind | None, BeforeValidator(_blank_is_absent)],
                          Field(None, alias=col, description=text))
        for col, (_, kind, text) in specs.items()
    }
    example = {col: _example_value(role, col) for col, (role, _, _) in specs.items()}
    product = create_model(
        "Product", __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [example]}), **definitions,
        image_base64=(str | None, Field(None, description=Product.model_fields["image_base64"].description)),
        image_url=(Product.model_fields["image_url"].annotation,
                   Field(None, description=Product.model_fields["image_url"].description)),
    )
    request = create_model(
        "PredictRequest", __config__=ConfigDict(extra="forbid"),
        products=(list[product], Field(min_length=1, description="One or more products (at most max_items).")),
        top_k=(int, Field(3, ge=1, le=MAX_TOP_K, description="Ranked labels per product (capped at n classes).")),
    )
    form = create_model(
        "UploadForm", __config__=ConfigDict(extra="forbid"), **definitions,
        top_k=(int, Field(3, ge=1, le=MAX_TOP_K)),
        image=(UploadFile | None, Field(None, description="The product photo as a file upload.")),
    )
    examples = {
        "catalog row": {"summary": "One product with every catalog field", "value": {"products": [example],
                                                                                    "top_k": 3}},
    }
    if schema.text:
        examples["title only"] = {"summary": "A product known only by its title",
                                  "value": {"products": [{id_field: "a1", schema.text[0]: example[schema.text[0]]}]}}
    return RequestModels(request, form, attributes, id_field, schema.metadata, tuple(schema.text),
                         examples)


def _example_value(role: str, column: str) -> Any:
    return {"id": "p1", "text": f"{column} of the product", "categorical": f"a {column}", "numeric": 9.99}[role]


class LabelScore(BaseModel):
    label: str
    confidence: float


class LevelPrediction(BaseModel):
    level: str = Field(description="The level: a label column's name, or level_<k> for a path label.")
    prediction: str | None = Field(description="The predicted path's node at this level (None: the path ends "
                                   "above it).")
    confidence: float | None = Field(description="Probability of that node (the paths under it summed).")


class Prediction(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_PREDICTION]})

    id: str
    prediction: str
    confidence: float = Field(description="Calibrated probability of the predicted class.")
    top_k: list[LabelScore] = Field(description="The most likely labels, best first (the first is `prediction`, "
                                    "but for a tree model decoded top-down).")
    inputs: str = Field(description="The inputs the prediction used, joined by '+' in the order metadata, title, "
                        "image (e.g. 'metadata+title+image', 'title'): an input the product lacks is not used.")
    needs_review: bool = Field(description="True when the confidence is below the model's review threshold "
                               "(set at training for a target precision): a person should check this one.")
    levels: list[LevelPrediction] | None = Field(
        None, description="For a model of a category tree (a path label or several label columns): each level's "
        "node of the predicted path, with its confidence. Absent for a flat label.")


class PredictResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"predictions": [_EXAMPLE_PREDICTION]}]})

    predictions: list[Prediction]


class ModelInfo(BaseModel):
    classes: list[str]
    modalities: list[str]
    backend: str = Field(description="'model' (a folder written by train, full stack) or 'export' (a folder "
                         "written by export, served with onnxruntime).")
    version: str = Field(description="DeepFusion version serving the model.")
    format_version: int | None = Field(description="Saved-model format version.")
    temperature: float = Field(description="Softmax temperature fitted on the validation split.")
    review_threshold: float | None = Field(
        description="Confidence under which a prediction has needs_review (None: the model has none).")
    metrics: dict[str, float | int | None] | None = Field(
        description="Test-split metrics written at training time (absent when metrics.json is missing).")
    limits: dict[str, int]


class ErrorMessage(BaseModel):
    detail: str
    errors: list[dict[str, Any]] | None = Field(None, description="For 422: each problem with its location.")


def _error_doc(description: str, **examples: dict[str, Any]) -> dict[str, Any]:
    return {"model": ErrorMessage, "description": description,
            "content": {"application/json": {"examples": {k: {"value": v} for k, v in examples.items()}}}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error_doc("Malformed request", content_length={"detail": "Invalid Content-Length header."}),
    413: _error_doc(
        "Body, image or product count over its limit",
        products={"detail": "300 products in one request; the limit is 256. Split them over several requests."},
        image={"detail": "products.0.image_base64 is 7,340,032 bytes, over the image limit of 5,000,000 bytes"},
        pixels={"detail": "products.0.image_base64 is 8000x6000 pixels, over the limit of 25,000,000 pixels"}),
    415: _error_doc("Wrong content type", form={
        "detail": "Send a form (multipart/form-data or application/x-www-form-urlencoded), not 'application/json'; "
                  "JSON goes to /v1/predict."}),
    422: _error_doc(
        "Invalid input (types, base64, image) or a product without any input the model reads",
        type={"detail": "Invalid request: products.0.year: Input should be a valid integer, unable to parse "
                        "string as an integer",
              "errors": [{"loc": ["body", "products", 0, "year"], "msg": "Input should be a valid integer, "
                          "unable to parse string as an integer", "type": "int_parsing"}]},
        no_input={"detail": "Products 0, 2 have none of the inputs this model reads; each needs at least one of: "
                            "metadata (gender, masterCategory, subCategory, baseColour, season, usage, year), "
                            "title (productDisplayName).",
                  "errors": [{"loc": ["body", "products", 0], "msg": "no input", "type": "no_input"},
                             {"loc": ["body", "products", 2], "msg": "no input", "type": "no_input"}]},
        image={"detail": "products.0.image_base64 is not an image in a supported format (JPEG, PNG, WEBP, GIF, BMP)"}),
}


# ---------------------------------------------------------------------------------------------- errors
class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped, so any string (even one echoing odd input) can be encoded."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error(status: int, detail: str, **extra: Any) -> SafeJSONResponse:
    return SafeJSONResponse({"detail": detail, **extra}, status_code=status)


def _loc(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def _message(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":  # loc is ("body", character position)
        loc = error.get("loc", ())
        reason = (error.get("ctx") or {}).get("error", "")
        return f"Body is not valid JSON ({reason or 'decode error'} at character {loc[-1] if loc else 0})"
    return str(error.get("msg", ""))


async def _validation_error(_: Request, exc: Exception) -> SafeJSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())], "msg": _message(e),
               "type": str(e.get("type", ""))} for e in exc.errors()]  # no "input": it may be huge or bytes
    shown = "; ".join(e["msg"] if e["type"] == "json_invalid" else f"{_loc(e['loc'])}: {e['msg']}"
                      for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return _error(422, f"Invalid request: {shown}{more}", errors=errors)


class NoInputError(HTTPException):
    """422 for products that carry none of the inputs the model reads; ``errors`` locates each one."""

    def __init__(self, detail: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(422, detail)
        self.errors = errors


async def _http_error(_: Request, exc: Exception) -> SafeJSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    extra = {"errors": exc.errors} if isinstance(exc, NoInputError) else {}
    response = _error(exc.status_code, str(exc.detail), **extra)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _internal_error(_: Request, exc: Exception) -> SafeJSONResponse:
    log.exception("internal error while serving a request", exc_info=exc)
    return _error(500, "Internal server error; the server logged the details.")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Request body is larger than the limit of {limit:,} bytes.")


class BodyLimitMiddleware:
    """Answer 413 when Content-Length is over the limit (without reading the body), and stop reading a body
    without Content-Length (chunked) as soon as it goes over the limit."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _error(400, "Invalid Content-Length header.")(scope, receive, send)
                return
            if declared > limit:
                await _too_large(limit)(scope, receive, send)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:  # raised where no handler turned it into a response
            if started:
                raise
            await _too_large(limit)(scope, receive, send)


def _too_large(limit: int) -> SafeJSONResponse:
    return _error(413, str(BodyTooLarge(limit).detail))


# ---------------------------------------------------------------------------------------------- metrics
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """The service's Prometheus metrics, in a registry of their own (one per app, so several apps in one
    process do not clash). Names are listed in docs/http.md."""

    def __init__(self, classes: Sequence[str], info: dict[str, str]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("deepfusion_http_requests", "HTTP requests answered, by endpoint, method and status.",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("deepfusion_http_request_duration_seconds", "Time to answer a request, by endpoint.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("deepfusion_http_requests_in_flight", "Requests being answered now.", registry=r)
        self.predictions = Counter("deepfusion_predictions", "Predictions returned, by predicted class.", ["label"],
                                   registry=r)
        self.inputs = Counter("deepfusion_prediction_inputs", "Predictions returned, by the inputs they used "
                              "('metadata+title', 'title', ...): a shift shows products arriving without a field.",
                              ["inputs"], registry=r)
        self.confidence = Histogram("deepfusion_prediction_confidence", "Confidence of the predicted class.",
                                    buckets=CONFIDENCE_BUCKETS, registry=r)
        self.review = Counter("deepfusion_predictions_needs_review", "Predictions with needs_review (confidence "
                              "under the model's review threshold).", registry=r)
        self.review_ratio = Gauge("deepfusion_needs_review_ratio", f"Share of needs_review among the last "
                                  f"{REVIEW_WINDOW} predictions (0 before any): alert when it climbs.", registry=r)
        self.rejected = Counter("deepfusion_products_rejected", "Products refused with a 422 because they carry "
                                "none of the model's inputs.", registry=r)
        self.batch_size = Histogram("deepfusion_model_batch_size", "Rows (stage=head) or images (stage=image) per "
                                    "model call; above 1 for single-product requests when micro-batching works.",
                                    ["stage"], buckets=BATCH_BUCKETS, registry=r)
        Info("deepfusion_model", "The model being served.", registry=r).info(info)
        for label in classes:  # every class at 0, so rate() and absent-class alerts work from the start
            self.predictions.labels(label=label)
        self._window: deque[bool] = deque(maxlen=REVIEW_WINDOW)
        self._window_lock = threading.Lock()

    def observe(self, predictions: Sequence[Prediction]) -> None:
        for p in predictions:
            self.predictions.labels(label=p.prediction).inc()
            self.inputs.labels(inputs=p.inputs).inc()
            self.confidence.observe(p.confidence)
            if p.needs_review:
                self.review.inc()
        with self._window_lock:
            self._window.extend(p.needs_review for p in predictions)
            ratio = sum(self._window) / len(self._window) if self._window else 0.0
        self.review_ratio.set(ratio)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request by endpoint (the route's path, or 'other' for unknown paths, so a scan cannot
    create unbounded label values), method and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, paths: Callable[[], set[str]]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths

    def _endpoint(self, path: str) -> str:
        if path.startswith(SWAGGER_PREFIX + "/"):
            return SWAGGER_PREFIX
        return path if path in self.paths() else "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]  # an exception that escapes means the server answered 500

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        endpoint = self._endpoint(str(scope.get("path", "")))
        method = str(scope.get("method", ""))
        method = method if method in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH") else "other"
        self.metrics.in_flight.inc()
        start = time.perf_counter()
        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - start)
            self.metrics.requests.labels(endpoint=endpoint, method=method, status=str(status[0])).inc()


# ---------------------------------------------------------------------------------------------- images
class ImageInputError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def decode_base64_image(text: str, max_bytes: int) -> bytes:
    """Base64 (optionally a data URL) -> bytes, refusing invalid base64 and anything over ``max_bytes``."""
    payload = text.strip()
    if payload.startswith("data:"):
        header, _, payload = payload.partition(",")
        if ";base64" not in header:
            raise ImageInputError(422, "is a data URL without ';base64'")
    payload = "".join(payload.split())
    if len(payload) > 4 * (max_bytes // 3 + 1) + 4:  # decided before decoding
        raise ImageInputError(413, f"is over the image limit of {max_bytes:,} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError(422, f"is not valid base64 ({exc})") from None
    if len(data) > max_bytes:
        raise ImageInputError(413, f"is {len(data):,} bytes, over the image limit of {max_bytes:,} bytes")
    return data


def decode_image(decode: Callable[[], Any], max_pixels: int,
                 too_large: tuple[type[BaseException], ...]) -> Any:
    """Run ``decode`` (a backend's decoder of one image within ``max_pixels``), mapping every way it can fail to
    an ``ImageInputError``: 413 over the pixel budget (``too_large``: the backend's ImageTooLarge, raised from
    the header before decoding), 422 for anything that is not a complete image in one of ``IMAGE_FORMATS``."""
    try:
        return decode()
    except too_large as exc:
        size = getattr(exc, "size", None)
        shown = f"{size[0]}x{size[1]} pixels" if size else "too many pixels"
        raise ImageInputError(413, f"is {shown}, over the limit of {max_pixels:,} pixels") from None
    except Image.DecompressionBombError as exc:
        raise ImageInputError(413, f"has too many pixels (over the limit of {max_pixels:,} pixels: {exc})") from None
    except UnidentifiedImageError:
        raise ImageInputError(422, f"is not an image in a supported format "
                                   f"({', '.join(IMAGE_FORMATS)})") from None
    except DECODE_ERRORS as exc:  # truncated or corrupt data
        raise ImageInputError(422, f"is not a readable image ({', '.join(IMAGE_FORMATS)}): "
                                   f"{type(exc).__name__}: {exc}") from None


def stored_pixels(data: bytes) -> int:
    """Width x height from the image header (nothing is decoded); 0 when the header cannot be read, in which
    case decoding fails at once."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            return im.size[0] * im.size[1]
    except DECODE_ERRORS:
        return 0


def image_sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class EmbeddingLRU:
    """A bounded in-memory map (image key -> embedding); the least recently used entry goes first when full.
    Thread-safe. Vectors are kept as float16, the precision of the training cache, so a vector is the same
    whichever cache it came from (as embeddings.EmbeddingLRU, which this module cannot import)."""

    def __init__(self, max_entries: int = EMBEDDING_CACHE_SIZE) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise ValueError(f"embedding_cache_size must be a non-negative integer, got {max_entries!r}")
        self.max_entries = max_entries
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            vec = self._items.get(key)
            if vec is None:
                return None
            self._items.move_to_end(key)
        return vec.astype(np.float32)

    def put(self, key: str, vec: np.ndarray) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._items[key] = np.asarray(vec, dtype=np.float16)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)


# ---------------------------------------------------------------------------------------------- model lock
class TurnLock:
    """A lock taken in turns: when it is released, the waiting small request (priority 0) goes first, then the
    others in arrival order. A plain lock wakes waiters in no particular order, so the thread of a big
    request could take it back turn after turn."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._waiting: list[tuple[int, int, threading.Event]] = []
        self._arrival = itertools.count()

    @property
    def held(self) -> bool:
        return self._held

    @contextlib.contextmanager
    def turn(self, priority: int = 1) -> Iterator[None]:
        with self._mutex:
            wake = None
            if self._held:
                wake = threading.Event()
                heapq.heappush(self._waiting, (priority, next(self._arrival), wake))
            self._held = True
        if wake is not None:
            wake.wait()  # the releasing thread hands the lock over: it stays held in between
        try:
            yield
        finally:
            with self._mutex:
                if self._waiting:
                    heapq.heappop(self._waiting)[2].set()
                else:
                    self._held = False


@dataclass
class _Batch:
    items: list[Any] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    members: int = 0
    closed: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    results: list[Any] | None = None
    error: BaseException | None = None


class MicroBatcher:
    """Combines the items of concurrent small submissions into one call of ``run(items, params)`` (one forward
    pass), taken under the model lock as a priority-0 turn.

    The first submission of a batch leads it: when other requests are in flight (``busy() > 1``) it waits up to
    ``max_wait_s`` for them to join (or for the batch to reach its size), then waits for its turn of the lock;
    submissions that arrive meanwhile still join, up to ``max_items`` items. The batch closes when its turn
    starts, so under load batches grow on their own while the model is busy, and a lone request never waits.
    ``run`` returns one result per item, in order; an exception in it is raised in every member's thread."""

    def __init__(self, run: Callable[[list[Any], list[Any]], list[Any]], lock: TurnLock, *,
                 max_wait_s: float, busy: Callable[[], int]) -> None:
        self.run = run
        self.lock = lock
        self.max_wait_s = max_wait_s
        self.busy = busy
        self._cond = threading.Condition(threading.Lock())
        self._open: _Batch | None = None

    @property
    def waiting(self) -> int:
        """Items in the batch now open (for tests and debugging)."""
        with self._cond:
            return len(self._open.items) if self._open is not None else 0

    def submit(self, items: list[Any], param: Any, max_items: int) -> list[Any]:
        with self._cond:
            batch = self._open
            leader = batch is None or len(batch.items) + len(items) > max_items
            if leader:
                batch = self._open = _Batch()
            assert batch is not None
            start = len(batch.items)
            batch.items.extend(items)
            batch.params.append(param)
            batch.members += 1
            self._cond.notify_all()
        if not leader:
            batch.done.wait()
            if batch.error is not None:
                raise batch.error
            assert batch.results is not None
            return batch.results[start : start + len(items)]
        if self.max_wait_s > 0 and self.busy() > 1:
            with self._cond:
                self._cond.wait_for(lambda: len(batch.items) >= max_items or batch.members >= self.busy(),
                                    timeout=self.max_wait_s)
        try:
            with self.lock.turn(0):
                with self._cond:
                    if self._open is batch:
                        self._open = None
                    batch.closed = True
                    todo, params = list(batch.items), list(batch.params)
                batch.results = self.run(todo, params)
        except BaseException as exc:
            batch.error = exc
            raise
        finally:
            batch.done.set()
        return batch.results[start : start + len(items)]


# ---------------------------------------------------------------------------------------------- backends
class Backend(Protocol):
    """What the HTTP layer needs from a model (service.ModelFolderBackend, service.ExportBackend)."""

    kind: str  # "model" or "export"
    classes: list[str]
    modalities: list[str]
    image_dim: int  # the backbone's feature width (0 without images)
    too_large: tuple[type[BaseException], ...]  # what decoding raises over the pixel budget

    @property
    def needs_images(self) -> bool: ...

    def info(self) -> dict[str, Any]:
        """format_version, temperature, review_threshold, metrics for /v1/model."""
        ...

    def check_image(self, data: bytes, max_pixels: int) -> None:
        """Decode (or check) an image within the budget, for a model that does not read images."""
        ...

    def image_pixels(self, data: bytes) -> np.ndarray:
        """The backbone's input pixels, uint8 (height, width, 3), decoded within the budget."""
        ...

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        """Embeddings (n, image_dim) of uint8 (n, height, width, 3) pixels."""
        ...

    def predict_rows(self, rows: list[dict[str, Any]], top_k: int,
                     image_embeddings: tuple[np.ndarray, np.ndarray] | None) -> list[dict[str, Any]]:
        """One dict per row: id, prediction, confidence, top_k [{label, confidence}], inputs, needs_review."""
        ...


# ---------------------------------------------------------------------------------------------- service
@dataclass
class _Image:
    key: str  # SHA-1 of the bytes
    pixels: np.ndarray | None = None  # the backbone's input, decoded and resized, when not cached
    embedding: np.ndarray | None = None  # from the in-memory cache


@dataclass
class _Item:
    fields: ProductFields
    image: _Image | None


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s)", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def finite(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def metrics_summary(path: Path) -> dict[str, float | int | None] | None:
    """The test metrics a model folder's metrics.json holds, for /v1/model (None without the file)."""
    metrics = read_json(path) if path.is_file() else {}
    summary = {k: finite(metrics[k]) for k in ("accuracy", "macro_f1", "weighted_f1", "n") if k in metrics}
    return summary or None


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_limits(*, max_items: int, max_image_bytes: int, max_body_bytes: int, max_image_pixels: int,
                 embedding_cache_size: int, batch_wait_ms: float) -> None:
    """Refuse a bad limit before a model is loaded."""
    for name, value in [("max_items", max_items), ("max_image_bytes", max_image_bytes),
                        ("max_body_bytes", max_body_bytes), ("max_image_pixels", max_image_pixels)]:
        _positive(name, value)
    if isinstance(embedding_cache_size, bool) or not isinstance(embedding_cache_size, int) or \
            embedding_cache_size < 0:
        raise ValueError(f"embedding_cache_size must be a non-negative integer, got {embedding_cache_size!r}")
    if isinstance(batch_wait_ms, bool) or not isinstance(batch_wait_ms, int | float) or \
            not (0 <= batch_wait_ms <= 1000):
        raise ValueError(f"batch_wait_ms must be a number of milliseconds from 0 to 1000, got {batch_wait_ms!r}")


def _present_title(text: str | None) -> bool:
    """Whether a title has a word once cleaned as features.clean_title / runtime.clean_title do (lowercase,
    everything but a-z, 0-9 and spaces dropped): "!!!" is no title."""
    return bool(text) and any(c.isascii() and c.isalnum() for c in str(text).lower())


def modality_fields(models: RequestModels) -> dict[str, str]:
    """Each input, named with the request fields that carry it (for the no-input error)."""
    return {
        "metadata": f"metadata ({', '.join(models.metadata)})",
        "title": f"title ({', '.join(models.text)})",
        "image": "image (image_base64, or the image file of /v1/predict/upload)",
    }


MODALITY_FIELDS = modality_fields(_fashion_models())


class PredictionService:
    """A loaded model (a backend) plus the request limits; ``predict`` is thread-safe."""

    def __init__(self, backend: Backend, *, source: Path, max_items: int = MAX_ITEMS,
                 max_image_bytes: int = MAX_IMAGE_BYTES, max_body_bytes: int = MAX_BODY_BYTES,
                 max_image_pixels: int = MAX_IMAGE_PIXELS, embedding_cache_size: int = EMBEDDING_CACHE_SIZE,
                 batch_wait_ms: float = BATCH_WAIT_MS, image_url_hosts: str | Sequence[str] | None = None) -> None:
        check_limits(max_items=max_items, max_image_bytes=max_image_bytes, max_body_bytes=max_body_bytes,
                     max_image_pixels=max_image_pixels, embedding_cache_size=embedding_cache_size,
                     batch_wait_ms=batch_wait_ms)
        self.backend = backend
        self.model_dir = source
        # The request's fields are the catalog's columns, as the model's saved schema names them.
        self.models = request_models(getattr(backend, "schema", None) or FASHION)
        self.cache = EmbeddingLRU(embedding_cache_size)
        self.limits = {"max_items": max_items, "max_image_bytes": max_image_bytes,
                       "max_body_bytes": max_body_bytes, "max_image_pixels": max_image_pixels}
        self.needs_images = backend.needs_images
        # image_url: off unless the operator names the hosts (image_links.HostPolicy keeps it from becoming SSRF).
        self.links = None
        if image_url_hosts:
            from .image_links import ServiceLinks

            self.links = ServiceLinks(image_url_hosts, max_image_bytes)
        self.image_chunk = IMAGE_CHUNK
        self.head_chunk = HEAD_CHUNK
        self._lock = TurnLock()
        self._decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        wait = batch_wait_ms / 1000.0
        self.image_batcher = MicroBatcher(self._run_images, self._lock, max_wait_s=wait, busy=lambda: self._in_flight)
        self.head_batcher = MicroBatcher(self._run_head, self._lock, max_wait_s=wait, busy=lambda: self._in_flight)
        self.info = ModelInfo(classes=list(backend.classes), modalities=list(backend.modalities), backend=backend.kind,
                              version=__version__, limits=self.limits, **backend.info())
        self.metrics = ServiceMetrics(self.info.classes, {
            "backend": backend.kind, "modalities": "+".join(backend.modalities), "classes": str(len(backend.classes)),
            "version": __version__, "path": str(source)})
        log.info("serving %s (%s, %s, %d classes)", source, backend.kind, "+".join(backend.modalities),
                 len(self.info.classes))

    # ------------------------------------------------------------------ images
    def image_bytes(self, where: str, data: bytes, seen: dict[str, _Image] | None = None) -> _Image:
        """Check and decode one image, on the caller's thread (outside the model lock). An image already in
        the embedding cache, or in ``seen`` (the request's images so far), was decoded before and is not
        decoded again."""
        if len(data) > self.limits["max_image_bytes"]:
            raise HTTPException(413, f"{where} is {len(data):,} bytes, over the image limit of "
                                     f"{self.limits['max_image_bytes']:,} bytes")
        image = _Image(image_sha1(data))
        if seen is not None:
            if image.key in seen:
                return seen[image.key]
            seen[image.key] = image
        if self.needs_images:
            image.embedding = self.cache.get(image.key)
            if image.embedding is not None:
                return image
        # A large image takes one of a few decode slots, so a flood of them keeps a core free for the rest.
        heavy = stored_pixels(data) > HEAVY_PIXELS
        max_pixels = self.limits["max_image_pixels"]
        backend = self.backend
        try:
            with self._decode_slots if heavy else contextlib.nullcontext():
                if self.needs_images:
                    image.pixels = decode_image(lambda: backend.image_pixels(data), max_pixels, backend.too_large)
                else:
                    decode_image(lambda: backend.check_image(data, max_pixels), max_pixels, backend.too_large)
        except ImageInputError as exc:
            raise HTTPException(exc.status, f"{where} {exc.detail}") from None
        return image

    def base64_image(self, where: str, text: str | None, seen: dict[str, _Image] | None = None) -> _Image | None:
        if text is None or not text.strip():
            return None
        try:
            data = decode_base64_image(text, self.limits["max_image_bytes"])
        except ImageInputError as exc:
            raise HTTPException(exc.status, f"{where} {exc.detail}") from None
        return self.image_bytes(where, data, seen)

    def url_image(self, where: str, url: str | None, seen: dict[str, _Image] | None = None) -> _Image | None:
        if url is None or not url.strip():
            return None
        if self.links is None:
            raise HTTPException(422, f"{where}: this server does not fetch image links (it was started without "
                                     "--image-url-hosts); send the image as image_base64")
        from .image_links import LinkError

        try:
            data = self.links.fetch(url.strip())
        except LinkError as exc:
            raise HTTPException(422, f"{where} could not be used: {exc}") from None
        return self.image_bytes(where, data, seen)

    def product_image(self, i: int, product: Product, seen: dict[str, _Image]) -> _Image | None:
        if product.image_url and product.image_base64:
            raise HTTPException(422, f"products.{i}: send image_base64 or image_url, not both")
        if product.image_url:
            return self.url_image(f"products.{i}.image_url", product.image_url, seen)
        return self.base64_image(f"products.{i}.image_base64", product.image_base64, seen)

    # ------------------------------------------------------------------ checks
    def check_count(self, n: int) -> None:
        if n > self.limits["max_items"]:
            raise HTTPException(413, f"{n:,} products in one request; the limit is "
                                     f"{self.limits['max_items']:,}. Split them over several requests.")

    def has_input(self, item: _Item) -> bool:
        """Whether the product carries at least one input the model reads (as the models decide it: a metadata
        field that is not blank, a title with a word, an image)."""
        models = self.models
        modalities = self.backend.modalities
        values = {col: getattr(item.fields, attr) for col, attr in models.attributes.items()}
        if "metadata" in modalities and any(
                values[c] is not None and (not isinstance(values[c], str) or values[c].strip())
                for c in models.metadata):
            return True
        if "title" in modalities and any(_present_title(values[c]) for c in models.text):
            return True
        return "image" in modalities and item.image is not None

    def check_inputs(self, items: list[_Item], *, form: bool = False) -> None:
        missing = [i for i, item in enumerate(items) if not self.has_input(item)]
        if not missing:
            return
        self.metrics.rejected.inc(len(missing))
        named = modality_fields(self.models)
        needs = ", ".join(named[m] for m in self.backend.modalities if m in named)
        if form:
            detail = f"The product has none of the inputs this model reads; send at least one of: {needs}."
            errors = [{"loc": ["body"], "msg": "no input", "type": "no_input"}]
        else:
            shown = ", ".join(str(i) for i in missing[:20]) + (f" (and {len(missing) - 20} more)"
                                                               if len(missing) > 20 else "")
            which = f"Product {shown} has" if len(missing) == 1 else f"Products {shown} have"
            detail = f"{which} none of the inputs this model reads; each needs at least one of: {needs}."
            errors = [{"loc": ["body", "products", i], "msg": "no input", "type": "no_input"} for i in missing]
        raise NoInputError(detail, errors)

    # ------------------------------------------------------------------ model calls
    def _forward(self, pixels: list[np.ndarray]) -> np.ndarray:
        self.metrics.batch_size.labels(stage="image").observe(len(pixels))
        return self.backend.forward(np.stack(pixels))

    def _run_images(self, items: list[tuple[str, np.ndarray]], _: list[Any]) -> list[np.ndarray]:
        """A micro-batch of images (key, pixels) through the backbone, each distinct image once."""
        unique: dict[str, np.ndarray] = {}
        for key, pixels in items:
            unique.setdefault(key, pixels)
        vectors = dict(zip(unique, self._forward(list(unique.values())), strict=True))
        return [vectors[key] for key, _ in items]

    def _run_head(self, items: list[tuple[dict[str, Any], np.ndarray | None, bool]],
                  top_ks: list[int]) -> list[dict[str, Any]]:
        """A micro-batch of rows through the classifier, at the largest top_k asked for (each request keeps its
        own)."""
        return self._head([row for row, _, _ in items], max(top_ks),
                          self._stack([(emb, ok) for _, emb, ok in items]))

    def _stack(self, images: list[tuple[np.ndarray | None, bool]]) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.needs_images:
            return None
        emb = np.zeros((len(images), self.backend.image_dim), dtype=np.float32)
        ok = np.zeros(len(images), dtype=bool)
        for i, (vec, present) in enumerate(images):
            if vec is not None and present:
                emb[i], ok[i] = vec, True
        return emb, ok

    def _head(self, rows: list[dict[str, Any]], top_k: int,
              images: tuple[np.ndarray, np.ndarray] | None) -> list[dict[str, Any]]:
        self.metrics.batch_size.labels(stage="head").observe(len(rows))
        out = self.backend.predict_rows(rows, top_k, images)
        if len(out) != len(rows):
            raise RuntimeError(f"the model returned {len(out)} predictions for {len(rows)} products")
        return out

    def _embeddings(self, items: list[_Item], small: bool) -> list[tuple[np.ndarray | None, bool]]:
        """Per item its image's embedding and whether it has one: cached vectors as they are, the others through
        the backbone: a small request's in a micro-batch with other small requests, a big one's
        ``image_chunk`` images per turn of the model lock."""
        todo: dict[str, np.ndarray] = {}
        for item in items:
            if item.image is not None and item.image.pixels is not None:
                todo.setdefault(item.image.key, item.image.pixels)
        computed: dict[str, np.ndarray] = {}
        keys = list(todo)
        if small and keys:
            vectors = self.image_batcher.submit([(k, todo[k]) for k in keys], None, self.image_chunk)
            computed = dict(zip(keys, vectors, strict=True))
        else:
            for start in range(0, len(keys), self.image_chunk):
                chunk = keys[start : start + self.image_chunk]
                with self._lock.turn(1):
                    vectors = self._forward([todo[k] for k in chunk])
                computed.update(zip(chunk, vectors, strict=True))
        for key, vec in computed.items():
            self.cache.put(key, vec)
        out: list[tuple[np.ndarray | None, bool]] = []
        for item in items:
            if item.image is None:
                out.append((None, False))
            else:
                vec = item.image.embedding if item.image.embedding is not None else computed[item.image.key]
                out.append((vec, True))
        return out

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        with self._in_flight_lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    def predict(self, items: list[_Item], top_k: int, *, form: bool = False) -> PredictResponse:
        self.check_count(len(items))
        self.check_inputs(items, form=form)
        start = time.perf_counter()
        rows = []
        attributes = self.models.attributes
        id_attr = attributes[self.models.id_field]
        ids = [str(i) if getattr(item.fields, id_attr) is None else str(getattr(item.fields, id_attr))
               for i, item in enumerate(items)]
        for pid, item in zip(ids, items, strict=True):
            row: dict[str, Any] = {col: getattr(item.fields, attr) for col, attr in attributes.items()}
            row[self.models.id_field] = pid
            rows.append(row)
        to_embed = len({it.image.key for it in items if it.image is not None and it.image.pixels is not None})
        small = len(items) <= self.head_chunk and to_embed <= self.image_chunk
        with self._busy():
            images = self._embeddings(items, small) if self.needs_images else [(None, False)] * len(items)
            if small:
                batch = [(row, emb, ok) for row, (emb, ok) in zip(rows, images, strict=True)]
                out = self.head_batcher.submit(batch, top_k, self.head_chunk)
            else:
                out = []
                for lo in range(0, len(rows), self.head_chunk):
                    hi = lo + self.head_chunk
                    with self._lock.turn(1):
                        out += self._head(rows[lo:hi], top_k, self._stack(images[lo:hi]))
        predictions = [
            Prediction(id=pid, prediction=str(r["prediction"]), confidence=float(r["confidence"]),
                       top_k=[LabelScore(label=str(e["label"]), confidence=float(e["confidence"]))
                              for e in r["top_k"][:top_k]],
                       inputs=str(r.get("inputs", "")), needs_review=bool(r.get("needs_review", False)),
                       levels=[LevelPrediction(**lv) for lv in r["levels"]] if r.get("levels") else None)
            for pid, r in zip(ids, out, strict=True)
        ]
        self.metrics.observe(predictions)
        log.debug("predicted %d products in %.1f ms", len(items), 1000 * (time.perf_counter() - start))
        return PredictResponse(predictions=predictions)


# ---------------------------------------------------------------------------------------------- app
def _swagger_assets() -> Path | None:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    path = Path(str(swagger_ui_path))
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def build_app(service: PredictionService) -> FastAPI:
    """The FastAPI app over ``service``: /healthz, /v1/model, /v1/predict, /v1/predict/upload, /metrics and the
    Swagger UI at /docs, served from the files of the swagger-ui-bundle-v2 package (Swagger UI 5, which reads
    FastAPI's OpenAPI 3.1; no CDN, so it works offline)."""
    limits = service.limits
    app = FastAPI(
        title="DeepFusion", version=__version__, docs_url=None, redoc_url=None,
        description="Categorize catalog products from metadata, title and image. Each product needs at least "
        "one input the model reads; each prediction says which inputs it used and whether a person should "
        f"review it. Limits: {limits['max_items']:,} products and {limits['max_body_bytes']:,} bytes a request, "
        f"{limits['max_image_bytes']:,} bytes and {limits['max_image_pixels']:,} pixels an image.")
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=limits["max_body_bytes"])
    paths: set[str] = set()
    app.add_middleware(MetricsMiddleware, metrics=service.metrics, paths=lambda: paths)  # outermost: sees 413s too
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)

    assets = _swagger_assets()
    if assets is not None:
        app.mount(SWAGGER_PREFIX, StaticFiles(directory=assets), name="swagger-ui")

        @app.get("/docs", include_in_schema=False)
        def docs() -> HTMLResponse:
            return get_swagger_ui_html(
                openapi_url=app.openapi_url or "/openapi.json", title="DeepFusion API",
                swagger_js_url=f"{SWAGGER_PREFIX}/swagger-ui-bundle.js",
                swagger_css_url=f"{SWAGGER_PREFIX}/swagger-ui.css",
                swagger_favicon_url=f"{SWAGGER_PREFIX}/favicon-32x32.png",
                swagger_ui_parameters={"validatorUrl": None, "tryItOutEnabled": True})
    else:  # pragma: no cover - swagger-ui-bundle-v2 is a dependency
        log.warning("swagger-ui-bundle-v2 is not installed: no /docs (the schema is at /openapi.json)")

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model", tags=["service"])
    def model_info() -> ModelInfo:
        return service.info

    @app.get("/metrics", tags=["service"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    def metrics() -> Response:
        """Prometheus metrics: requests, latency, predicted classes, confidence, needs_review (docs/http.md)."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    models = service.models

    def predict(body: PredictRequest) -> PredictResponse:
        """Predict the category of one or more products sent as JSON. Every field is optional, but each product
        needs at least one input the model reads (see /v1/model's modalities), else the request gets a 422
        naming the products."""
        service.check_count(len(body.products))  # before decoding any image
        seen: dict[str, _Image] = {}  # an image sent twice in one request is decoded once
        items = [_Item(product, service.product_image(i, product, seen)) for i, product in enumerate(body.products)]
        return service.predict(items, body.top_k)

    # The request models are the model's own (built from its catalog schema), so the annotations are set here:
    # FastAPI reads them from the functions.
    predict.__annotations__["body"] = Annotated[models.request, Body(openapi_examples=models.examples)]
    # A flat model's predictions carry no "levels" key (None fields are left out).
    app.post("/v1/predict", tags=["predict"], responses=_ERRORS, response_model_exclude_none=True)(predict)

    def predict_upload(request: Request, form: UploadForm) -> PredictResponse:
        """Predict one product sent as a multipart form (fields plus an optional ``image`` file)."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in FORM_CONTENT_TYPES:
            raise HTTPException(415, f"Send a form ({' or '.join(FORM_CONTENT_TYPES)}), not "
                                     f"'{content_type or 'no content type'}'; JSON goes to /v1/predict.")
        image = None
        if form.image is not None:
            limit = limits["max_image_bytes"]
            raw = form.image.file.read(limit + 1)  # never more than the limit in memory
            if len(raw) > limit:
                raise HTTPException(413, f"image is over the image limit of {limit:,} bytes")
            if raw:  # a browser sends an empty part when no file was chosen
                image = service.image_bytes("image", raw)
        return service.predict([_Item(form, image)], form.top_k, form=True)

    predict_upload.__annotations__["form"] = Annotated[models.form, Form()]
    app.post("/v1/predict/upload", tags=["predict"], responses=_ERRORS, response_model_exclude_none=True)(
        predict_upload)

    paths.update(getattr(route, "path", "") for route in app.routes)
    return app
