"""HTTP prediction service: a saved model behind a small FastAPI app.

    from deepfusion.service import create_app, serve
    app = create_app("RUN/metadata")          # a model folder written by train (full stack)
    app = create_app("exported/")             # a folder written by export: onnxruntime, numpy, Pillow only
    serve("exported/", port=8000)             # or run an app with uvicorn directly

The folder decides the backend: one with ``manifest.json`` (``deepfusion export MODEL --out DIR``) is served by
``runtime.ExportedModel`` without importing torch, scikit-learn, scipy or pandas; any other is loaded as a model
folder with ``Predictor.load``. Both answer the same requests with the same schemas, limits and errors: that
HTTP layer is ``deepfusion.http_app``. docs/http.md describes every endpoint.

Endpoints (OpenAPI docs at ``/docs``, served offline):

* ``GET /healthz`` -> ``{"status": "ok"}``
* ``GET /v1/model`` -> classes, modalities, backend, version, model format, test metrics, temperature, limits
* ``GET /metrics`` -> Prometheus metrics (requests, latency, predicted classes, confidence, needs_review)
* ``POST /v1/predict`` -> JSON ``{"products": [{...}, ...], "top_k": 3}``; each product has the catalog
  columns (``id``, ``gender``, ``masterCategory``, ``subCategory``, ``baseColour``, ``season``, ``year``,
  ``usage``, ``productDisplayName``) and an optional ``image_base64``. Every field is optional; a missing
  field, an empty title or no image means that input is absent, but a product with none of the inputs the
  model reads is refused (422, naming the products). Unknown fields are rejected (422), so a misspelt field
  name cannot silently degrade predictions. A product without ``id`` gets its position in the request. Each
  prediction has ``prediction``, ``confidence``, ``top_k``, ``inputs`` (the inputs it used) and
  ``needs_review``.
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
machine has. So a flood of large requests cannot stall small ones. Concurrent small requests are micro-batched:
their products go through the model in one call (the first waits at most ``batch_wait_ms`` for the others).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI

from .http_app import (  # noqa: F401  (re-exported: the service's public names)
    BATCH_WAIT_MS,
    CATEGORICAL,
    CHECK_DECODE_SIZE,
    EMBEDDING_CACHE_SIZE,
    HEAD_CHUNK,
    ID,
    IMAGE_CHUNK,
    MAX_BODY_BYTES,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_ITEMS,
    TITLE,
    BodyLimitMiddleware,
    ImageInputError,
    MicroBatcher,
    ModelInfo,
    Prediction,
    PredictionService,
    PredictRequest,
    PredictResponse,
    SafeJSONResponse,
    TurnLock,
    build_app,
    check_limits,
    decode_base64_image,
    metrics_summary,
    read_json,
)
from .schema import FASHION, CatalogSchema

if TYPE_CHECKING:
    from .embeddings import ImageEmbedder
    from .predictor import Predictor
    from .runtime import ExportedModel

log = logging.getLogger(__name__)

EXPORT_MANIFEST = "manifest.json"  # runtime.MANIFEST: what makes a folder an export


class TrainingStackMissing(ValueError):
    """A model folder to serve where only the lean install (no torch, pandas...) is present."""


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``deepfusion export`` (it has manifest.json)."""
    return (Path(path) / EXPORT_MANIFEST).is_file()


# ---------------------------------------------------------------------------------------------- backends
class ModelFolderBackend:
    """A model folder written by ``train`` / ``Predictor.save``, with the full stack (pandas, torch, ...)."""

    kind = "model"

    def __init__(self, model_dir: Path, *, max_image_pixels: int) -> None:
        import pandas as pd

        from .catalog import ImageTooLarge, open_image_within_budget
        from .embeddings import ImageEmbedder
        from .predictor import Predictor

        self._pd = pd
        self._open_image = open_image_within_budget
        self.too_large: tuple[type[BaseException], ...] = (ImageTooLarge,)
        self.predictor: Predictor = Predictor.load(model_dir, progress=False)
        p = self.predictor
        self.classes = list(p.classes_)
        self.modalities = list(p.modalities)
        self.schema = p.schema_
        # The request's columns as the model's catalog schema names them (http_app.request_models).
        if self.schema.is_fashion:
            self.columns = [ID, *CATEGORICAL, "year", TITLE]
        else:
            self.columns = [self.schema.id or ID, *self.schema.text, *self.schema.metadata]
        self.embedder: ImageEmbedder | None = None
        self.image_dim = 0
        if "image" in self.modalities:
            self.embedder = ImageEmbedder(p.backbone, weights=p.weights, image_size=p.image_size,
                                          cache_dir=p.cache_dir, progress=False, max_pixels=max_image_pixels)
            self.embedder.session()  # export / load the backbone now, not on the first request
            self.image_dim = self.embedder.dim
        config = read_json(model_dir / "config.json")
        self._info = {
            "format_version": config.get("format_version"),
            "temperature": float(p.temperature_),
            "review_threshold": float(p.review_threshold_) if getattr(p, "review_threshold_", None) is not None
            else None,
            "metrics": metrics_summary(model_dir / "metrics.json"),
        }

    @property
    def needs_images(self) -> bool:
        return self.embedder is not None

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def check_image(self, data: bytes, max_pixels: int) -> None:
        with self._open_image(data, max_pixels, CHECK_DECODE_SIZE):
            pass

    def image_pixels(self, data: bytes) -> np.ndarray:
        assert self.embedder is not None
        return self.embedder.resized(self.embedder.decode(data))  # resizing a large image is work too

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        assert self.embedder is not None
        return self.embedder.forward(pixels)

    def predict_rows(self, rows: list[dict[str, Any]], top_k: int,
                     image_embeddings: tuple[np.ndarray, np.ndarray] | None) -> list[dict[str, Any]]:
        frame = self._pd.DataFrame(rows, columns=self.columns)
        extra = {"image_embeddings": image_embeddings} if image_embeddings is not None else {}
        out = self.predictor.predict_frame(frame, top_k=top_k, **extra)
        k = sum(1 for c in out.columns if c.startswith("top") and c.endswith("_label"))
        # A tree label's per-level answers (Predictor.level_columns), for the HTTP layer to pass on.
        levels = [c.removeprefix("prediction_") for c in out.columns if c.startswith("prediction_")]
        rows_out = [
            {"id": str(r[ID]), "prediction": str(r["prediction"]), "confidence": float(r["confidence"]),
             "top_k": [{"label": str(r[f"top{j}_label"]), "confidence": float(r[f"top{j}_confidence"])}
                       for j in range(1, k + 1)],
             "inputs": str(r["inputs"]), "needs_review": bool(r.get("needs_review", False))}
            for r in out.to_dict("records")
        ]
        if levels:
            for row, r in zip(rows_out, out.to_dict("records"), strict=True):
                # A path that ends above a level has no answer there: None, not NaN (JSON has no NaN).
                row["levels"] = [
                    {"level": name, "prediction": None if self._pd.isna(r[f"prediction_{name}"])
                     else str(r[f"prediction_{name}"]),
                     "confidence": None if self._pd.isna(r[f"prediction_{name}"]) else float(r[f"confidence_{name}"])}
                    for name in levels
                ]
        return rows_out


class ExportBackend:
    """A folder written by ``deepfusion export``: ``runtime.ExportedModel`` (onnxruntime, numpy and Pillow)."""

    kind = "export"

    def __init__(self, folder: Path, *, max_image_pixels: int) -> None:
        from .runtime import ExportedModel, ImageTooLarge, open_image_within_budget

        self._open_image = open_image_within_budget
        self.too_large: tuple[type[BaseException], ...] = (ImageTooLarge,)
        self.model: ExportedModel = ExportedModel.load(folder, max_image_pixels=max_image_pixels)
        m = self.model
        self.classes = list(m.classes)
        self.modalities = list(m.modalities)
        saved = m.manifest.get("schema")
        self.schema = CatalogSchema.from_json(saved) if saved else FASHION
        self.image_dim = m.image.dim if m.image is not None else 0
        self._info = {
            "format_version": m.manifest.get("model_format_version"),
            "temperature": float(m.manifest["networks"]["main"].get("network_temperature",
                                                                    m.networks["main"].temperature)),
            "review_threshold": m.review_threshold,
            "metrics": metrics_summary(folder / "metrics.json"),
        }

    @property
    def needs_images(self) -> bool:
        return self.model.needs_images

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def check_image(self, data: bytes, max_pixels: int) -> None:
        with self._open_image(data, max_pixels, CHECK_DECODE_SIZE):
            pass

    def image_pixels(self, data: bytes) -> np.ndarray:
        return self.model.image_pixels(data)

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        return self.model.embed_pixels(pixels)

    def predict_rows(self, rows: list[dict[str, Any]], top_k: int,
                     image_embeddings: tuple[np.ndarray, np.ndarray] | None) -> list[dict[str, Any]]:
        out = self.model.predict(rows, top_k=top_k, image_embeddings=image_embeddings)
        for row in out:
            row.setdefault("needs_review", False)  # an export without a review threshold flags nothing
        return out


# ---------------------------------------------------------------------------------------------- app
def create_app(model_dir: str | Path, *, max_items: int = MAX_ITEMS, max_image_bytes: int = MAX_IMAGE_BYTES,
               max_body_bytes: int = MAX_BODY_BYTES, max_image_pixels: int = MAX_IMAGE_PIXELS,
               embedding_cache_size: int = EMBEDDING_CACHE_SIZE, batch_wait_ms: float = BATCH_WAIT_MS,
               image_url_hosts: str | Sequence[str] | None = None) -> FastAPI:
    """The service for the model in ``model_dir``: a folder written by train (raises ``ModelLoadError`` if it is
    not a model) or by export (``ExportLoadError``). ``max_image_pixels`` bounds the pixels one image may decode
    to; ``embedding_cache_size`` is the number of request-image embeddings kept in memory (0: none);
    ``batch_wait_ms`` is how long the first of several concurrent small requests waits for the others to join
    its model call (0: only requests that arrive while the model is busy are combined). ``image_url_hosts``: the
    hosts the request field ``image_url`` may be fetched from (image_links.HostPolicy); None: the field is
    refused."""
    limits = {"max_items": max_items, "max_image_bytes": max_image_bytes, "max_body_bytes": max_body_bytes,
              "max_image_pixels": max_image_pixels}
    check_limits(**limits, embedding_cache_size=embedding_cache_size, batch_wait_ms=batch_wait_ms)
    path = Path(model_dir)
    backend: ModelFolderBackend | ExportBackend
    if is_export(path):
        backend = ExportBackend(path, max_image_pixels=max_image_pixels)
    else:
        try:
            backend = ModelFolderBackend(path, max_image_pixels=max_image_pixels)
        except ModuleNotFoundError as exc:  # a lean install (no `train` extra) asked to serve a model folder
            raise TrainingStackMissing(
                f"{path} is not an exported folder (no {EXPORT_MANIFEST}), and serving a model folder needs the "
                f"training stack, which is not installed (no module {exc.name!r}): pip install 'deepfusion[train]'"
                f", or export the model where it is installed (deepfusion export {path} --out DIR) and serve DIR."
            ) from exc
    service = PredictionService(backend, source=path, **limits, embedding_cache_size=embedding_cache_size,
                                batch_wait_ms=batch_wait_ms, image_url_hosts=image_url_hosts)
    return build_app(service)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port_free(host: str, port: int) -> None:
    """A ValueError that says what to do when ``host:port`` cannot be listened on (in use, or not this machine's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closing socket is no clash
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ValueError(
                f"Cannot listen on {host}:{port} ({exc.strerror or exc}): another program uses the port, or the "
                "address is not this machine's. Pick a free one with --port (or --host)."
            ) from None


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, **limits: Any) -> None:
    """Serve the model at ``http://host:port`` until interrupted (``limits``: the keyword arguments of
    ``create_app``)."""
    import uvicorn

    _check_port_free(host, port)  # before the model loads: a clear message, not uvicorn's exit 3 after it
    app = create_app(model_dir, **limits)
    if not _is_loopback(host):
        log.warning("serving on %s: the service has no authentication, so anyone who can reach this address "
                    "can use it; put it behind a proxy that authenticates, or bind to 127.0.0.1", host)
    log.info("DeepFusion service on http://%s:%d (docs at /docs, metrics at /metrics)", host, port)
    uvicorn.run(app, host=host, port=port, log_level="info")
