"""Image embeddings from a frozen backbone, with a content-addressed cache.

An embedding is keyed by the SHA-1 of the image bytes plus a transform key (backbone, weights, input size,
normalisation, augmentation view), so renamed or duplicated files are embedded once, a second run computes
nothing, and a catalog where only some images are new computes only those. The cache is a folder of ``.npz``
shards (``keys``: fixed-width bytes, ``values``: float16), each written to a temporary file and renamed into
place, so a run killed mid-way leaves only complete shards behind.

Every image is decoded once, within a pixel budget (``catalog.open_image_within_budget``: the header is read
first, JPEGs are decoded at a reduced scale when they are much larger than the backbone input). An image that
cannot be read or decoded is treated as missing; all such images of a call are reported in one warning. Images
that arrive as bytes (the HTTP service) are embedded with ``pixels`` + ``forward`` or ``embed_bytes`` and kept
in an in-memory ``EmbeddingLRU``, never in the on-disk store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import struct
import tempfile
import threading
import uuid
import zipfile
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from tqdm.auto import tqdm

from .backbones import (
    BackboneSpec,
    default_cache_dir,
    file_digest,
    get_backbone,
    onnx_model_path,
    weights_path,
)
from .catalog import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, ImageTooLarge, open_image_within_budget

log = logging.getLogger(__name__)

# Bump when preprocessing, augmentation or the feature layout changes (old cache entries are then unused).
# 4: JPEGs much larger than the input are decoded at a reduced scale (images under twice the input size, such as
# the Kaggle catalog's, decode exactly as before, but their cache entries are recomputed once).
TRANSFORM_VERSION = 4
SHARD_SIZE = 4096
# What decoding a broken or hostile file can raise: Pillow's OSError (UnidentifiedImageError, truncated data),
# ValueError, and the SyntaxError / EOFError / struct.error some of its format parsers raise on malformed headers;
# its DecompressionBombError and our ImageTooLarge for pixel bombs. Anything else is a bug and propagates.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
    ImageTooLarge,
)
# A cache shard that np.load cannot read (damaged zip, foreign file): skipped, its vectors recomputed.
SHARD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def image_sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def augment(image: Image.Image, seed: int) -> Image.Image:
    """One augmented view as in the reference study: horizontal flip, a small random crop/shift, and colour
    jitter. Seeded per image and view, so the same view is reproducible (and cacheable)."""
    rng = random.Random(seed)
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    w, h = image.size
    scale = rng.uniform(0.85, 1.0)
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = image.crop((left, top, left + cw, top + ch))
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(rng.uniform(0.8, 1.2))
    return image


class EmbeddingStore:
    """Append-only, crash-safe store of (key -> vector) in one folder per transform key. With ``dim``, shards
    whose vectors have another width (a foreign or older cache in the same place) are skipped with a warning."""

    def __init__(self, folder: Path, dim: int | None = None) -> None:
        self.folder = folder
        self.dim = dim
        self.folder.mkdir(parents=True, exist_ok=True)
        self._index: dict[bytes, np.ndarray] = {}
        for shard in sorted(self.folder.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    keys, values = z["keys"], z["values"]
            except SHARD_ERRORS as exc:  # a foreign or damaged file: skip it rather than fail the run
                log.warning("ignoring unreadable cache shard %s (%s); its images are embedded again", shard, exc)
                continue
            if values.ndim != 2 or len(keys) != len(values) or (dim is not None and values.shape[1] != dim):
                log.warning(
                    "ignoring cache shard %s: it holds %s vectors for %d keys, this backbone's are %s wide; its "
                    "images are embedded again",
                    shard,
                    "x".join(map(str, values.shape)),
                    len(keys),
                    dim,
                )
                continue
            for k, v in zip(keys, values, strict=True):
                self._index[bytes(k)] = v

    def __len__(self) -> int:
        return len(self._index)

    def get(self, key: str) -> np.ndarray | None:
        return self._index.get(key.encode())

    def add(self, keys: Sequence[str], values: np.ndarray) -> None:
        if not len(keys):
            return
        encoded = np.array([k.encode() for k in keys], dtype="S64")
        values = values.astype(np.float16)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, keys=encoded, values=values)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / f"shard-{uuid.uuid4().hex}.npz")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        for k, v in zip(encoded, values, strict=True):
            self._index[bytes(k)] = v


class EmbeddingLRU:
    """A bounded in-memory map (image key -> embedding); the least recently used entry goes first when full.
    Thread-safe. Vectors are kept as float16, the precision of the on-disk store, so a vector is the same
    whichever cache it came from."""

    def __init__(self, max_entries: int = 2048) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise ValueError(f"max_entries must be a non-negative integer, got {max_entries!r}")
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


class ImageEmbedder:
    """Embeds images with a frozen backbone on onnxruntime. ``embed`` takes image files (a catalog), reads and
    decodes the next batch on worker threads while the current one runs, and caches the vectors on disk;
    ``pixels`` + ``forward`` (or ``embed_bytes``) take images as bytes and never write anything."""

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        *,
        weights: str | Path | None = None,
        image_size: tuple[int, int] | None = None,
        cache_dir: str | Path | None = None,
        batch_size: int = 64,
        progress: bool = True,
        threads: int | None = None,
        max_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        self.spec: BackboneSpec = get_backbone(backbone)
        self.weights = weights
        self.image_size = tuple(image_size) if image_size else self.spec.input_size
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.batch_size = batch_size
        self.progress = progress
        self.threads = threads or max(1, os.cpu_count() or 1)
        self.max_pixels = max_pixels
        self._session = None
        self._session_lock = threading.Lock()
        self._stores: dict[int, EmbeddingStore] = {}
        # Images that failed to decode (key -> error), so later views and calls neither retry nor re-report them.
        self._undecodable: dict[str, str] = {}
        self._reported: set[str] = set()
        wdigest = file_digest(weights_path(self.spec, weights))
        self.transform_key = (
            f"{self.spec.name}-{wdigest}-{self.image_size[0]}x{self.image_size[1]}-t{TRANSFORM_VERSION}"
        )

    @property
    def dim(self) -> int:
        return self.spec.feature_dim

    def store(self, view: int = 0) -> EmbeddingStore:
        if view not in self._stores:
            folder = self.cache_dir / "embeddings" / f"{self.transform_key}-v{view}"
            self._stores[view] = EmbeddingStore(folder, dim=self.dim)
            meta = folder / "transform.json"
            if not meta.exists():
                meta.write_text(
                    json.dumps(
                        {
                            "backbone": self.spec.name,
                            "image_size": self.image_size,
                            "mean": self.spec.mean,
                            "std": self.spec.std,
                            "view": view,
                            "transform_version": TRANSFORM_VERSION,
                        }
                    )
                )
        return self._stores[view]

    def session(self):  # noqa: ANN201
        with self._session_lock:  # the service may ask from several threads at once; export and open only once
            if self._session is None:
                import onnxruntime as ort

                path = onnx_model_path(self.spec, self.weights, self.image_size, self.cache_dir)
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = self.threads
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                self._session = ort.InferenceSession(
                    str(path), sess_options=opts, providers=["CPUExecutionProvider"]
                )
        return self._session

    # ------------------------------------------------------------------ preprocessing
    def decode(self, data: bytes) -> Image.Image:
        """The image in ``data`` as RGB, decoded once within ``max_pixels`` (a JPEG at a reduced scale that is
        still at least the input size). Raises one of ``DECODE_ERRORS`` for data that is not a usable image."""
        h, w = self.image_size
        with open_image_within_budget(data, self.max_pixels, (w, h)) as im:
            return im.convert("RGB")  # grayscale, palette and CMYK images become 3-channel RGB

    def pixels(self, data: bytes, view: int = 0, key: str = "") -> np.ndarray:
        """Decoded, (for ``view`` > 0) augmented and resized: uint8 (height, width, 3), a quarter of the memory
        of the normalised input. Raises one of ``DECODE_ERRORS`` for data that is not a usable image."""
        return self.resized(self.decode(data), view, key)

    def resized(self, image: Image.Image, view: int = 0, key: str = "") -> np.ndarray:
        """A decoded RGB image (``decode``) as the backbone's input pixels, uint8 (height, width, 3)."""
        if view > 0:
            image = augment(image, seed=int(key[:12] or "0", 16) * 1009 + view)
        h, w = self.image_size
        return np.asarray(image.resize((w, h), Image.BILINEAR), dtype=np.uint8)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (n, height, width, 3) -> the backbone's float32 (n, 3, height, width) input."""
        x = pixels.astype(np.float32) / 255.0
        x = (x - np.array(self.spec.mean, np.float32)) / np.array(self.spec.std, np.float32)
        return x.transpose(0, 3, 1, 2)

    def preprocess(self, data: bytes, view: int = 0, key: str = "") -> np.ndarray:
        """One image's backbone input, float32 (3, height, width)."""
        return self.normalize(self.pixels(data, view, key)[None])[0]

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        """Embeddings (n, dim) of images from ``pixels`` (uint8, n x height x width x 3), rounded to float16 like
        the cached ones, so an image's vector does not depend on which path computed it."""
        if not len(pixels):
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.session().run(None, {"images": self.normalize(pixels)})[0]
        return out.astype(np.float16).astype(np.float32)

    def embed_bytes(
        self, images: Sequence[bytes | None], *, cache: EmbeddingLRU | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings (n, dim) float32 and the mask of images that decoded, for images given as bytes (None: no
        image). Nothing is written to disk: vectors are looked up in and added to ``cache`` when given."""
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        ok = np.zeros(len(images), dtype=bool)
        keys: list[str | None] = [image_sha1(data) if data is not None else None for data in images]
        todo: dict[str, np.ndarray] = {}
        found: dict[str, np.ndarray] = {}
        failures: list[tuple[str, str]] = []
        for i, (key, data) in enumerate(zip(keys, images, strict=True)):
            if key is None or data is None or key in todo or key in found:
                continue
            cached = cache.get(key) if cache is not None else None
            if cached is not None:
                found[key] = cached
                continue
            try:
                image = self.decode(data)
            except DECODE_ERRORS as exc:
                failures.append((f"image {i}", f"{type(exc).__name__}: {exc}"))
                continue
            todo[key] = self.resized(image)
        names = list(todo)
        for start in range(0, len(names), self.batch_size):
            chunk = names[start : start + self.batch_size]
            for key, vec in zip(chunk, self.forward(np.stack([todo[k] for k in chunk])), strict=True):
                found[key] = vec
                if cache is not None:
                    cache.put(key, vec)
        for i, key in enumerate(keys):
            if key is not None and key in found:
                out[i], ok[i] = found[key], True
        if failures:
            given = sum(k is not None for k in keys)
            _report_failures(given - int(ok.sum()), given, *failures[0])
        return out, ok

    # ------------------------------------------------------------------ image files
    def _read(self, path: str) -> bytes:
        size = os.stat(path).st_size
        if size > MAX_IMAGE_BYTES:  # read whole to hash it: refuse a file no product photo comes near
            raise ImageTooLarge(f"file is {size:,} bytes, over the limit of {MAX_IMAGE_BYTES:,}")
        return Path(path).read_bytes()

    def _load(self, path: str, view: int) -> tuple[str, np.ndarray | None, str]:
        """(key, pixels, "") or (key, None, error) for an image that cannot be read or decoded."""
        key = ""
        try:  # only reading and decoding: an error in what follows is a bug and propagates
            data = self._read(path)
            key = image_sha1(data)
            image = self.decode(data)
        except DECODE_ERRORS as exc:
            return key, None, f"{type(exc).__name__}: {exc}"
        return key, self.resized(image, view, key), ""

    def _hash(self, path: str | None) -> tuple[str | None, str]:
        """(key, "") for a readable file, (None, error) for one that cannot be read, (None, "") without a path."""
        if not path:
            return None, ""
        try:
            return image_sha1(self._read(path)), ""
        except (OSError, ImageTooLarge) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def embed(self, paths: Sequence[str | Path | None], view: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings (n, dim) float32 and a bool mask of the images that could be read and decoded. Images that
        cannot be are treated as missing and reported together in one warning."""
        paths = [str(p) if p else None for p in paths]
        store = self.store(view)
        out = np.zeros((len(paths), self.dim), dtype=np.float32)
        ok = np.zeros(len(paths), dtype=bool)
        with ThreadPoolExecutor(self.threads) as pool:
            hashed = list(pool.map(self._hash, paths, chunksize=256))
        keys = [key for key, _ in hashed]
        errors = {path: error for path, (_, error) in zip(paths, hashed, strict=True) if error}
        todo: dict[str, str] = {}
        for key, path in zip(keys, paths, strict=True):
            if key is not None and store.get(key) is None and key not in todo and key not in self._undecodable:
                todo[key] = path  # type: ignore[assignment]
        failed = self._compute(list(todo.values()), view, store) if todo else []
        errors.update(failed)
        for i, key in enumerate(keys):
            vec = store.get(key) if key else None
            if vec is not None:
                out[i] = vec
                ok[i] = True
            elif key in self._undecodable:
                errors.setdefault(paths[i], self._undecodable[key])  # type: ignore[arg-type]
        computed = len(todo) - len(failed)
        log.info(
            "embedded %d images: %d computed, %d reused (cache or duplicate), %d without a readable image",
            len(paths),
            computed,
            int(ok.sum()) - computed,
            int((~ok).sum()),
        )
        bad = [p for p, good in zip(paths, ok, strict=True) if p is not None and not good]
        # Warned once per embedder: augmented views and later calls of a run meet the same bad files again.
        new = [p for p in bad if p not in self._reported]
        self._reported.update(new)
        if new:
            _report_failures(len(bad), sum(p is not None for p in paths), new[0], errors.get(new[0], "unreadable"))
        elif bad:
            log.debug("%d images treated as missing again (reported before)", len(bad))
        return out, ok

    def _batches(
        self, paths: list[str], view: int, pool: ThreadPoolExecutor, failures: list[tuple[str, str]]
    ) -> Iterator[tuple[list[str], np.ndarray]]:
        """Decoded batches; the next two batches are decoded on worker threads while the caller runs inference
        on the current one (bounded look-ahead keeps memory flat on a large catalog). Images that cannot be
        decoded are appended to ``failures`` as (path, error)."""
        chunks = [paths[i : i + self.batch_size] for i in range(0, len(paths), self.batch_size)]
        pending: deque = deque()
        for chunk in chunks[:2]:
            pending.append([(p, pool.submit(self._load, p, view)) for p in chunk])
        next_chunk = len(pending)
        while pending:
            loaded = [(p, *f.result()) for p, f in pending.popleft()]
            if next_chunk < len(chunks):
                pending.append([(p, pool.submit(self._load, p, view)) for p in chunks[next_chunk]])
                next_chunk += 1
            for path, key, array, error in loaded:
                if array is None:
                    failures.append((path, error))
                    if key:
                        self._undecodable[key] = error
            good = [(k, a) for _, k, a, _ in loaded if a is not None]
            if good:
                yield [k for k, _ in good], np.stack([a for _, a in good])

    def _compute(self, paths: list[str], view: int, store: EmbeddingStore) -> list[tuple[str, str]]:
        """Embed ``paths`` into ``store``; returns (path, error) for the images that could not be decoded."""
        self.session()
        failures: list[tuple[str, str]] = []
        pending_keys: list[str] = []
        pending: list[np.ndarray] = []
        bar = tqdm(
            total=len(paths),
            desc=f"embedding images ({self.spec.name}, view {view})",
            disable=not self.progress,
            unit="img",
        )
        with ThreadPoolExecutor(max(1, self.threads - 1)) as pool:
            for keys, batch in self._batches(paths, view, pool, failures):
                pending.append(self.forward(batch))
                pending_keys += keys
                bar.update(len(keys))
                if len(pending_keys) >= SHARD_SIZE:  # flush, so an interrupted run keeps its finished work
                    store.add(pending_keys, np.concatenate(pending))
                    pending_keys, pending = [], []
        store.add(pending_keys, np.concatenate(pending) if pending else np.zeros((0, self.dim)))
        bar.close()
        return failures


def _report_failures(count: int, total: int, first: str, error: str) -> None:
    """One warning for all the images of a call that could not be read or decoded (each is treated as
    missing), naming the first."""
    log.warning(
        "%s of %s images could not be read or decoded and are treated as missing; first: %s: %s",
        f"{count:,}",
        f"{total:,}",
        first,
        error,
    )
