"""HTTP prediction service: a saved model behind a small FastAPI app.

    from deepfusion.service import create_app, serve
    app = create_app("RUN/metadata")          # an ASGI app (TestClient, uvicorn, gunicorn -k uvicorn...)
    serve("RUN/metadata", port=8000)          # or run it with uvicorn directly

Endpoints (OpenAPI docs at ``/docs``):

* ``GET /healthz`` -> ``{"status": "ok"}``
* ``GET /v1/model`` -> classes, modalities, version, model format, test metrics, temperature, limits
* ``POST /v1/predict`` -> JSON ``{"products": [{...}, ...], "top_k": 3}``; each product has the catalog
  columns (``id``, ``gender``, ``masterCategory``, ``subCategory``, ``baseColour``, ``season``, ``year``,
  ``usage``, ``productDisplayName``) and an optional ``image_base64``. Every field is optional; a missing
  field, an empty title or no image means that input is absent and the product is still predicted. Unknown
  fields are rejected (422), so a misspelt field name cannot silently degrade predictions. A product without
  ``id`` gets its position in the request (``"0"``, ``"1"``, ...).
* ``POST /v1/predict/upload`` -> the same for one product sent as a multipart form: the fields above as form
  fields plus an optional ``image`` file.

Input is never trusted: a wrong type, invalid base64, a file that Pillow cannot fully decode, an image over
``max_image_bytes`` or ``max_image_pixels``, more than ``max_items`` products or a body over ``max_body_bytes``
(checked against Content-Length before reading and again while reading) is answered with a 4xx and a JSON
``{"detail": "..."}`` message.

Images never touch the disk. Each is decoded once, on the request's worker thread and outside the model lock:
its header is read first and an image over the pixel budget is refused before any pixel is decoded (a JPEG is
decoded at a reduced scale when it is much larger than the backbone's input), then it is resized to the
backbone's input. Embeddings go to a bounded in-memory LRU cache (``embedding_cache_size`` entries, keyed by the
image's SHA-1, so a repeated image is neither decoded nor embedded again), never to the training cache. Only the
backbone's forward pass and the classifier run under the model lock, a few images or rows per turn, and a small
request is served before the next turn of a big one; large images decode on at most one core fewer than the
machine has. So a flood of large requests cannot stall small ones.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import heapq
import io
import ipaddress
import itertools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .catalog import (
    CATEGORICAL,
    CHECK_DECODE_SIZE,
    ID,
    IMAGE_FORMATS,
    METADATA,
    TITLE,
    ImageTooLarge,
    open_image_within_budget,
)
from .embeddings import DECODE_ERRORS, EmbeddingLRU, ImageEmbedder, image_sha1
from .predictor import Predictor

log = logging.getLogger(__name__)

MAX_FIELD_CHARS = 200  # a categorical value or an id
MAX_TITLE_CHARS = 2_000
MAX_IMAGE_PIXELS = 25_000_000  # width x height (5000 x 5000); a small file can decode to gigabytes
EMBEDDING_CACHE_SIZE = 2048  # request-image embeddings kept in memory (a few KB each)
# Work done per turn of the model lock: a small request waits for at most one turn of a big one.
IMAGE_CHUNK = 4  # images through the backbone
HEAD_CHUNK = 64  # products through the classifier
# Images over this many pixels (as stored) decode at most DECODE_SLOTS at a time, one core fewer than the machine
# has: decoding releases the GIL, so without a bound a flood of large images takes every core from small requests.
HEAVY_PIXELS = 1_000_000
DECODE_SLOTS = max(1, (os.cpu_count() or 2) - 1)
MAX_TOP_K = 1_000
FORM_CONTENT_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


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


IdText = Annotated[str, BeforeValidator(_id_text), StringConstraints(max_length=MAX_FIELD_CHARS),
                   AfterValidator(_unicode_text)]
ShortText = Annotated[str, StringConstraints(max_length=MAX_FIELD_CHARS), AfterValidator(_unicode_text)]
TitleText = Annotated[str, StringConstraints(max_length=MAX_TITLE_CHARS), AfterValidator(_unicode_text)]
Year = Annotated[int, Field(ge=1000, le=3000)]

_EXAMPLE_PRODUCT = {
    "id": "15970", "gender": "Men", "masterCategory": "Apparel", "subCategory": "Topwear",
    "baseColour": "Navy Blue", "season": "Fall", "year": 2011, "usage": "Casual",
    "productDisplayName": "Turtle Check Men Navy Blue Shirt",
}


class ProductFields(BaseModel):
    """The catalog columns a model reads; all optional (absent = unknown)."""

    model_config = ConfigDict(extra="forbid")

    id: IdText | None = Field(None, description="Product id (text or integer), echoed back; defaults to the "
                              "product's position in the request.")
    gender: ShortText | None = None
    masterCategory: ShortText | None = None
    subCategory: ShortText | None = None
    baseColour: ShortText | None = None
    season: ShortText | None = None
    year: Year | None = None
    usage: ShortText | None = None
    productDisplayName: TitleText | None = Field(None, description="The product title.")


class Product(ProductFields):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE_PRODUCT]})

    image_base64: str | None = Field(
        None, description="The product photo (JPEG, PNG, WebP, GIF or BMP), base64-encoded; a "
        "'data:image/...;base64,' prefix is accepted. Null or empty: no image.")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid",
                              json_schema_extra={"examples": [{"products": [_EXAMPLE_PRODUCT], "top_k": 3}]})

    products: list[Product] = Field(min_length=1, description="One or more products (at most max_items).")
    top_k: int = Field(3, ge=1, le=MAX_TOP_K, description="Ranked labels per product (capped at n classes).")


class UploadForm(ProductFields):
    """One product as a multipart form: the catalog columns as fields plus an optional ``image`` file."""

    top_k: int = Field(3, ge=1, le=MAX_TOP_K)
    image: UploadFile | None = Field(None, description="The product photo as a file upload.")


class LabelScore(BaseModel):
    label: str
    confidence: float


class Prediction(BaseModel):
    id: str
    prediction: str
    confidence: float = Field(description="Calibrated probability of the predicted class.")
    top_k: list[LabelScore]


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class ModelInfo(BaseModel):
    classes: list[str]
    modalities: list[str]
    version: str = Field(description="DeepFusion version serving the model.")
    format_version: int | None = Field(description="Saved-model format version.")
    temperature: float = Field(description="Softmax temperature fitted on the validation split.")
    metrics: dict[str, float | int | None] | None = Field(
        description="Test-split metrics written at training time (absent when metrics.json is missing).")
    limits: dict[str, int]


class ErrorMessage(BaseModel):
    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorMessage, "description": text}
    for code, text in [(400, "Malformed request"), (413, "Body, image or product count over its limit"),
                       (415, "Wrong content type"), (422, "Invalid input (types, base64, image)")]
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


async def _http_error(_: Request, exc: Exception) -> SafeJSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    response = _error(exc.status_code, str(exc.detail))
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


def decode_image(data: bytes, max_pixels: int,
                 decode: Callable[[bytes], Image.Image] | None = None) -> Image.Image | None:
    """Decode the image once within ``max_pixels``, mapping every way it can fail to an ``ImageInputError``:
    413 over the pixel budget (refused from the header, before decoding), 422 for anything that is not a
    complete image in one of ``IMAGE_FORMATS``. ``decode`` is the decoder to use (the embedder's, which decodes
    a JPEG towards the backbone's input size); without one the image is only checked, decoded at a small scale
    where the format allows it, and None is returned."""
    try:
        if decode is not None:
            return decode(data)
        with open_image_within_budget(data, max_pixels, CHECK_DECODE_SIZE):
            return None
    except ImageTooLarge as exc:
        shown = f"{exc.size[0]}x{exc.size[1]} pixels" if exc.size else "too many pixels"
        raise ImageInputError(413, f"is {shown}, over the limit of {max_pixels:,} pixels") from None
    except Image.DecompressionBombError as exc:
        raise ImageInputError(413, f"has too many pixels (over the limit of {max_pixels:,} pixels: {exc})") from None
    except UnidentifiedImageError:
        raise ImageInputError(422, f"is not an image in a supported format "
                                   f"({', '.join(IMAGE_FORMATS)})") from None
    except DECODE_ERRORS as exc:  # truncated or corrupt data
        raise ImageInputError(422, f"is not a readable image ({', '.join(IMAGE_FORMATS)}): "
                                   f"{type(exc).__name__}: {exc}") from None


def _stored_pixels(data: bytes) -> int:
    """Width x height from the image header (nothing is decoded); 0 when the header cannot be read, in which
    case decoding fails at once."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            return im.size[0] * im.size[1]
    except DECODE_ERRORS:
        return 0


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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s)", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _finite(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


class PredictionService:
    """A loaded model plus the request limits; ``predict`` is thread-safe."""

    def __init__(self, model_dir: str | Path, *, max_items: int, max_image_bytes: int, max_body_bytes: int,
                 max_image_pixels: int = MAX_IMAGE_PIXELS, embedding_cache_size: int = EMBEDDING_CACHE_SIZE) -> None:
        for name, value in [("max_items", max_items), ("max_image_bytes", max_image_bytes),
                            ("max_body_bytes", max_body_bytes), ("max_image_pixels", max_image_pixels)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(embedding_cache_size, bool) or not isinstance(embedding_cache_size, int) or \
                embedding_cache_size < 0:
            raise ValueError(f"embedding_cache_size must be a non-negative integer, got {embedding_cache_size!r}")
        self.cache = EmbeddingLRU(embedding_cache_size)
        self.model_dir = Path(model_dir)
        self.predictor = Predictor.load(self.model_dir, progress=False)
        self.limits = {"max_items": max_items, "max_image_bytes": max_image_bytes,
                       "max_body_bytes": max_body_bytes, "max_image_pixels": max_image_pixels}
        self.needs_images = "image" in self.predictor.modalities
        self.image_chunk = IMAGE_CHUNK
        self.head_chunk = HEAD_CHUNK
        self.embedder: ImageEmbedder | None = None
        if self.needs_images:
            p = self.predictor
            self.embedder = ImageEmbedder(p.backbone, weights=p.weights, image_size=p.image_size,
                                          cache_dir=p.cache_dir, progress=False, max_pixels=max_image_pixels)
            self.embedder.session()  # export / load the backbone now, not on the first request
        self._lock = TurnLock()
        self._decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)
        config = _read_json(self.model_dir / "config.json")
        metrics_path = self.model_dir / "metrics.json"
        metrics = _read_json(metrics_path) if metrics_path.is_file() else {}
        summary = {k: _finite(metrics[k]) for k in ("accuracy", "macro_f1", "weighted_f1", "n")
                   if k in metrics}
        self.info = ModelInfo(classes=self.predictor.classes_, modalities=list(self.predictor.modalities),
                              version=__version__, format_version=config.get("format_version"),
                              temperature=float(self.predictor.temperature_), metrics=summary or None,
                              limits=self.limits)
        log.info("serving %s (%s, %d classes)", self.model_dir, "+".join(self.predictor.modalities),
                 len(self.info.classes))

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
        if self.embedder is not None:
            image.embedding = self.cache.get(image.key)
            if image.embedding is not None:
                return image
        # A large image takes one of a few decode slots, so a flood of them keeps a core free for the rest.
        heavy = _stored_pixels(data) > HEAVY_PIXELS
        try:
            with self._decode_slots if heavy else contextlib.nullcontext():
                decoded = decode_image(data, self.limits["max_image_pixels"],
                                       self.embedder.decode if self.embedder is not None else None)
                if self.embedder is not None and decoded is not None:
                    image.pixels = self.embedder.resized(decoded)  # resizing a large image is work too
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

    def check_count(self, n: int) -> None:
        if n > self.limits["max_items"]:
            raise HTTPException(413, f"{n:,} products in one request; the limit is "
                                     f"{self.limits['max_items']:,}. Split them over several requests.")

    def _embeddings(self, items: list[_Item], priority: int) -> tuple[np.ndarray, np.ndarray]:
        """The backbone's embeddings of the items' images (zeros and False where there is none): cached ones
        as they are, the others through the backbone, ``image_chunk`` images per turn of the model lock."""
        assert self.embedder is not None
        emb = np.zeros((len(items), self.embedder.dim), dtype=np.float32)
        ok = np.zeros(len(items), dtype=bool)
        todo: dict[str, np.ndarray] = {}
        for item in items:
            if item.image is not None and item.image.pixels is not None:
                todo.setdefault(item.image.key, item.image.pixels)
        computed: dict[str, np.ndarray] = {}
        keys = list(todo)
        for start in range(0, len(keys), self.image_chunk):
            chunk = keys[start : start + self.image_chunk]
            batch = np.stack([todo[k] for k in chunk])
            with self._lock.turn(priority):
                vectors = self.embedder.forward(batch)
            for key, vec in zip(chunk, vectors, strict=True):
                computed[key] = vec
                self.cache.put(key, vec)
        for i, item in enumerate(items):
            if item.image is not None:
                vec = item.image.embedding if item.image.embedding is not None else computed[item.image.key]
                emb[i], ok[i] = vec, True
        return emb, ok

    def predict(self, items: list[_Item], top_k: int) -> PredictResponse:
        self.check_count(len(items))
        start = time.perf_counter()
        rows = []
        for i, item in enumerate(items):
            row: dict[str, Any] = {c: getattr(item.fields, c) for c in [*METADATA, TITLE]}
            row[ID] = str(i) if item.fields.id is None else str(item.fields.id)
            rows.append(row)
        frame = pd.DataFrame(rows, columns=[ID, *CATEGORICAL, "year", TITLE])
        to_embed = len({it.image.key for it in items if it.image is not None and it.image.pixels is not None})
        priority = 0 if len(items) <= self.head_chunk and to_embed <= self.image_chunk else 1
        images = self._embeddings(items, priority) if self.embedder is not None else None
        parts = []
        for lo in range(0, len(frame), self.head_chunk):
            hi = lo + self.head_chunk
            extra = {"image_embeddings": (images[0][lo:hi], images[1][lo:hi])} if images is not None else {}
            with self._lock.turn(priority):
                parts.append(self.predictor.predict_frame(frame.iloc[lo:hi], top_k=top_k, **extra))
        out = pd.concat(parts, ignore_index=True)
        k = sum(1 for c in out.columns if c.startswith("top") and c.endswith("_label"))
        predictions = [
            Prediction(id=str(r[ID]), prediction=str(r["prediction"]), confidence=float(r["confidence"]),
                       top_k=[LabelScore(label=str(r[f"top{j}_label"]),
                                         confidence=float(r[f"top{j}_confidence"])) for j in range(1, k + 1)])
            for r in out.to_dict("records")
        ]
        log.debug("predicted %d products in %.1f ms", len(items), 1000 * (time.perf_counter() - start))
        return PredictResponse(predictions=predictions)


def create_app(model_dir: str | Path, *, max_items: int = 256, max_image_bytes: int = 5_000_000,
               max_body_bytes: int = 50_000_000, max_image_pixels: int = MAX_IMAGE_PIXELS,
               embedding_cache_size: int = EMBEDDING_CACHE_SIZE) -> FastAPI:
    """The service for the model saved in ``model_dir`` (raises ``ModelLoadError`` if it is not a model).
    ``max_image_pixels`` bounds the pixels one image may decode to; ``embedding_cache_size`` is the number of
    request-image embeddings kept in memory (0: none)."""
    service = PredictionService(model_dir, max_items=max_items, max_image_bytes=max_image_bytes,
                                max_body_bytes=max_body_bytes, max_image_pixels=max_image_pixels,
                                embedding_cache_size=embedding_cache_size)
    app = FastAPI(title="DeepFusion", version=__version__,
                  description="Categorize catalog products from metadata, title and image.")
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model", tags=["service"])
    def model_info() -> ModelInfo:
        return service.info

    @app.post("/v1/predict", tags=["predict"], responses=_ERRORS)
    def predict(body: PredictRequest) -> PredictResponse:
        """Predict the category of one or more products sent as JSON."""
        service.check_count(len(body.products))  # before decoding any image
        seen: dict[str, _Image] = {}  # an image sent twice in one request is decoded once
        items = [_Item(product, service.base64_image(f"products.{i}.image_base64", product.image_base64, seen))
                 for i, product in enumerate(body.products)]
        return service.predict(items, body.top_k)

    @app.post("/v1/predict/upload", tags=["predict"], responses=_ERRORS)
    def predict_upload(request: Request, form: Annotated[UploadForm, Form()]) -> PredictResponse:
        """Predict one product sent as a multipart form (fields plus an optional ``image`` file)."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in FORM_CONTENT_TYPES:
            raise HTTPException(415, f"Send a form ({' or '.join(FORM_CONTENT_TYPES)}), not "
                                     f"'{content_type or 'no content type'}'; JSON goes to /v1/predict.")
        image = None
        if form.image is not None:
            limit = service.limits["max_image_bytes"]
            raw = form.image.file.read(limit + 1)  # never more than the limit in memory
            if len(raw) > limit:
                raise HTTPException(413, f"image is over the image limit of {limit:,} bytes")
            if raw:  # a browser sends an empty part when no file was chosen
                image = service.image_bytes("image", raw)
        return service.predict([_Item(form, image)], form.top_k)

    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, **limits: int) -> None:
    """Serve the model at ``http://host:port`` until interrupted (``limits``: the keyword arguments of
    ``create_app``)."""
    import uvicorn

    app = create_app(model_dir, **limits)
    if not _is_loopback(host):
        log.warning("serving on %s: the service has no authentication, so anyone who can reach this address "
                    "can use it; put it behind a proxy that authenticates, or bind to 127.0.0.1", host)
    log.info("DeepFusion service on http://%s:%d (docs at /docs)", host, port)
    uvicorn.run(app, host=host, port=port, log_level="info")
