"""Image embeddings from a frozen backbone, with a content-addressed cache.

An embedding is keyed by the SHA-1 of the image bytes plus a transform key (backbone, weights, input size,
normalisation, augmentation view), so renamed or duplicated files are embedded once, a second run computes
nothing, and a catalog where only some images are new computes only those. The cache is a folder of shards, each
two ``.npy`` files (``EmbeddingStore``): the vectors (float16), read memory-mapped, and their keys. Each file is
written to a temporary file and renamed into place, the keys last, so a run killed mid-way leaves only complete
shards behind.

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
import mmap
import os
import random
import struct
import tempfile
import threading
import uuid
import zipfile
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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
from .catalog import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, ImageTooLarge, letterbox, open_image_within_budget
from .config import DEFAULT_BACKBONE

log = logging.getLogger(__name__)

# Bump when preprocessing, augmentation or the feature layout changes (old cache entries are then unused).
# 4: JPEGs much larger than the input are decoded at a reduced scale (images under twice the input size, such as
# the Kaggle catalog's, decode exactly as before, but their cache entries are recomputed once).
# 5: resized keeping the aspect ratio, padded with white (catalog.letterbox); an image of the input's aspect ratio,
# such as the Kaggle catalog's 60x80, gives the same pixels as before.
TRANSFORM_VERSION = 5
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


KEYS_SUFFIX = ".keys.npy"
VALUES_SUFFIX = ".values.npy"
LEGACY_SUFFIX = ".npz"  # the format before memory-mapped shards: keys and values in one zip; converted on open


class EmbeddingStore:
    """Append-only, crash-safe store of (key -> vector) in one folder per transform key, read memory-mapped.

    A shard is two files: ``shard-ID.values.npy`` (float16, n x dim) and ``shard-ID.keys.npy`` (the n keys,
    fixed-width bytes). Each is written to a temporary file, flushed and renamed into place, the values first: a
    shard exists once its keys file does, so a run killed mid-way leaves complete shards and at worst a values
    file without keys, which is never read. The values are opened with ``mmap_mode="r"``: a lookup reads its rows
    through the page cache, and the process holds only the index in memory (the keys, sorted, with each one's
    shard and row), not the vectors. benchmarks/RESULTS.md ("Cost growth") has the measured bytes per product.

    With ``dim``, shards whose vectors have another width (a foreign or older cache in the same place) are skipped
    with a warning. Shards of the earlier single-file format (``shard-ID.npz``) are converted on open (kept in
    memory instead when the folder is read-only)."""

    def __init__(self, folder: Path, dim: int | None = None) -> None:
        self.folder = folder
        self.dim = dim
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._values: list[np.ndarray] = []  # per shard: (n, dim) float16, memory-mapped
        self._maps: list[mmap.mmap | None] = []  # per shard: its mapping (None: a shard read into memory)
        self._keys = np.zeros(0, dtype="S40")  # sorted, unique
        self._shard = np.zeros(0, dtype=np.int32)
        self._row = np.zeros(0, dtype=np.int32)
        self._pending: list[tuple[np.ndarray, int]] = []  # (keys, shard) not in the index yet
        for legacy in sorted(self.folder.glob(f"shard-*{LEGACY_SUFFIX}")):
            self._convert(legacy)
        for keys_file in sorted(self.folder.glob(f"shard-*{KEYS_SUFFIX}")):
            self._open(keys_file)

    # ------------------------------------------------------------------ reading
    def _usable(self, name: Path, keys: np.ndarray, values: np.ndarray) -> bool:
        if (
            keys.ndim == 1
            and values.ndim == 2
            and len(keys) == len(values)
            and (self.dim is None or values.shape[1] == self.dim)
        ):
            return True
        log.warning(
            "ignoring cache shard %s: it holds %s vectors for %d keys, this backbone's are %s wide; its images are "
            "embedded again",
            name,
            "x".join(map(str, values.shape)),
            len(keys),
            self.dim,
        )
        return False

    def _open(self, keys_file: Path) -> None:
        values_file = keys_file.with_name(keys_file.name[: -len(KEYS_SUFFIX)] + VALUES_SUFFIX)
        try:
            keys = np.load(keys_file, allow_pickle=False)
            values, mapping = _map_npy(values_file)
        except SHARD_ERRORS as exc:  # a foreign or damaged file: skip it rather than fail the run
            log.warning("ignoring unreadable cache shard %s (%s); its images are embedded again", keys_file, exc)
            return
        if self._usable(keys_file, keys, values):
            self._register(keys, values, mapping)

    def _convert(self, legacy: Path) -> None:
        """Rewrite an ``.npz`` shard as a memory-mapped one (same name, same vectors) and remove it."""
        stem = legacy.name[: -len(LEGACY_SUFFIX)]
        if (self.folder / f"{stem}{KEYS_SUFFIX}").exists():  # converted already, by another process
            legacy.unlink(missing_ok=True)
            return
        try:
            with np.load(legacy, allow_pickle=False) as z:
                keys, values = z["keys"], z["values"]
            keys = np.array([bytes(k) for k in keys]) if len(keys) else keys  # as narrow as the keys (S64 before)
        except FileNotFoundError:  # another process converted it since this one listed the folder
            return
        except SHARD_ERRORS as exc:
            log.warning("ignoring unreadable cache shard %s (%s); its images are embedded again", legacy, exc)
            return
        if not self._usable(legacy, keys, values):
            return
        try:
            self._write(stem, keys, values.astype(np.float16))
        except OSError as exc:  # a read-only cache: still usable, from memory
            log.info("cannot convert cache shard %s (%s); reading it into memory", legacy, exc)
            self._register(keys, values)
            return
        legacy.unlink(missing_ok=True)
        log.debug("converted cache shard %s to memory-mapped .npy files", legacy)

    def _register(self, keys: np.ndarray, values: np.ndarray, mapping: mmap.mmap | None = None) -> None:
        with self._lock:
            self._values.append(values)
            self._maps.append(mapping)
            self._pending.append((keys, len(self._values) - 1))

    def _index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The sorted keys and each one's shard and row, with the shards registered since the last call merged in
        (a key stored twice, by two runs that embedded the same image at once, keeps its first shard)."""
        with self._lock:
            if self._pending:
                keys = np.concatenate([self._keys, *(k for k, _ in self._pending)])
                shard = np.concatenate([self._shard, *(np.full(len(k), s, np.int32) for k, s in self._pending)])
                row = np.concatenate([self._row, *(np.arange(len(k), dtype=np.int32) for k, _ in self._pending)])
                order = np.argsort(keys, kind="stable")
                keys, shard, row = keys[order], shard[order], row[order]
                first = np.ones(len(keys), dtype=bool)
                first[1:] = keys[1:] != keys[:-1]
                self._keys, self._shard, self._row = keys[first], shard[first], row[first]
                self._pending = []
            return self._keys, self._shard, self._row

    def __len__(self) -> int:
        return len(self._index()[0])

    def locate(self, keys: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """Shard and row of each key (-1 and -1 for a key that is not stored, or None)."""
        stored, shard, row = self._index()
        n = len(keys)
        where = np.full(n, -1, dtype=np.int32), np.full(n, -1, dtype=np.int32)
        given = [i for i, k in enumerate(keys) if k]
        if not given or not len(stored):
            return where
        query = np.array([keys[i].encode() for i in given])  # type: ignore[union-attr]
        pos = np.minimum(np.searchsorted(stored, query), len(stored) - 1)
        hit = stored[pos] == query
        idx = np.asarray(given)[hit]
        where[0][idx], where[1][idx] = shard[pos[hit]], row[pos[hit]]
        return where

    def read(self, shard: np.ndarray, row: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Copy the located vectors (``locate``) into the rows of ``out``; returns the mask of rows filled. Rows
        are read shard by shard in file order, so each page of a shard is read once."""
        found = shard >= 0
        for s in np.unique(shard[found]):
            idx = np.flatnonzero(shard == s)
            idx = idx[np.argsort(row[idx], kind="stable")]
            out[idx] = self._values[int(s)][row[idx]]
            _release(self._maps[int(s)])
        return found

    def get(self, key: str) -> np.ndarray | None:
        """One stored vector (float16), or None."""
        shard, row = self.locate([key])
        return None if shard[0] < 0 else np.array(self._values[int(shard[0])][int(row[0])])

    # ------------------------------------------------------------------ writing
    def _write_file(self, path: Path, array: np.ndarray) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, array, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _write(self, stem: str, keys: np.ndarray, values: np.ndarray) -> None:
        """Write one shard, values first: its keys file makes it exist (``_open`` reads only shards with one)."""
        self._write_file(self.folder / f"{stem}{VALUES_SUFFIX}", values)
        self._write_file(self.folder / f"{stem}{KEYS_SUFFIX}", keys)
        self._open(self.folder / f"{stem}{KEYS_SUFFIX}")

    def add(self, keys: Sequence[str], values: np.ndarray) -> None:
        """Store ``values`` (n, dim) under ``keys`` as a new shard; the vectors are kept as float16."""
        if not len(keys):
            return
        encoded = np.array([k.encode() for k in keys])
        self._write(f"shard-{uuid.uuid4().hex}", encoded, np.asarray(values).astype(np.float16))


def _map_npy(path: Path) -> tuple[np.ndarray, mmap.mmap]:
    """The array of a ``.npy`` file, memory-mapped read-only, and its mapping (``np.load(mmap_mode="r")`` without
    hiding the mapping, which ``_release`` needs)."""
    with path.open("rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
        if fortran or dtype.hasobject:
            raise ValueError(f"{path.name} is not a C-ordered numeric array")
        count = int(np.prod(shape))
        if os.fstat(f.fileno()).st_size < offset + count * dtype.itemsize:
            raise ValueError(f"{path.name} is shorter than its header says (a truncated file)")
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    array = np.frombuffer(mapping, dtype=dtype, count=count, offset=offset).reshape(shape)
    return array, mapping


def _release(mapping: mmap.mmap | None) -> None:
    """Drop a shard's pages from this process (they stay in the page cache, and are read again on the next
    lookup), so reading vectors out of the cache does not add the whole cache to the process's resident memory."""
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


class EmbeddingRows:
    """Embedding vectors of a list of images, left in the cache's memory-mapped shards until used.

    Holds each row's shard and row number (8 bytes). Selecting rows (``rows[idx]``: an index array, a mask or a
    slice) reads nothing; ``read()`` or ``np.asarray(rows)`` (what ``training.ModalityData.batch`` does with one
    batch) reads them: float32 (n, dim), zeros for an image the cache lacks, then ``transform`` (e.g. the
    model's standardisation, ``transformed``) applied, so the values are those of transforming ``embed``'s array.
    The pages read are released again (``EmbeddingStore.read``): memory holds a batch, not the catalog."""

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(
        self,
        store: EmbeddingStore,
        shard: np.ndarray,
        row: np.ndarray,
        dim: int,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.store = store
        self.shard = np.asarray(shard, dtype=np.int32)
        self.row = np.asarray(row, dtype=np.int32)
        self.dim = dim
        self.transform = transform

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.shard), self.dim)

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def ok(self) -> np.ndarray:
        """Which rows have a vector (their image was read and decoded)."""
        return self.shard >= 0

    def __getitem__(self, key: np.ndarray | slice | Sequence[int]) -> EmbeddingRows:
        if isinstance(key, tuple):
            raise TypeError("EmbeddingRows selects whole rows: index it with one index array, mask or slice")
        return EmbeddingRows(self.store, self.shard[key], self.row[key], self.dim, self.transform)

    def transformed(self, transform: Callable[[np.ndarray], np.ndarray]) -> EmbeddingRows:
        """The same rows, read through ``transform`` (float32 (n, dim) in and out, row by row)."""
        return EmbeddingRows(self.store, self.shard, self.row, self.dim, transform)

    def read(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=np.float32)
        self.store.read(self.shard, self.row, out)
        return out if self.transform is None else self.transform(out)

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        values = self.read()
        return values if dtype is None else values.astype(dtype, copy=False)

    def astype(self, dtype: np.dtype | type, copy: bool = True) -> EmbeddingRows | np.ndarray:
        """Itself for float32 (its rows are read as float32 anew each time, so there is nothing to copy)."""
        return self if np.dtype(dtype) == self.dtype else np.asarray(self, dtype=dtype)

    def mean_std(self, chunk_rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """``values.mean(axis=0)`` and ``values.std(axis=0)`` of the rows as read, bit for bit, reading
        ``chunk_rows`` rows at a time: numpy reduces a C-ordered float32 array over its first axis row after row
        in float32, which is what the running sums here do (tests/test_streaming.py checks it)."""
        n = len(self)
        if not n:
            raise ValueError("mean_std of no rows")
        mean = _running_sum(chunk.read() for chunk in self._chunks(chunk_rows)) / n
        squares = _running_sum(np.square(chunk.read() - mean) for chunk in self._chunks(chunk_rows))
        return mean, np.sqrt(squares / n)

    def _chunks(self, chunk_rows: int) -> Iterator[EmbeddingRows]:
        for start in range(0, len(self), chunk_rows):
            yield self[start : start + chunk_rows]


def concatenate_rows(parts: Sequence[Any]) -> Any:
    """``parts`` (image features: EmbeddingRows or arrays) one after the other. EmbeddingRows of one cache read
    through one transform stay unread (the training set may be larger than memory); anything else is read."""
    first = parts[0]
    if all(
        isinstance(p, EmbeddingRows) and p.store is first.store and p.transform == first.transform for p in parts
    ):
        return EmbeddingRows(
            first.store,
            np.concatenate([p.shard for p in parts]),
            np.concatenate([p.row for p in parts]),
            first.dim,
            first.transform,
        )
    return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])


def _running_sum(chunks: Iterable[np.ndarray]) -> np.ndarray:
    """The row-by-row float32 sum of the chunks' rows, as ``np.add.reduce`` of their concatenation over axis 0."""
    total: np.ndarray | None = None
    for chunk in chunks:
        total = np.add.reduce(chunk if total is None else np.concatenate([total[None], chunk]), axis=0)
    assert total is not None
    return total


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
        backbone: str = DEFAULT_BACKBONE,
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
        return np.asarray(letterbox(image, (w, h)), dtype=np.uint8)

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

    def uncached(self, paths: Sequence[str | Path | None], view: int = 0) -> dict[str, str]:
        """Content key -> path of each distinct readable image in ``paths`` that the cache does not hold yet: what
        ``embed`` would compute (``distributed.embed_images_ray`` computes it on Ray instead)."""
        paths = [str(p) if isinstance(p, str | os.PathLike) and str(p) else None for p in paths]
        with ThreadPoolExecutor(self.threads) as pool:
            keys = [key for key, _ in pool.map(self._hash, paths, chunksize=256)]
        shard, _ = self.store(view).locate(keys)
        todo: dict[str, str] = {}
        for i in np.flatnonzero(shard < 0):
            key = keys[i]
            if key is not None and key not in todo and key not in self._undecodable:
                todo[key] = paths[i]  # type: ignore[assignment]
        return todo

    def onnx_file(self) -> Path:
        """The backbone's ONNX graph (exported into the cache on first use)."""
        return onnx_model_path(self.spec, self.weights, self.image_size, self.cache_dir)

    def embed(self, paths: Sequence[str | Path | None], view: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings (n, dim) float32 and a bool mask of the images that could be read and decoded. Images that
        cannot be are treated as missing and reported together in one warning."""
        rows = self.rows(paths, view)
        return rows.read(), rows.ok

    def rows(self, paths: Sequence[str | Path | None], view: int = 0) -> EmbeddingRows:
        """``embed`` without reading the vectors: the images the cache lacks are embedded into it, and the rows
        returned read the cache's memory-mapped shards only when used (``EmbeddingRows``), so a training set
        costs 8 bytes per product in memory instead of its float32 vectors."""
        # None, "" and NaN (a missing cell of a DataFrame column) all mean "no image".
        paths = [str(p) if isinstance(p, str | os.PathLike) and str(p) else None for p in paths]
        store = self.store(view)
        with ThreadPoolExecutor(self.threads) as pool:
            hashed = list(pool.map(self._hash, paths, chunksize=256))
        keys = [key for key, _ in hashed]
        errors = {path: error for path, (_, error) in zip(paths, hashed, strict=True) if error}
        shard, row = store.locate(keys)
        todo: dict[str, str] = {}
        for i in np.flatnonzero(shard < 0):
            key = keys[i]
            if key is not None and key not in todo and key not in self._undecodable:
                todo[key] = paths[i]  # type: ignore[assignment]
        failed = self._compute(list(todo.values()), view, store) if todo else []
        errors.update(failed)
        if todo:
            shard, row = store.locate(keys)
        ok = shard >= 0
        for i in np.flatnonzero(~ok):
            key = keys[i]
            if key in self._undecodable:
                errors.setdefault(paths[i], self._undecodable[key])  # type: ignore[arg-type, index]
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
        return EmbeddingRows(store, shard, row, self.dim)

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
