"""Image embeddings from a frozen backbone, with a content-addressed cache.

An embedding is keyed by the SHA-1 of the image bytes plus a transform key (backbone, weights, input size,
normalisation, augmentation view), so renamed or duplicated files are embedded once, a second run computes
nothing, and a catalog where only some images are new computes only those. The cache is a folder of ``.npz``
shards (``keys``: fixed-width bytes, ``values``: float16), each written to a temporary file and renamed into
place, so a run killed mid-way leaves only complete shards behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import tempfile
import uuid
from collections import deque
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

log = logging.getLogger(__name__)

TRANSFORM_VERSION = 3  # bump when preprocessing, augmentation or the feature layout changes (old cache entries unused)
SHARD_SIZE = 4096


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
    """Append-only, crash-safe store of (key -> vector) in one folder per transform key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._index: dict[bytes, np.ndarray] = {}
        for shard in sorted(self.folder.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    for k, v in zip(z["keys"], z["values"], strict=True):
                        self._index[bytes(k)] = v
            except Exception as exc:  # a foreign or damaged file: skip it rather than fail the run
                log.warning("ignoring unreadable cache shard %s (%s)", shard, exc)

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


class ImageEmbedder:
    """Embeds image files with a frozen backbone on onnxruntime, reading and decoding the next batch on worker
    threads while the current one runs."""

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
    ) -> None:
        self.spec: BackboneSpec = get_backbone(backbone)
        self.weights = weights
        self.image_size = tuple(image_size) if image_size else self.spec.input_size
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.batch_size = batch_size
        self.progress = progress
        self.threads = threads or max(1, os.cpu_count() or 1)
        self._session = None
        self._stores: dict[int, EmbeddingStore] = {}
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
            self._stores[view] = EmbeddingStore(folder)
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
        if self._session is None:
            import onnxruntime as ort

            path = onnx_model_path(self.spec, self.weights, self.image_size, self.cache_dir)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        return self._session

    def preprocess(self, data: bytes, view: int = 0, key: str = "") -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            image = im.convert("RGB")  # grayscale, palette and CMYK images become 3-channel RGB
        if view > 0:
            image = augment(image, seed=int(key[:12] or "0", 16) * 1009 + view)
        h, w = self.image_size
        image = image.resize((w, h), Image.BILINEAR)
        x = np.asarray(image, dtype=np.float32) / 255.0
        x = (x - np.array(self.spec.mean, np.float32)) / np.array(self.spec.std, np.float32)
        return x.transpose(2, 0, 1)

    def _load(self, path: str, view: int) -> tuple[str, np.ndarray | None]:
        try:
            data = Path(path).read_bytes()
            key = image_sha1(data)
            return key, self.preprocess(data, view, key)
        except Exception as exc:  # unreadable images become "absent", never a crash
            log.debug("cannot embed %s: %s", path, exc)
            return "", None

    def _hash(self, path: str | None) -> str | None:
        if not path:
            return None
        try:
            return image_sha1(Path(path).read_bytes())
        except OSError:
            return None

    def embed(self, paths: Sequence[str | Path | None], view: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings (n, dim) float32 and a bool mask of the images that could be read and decoded."""
        paths = [str(p) if p else None for p in paths]
        store = self.store(view)
        out = np.zeros((len(paths), self.dim), dtype=np.float32)
        ok = np.zeros(len(paths), dtype=bool)
        with ThreadPoolExecutor(self.threads) as pool:
            keys = list(pool.map(self._hash, paths, chunksize=256))
        todo: dict[str, str] = {}
        for key, path in zip(keys, paths, strict=True):
            if key is not None and store.get(key) is None and key not in todo:
                todo[key] = path  # type: ignore[assignment]
        if todo:
            self._compute(list(todo.values()), view, store)
        for i, key in enumerate(keys):
            vec = store.get(key) if key else None
            if vec is not None:
                out[i] = vec
                ok[i] = True
        log.info(
            "embedded %d images: %d computed, %d reused (cache or duplicate), %d without a readable image",
            len(paths),
            len(todo),
            int(ok.sum()) - len(todo),
            int((~ok).sum()),
        )
        return out, ok

    def _batches(self, paths: list[str], view: int, pool: ThreadPoolExecutor) -> Iterator[tuple[list[str], np.ndarray]]:
        """Decoded batches; the next two batches are decoded on worker threads while the caller runs inference
        on the current one (bounded look-ahead keeps memory flat on a large catalog)."""
        chunks = [paths[i : i + self.batch_size] for i in range(0, len(paths), self.batch_size)]
        pending: deque = deque()
        for chunk in chunks[:2]:
            pending.append([pool.submit(self._load, p, view) for p in chunk])
        next_chunk = len(pending)
        while pending:
            loaded = [f.result() for f in pending.popleft()]
            if next_chunk < len(chunks):
                pending.append([pool.submit(self._load, p, view) for p in chunks[next_chunk]])
                next_chunk += 1
            good = [(k, a) for k, a in loaded if a is not None]
            if good:
                yield [k for k, _ in good], np.stack([a for _, a in good])

    def _compute(self, paths: list[str], view: int, store: EmbeddingStore) -> None:
        session = self.session()
        pending_keys: list[str] = []
        pending: list[np.ndarray] = []
        bar = tqdm(
            total=len(paths),
            desc=f"embedding images ({self.spec.name}, view {view})",
            disable=not self.progress,
            unit="img",
        )
        with ThreadPoolExecutor(max(1, self.threads - 1)) as pool:
            for keys, batch in self._batches(paths, view, pool):
                pending.append(session.run(None, {"images": batch})[0])
                pending_keys += keys
                bar.update(len(keys))
                if len(pending_keys) >= SHARD_SIZE:  # flush, so an interrupted run keeps its finished work
                    store.add(pending_keys, np.concatenate(pending))
                    pending_keys, pending = [], []
        store.add(pending_keys, np.concatenate(pending) if pending else np.zeros((0, self.dim)))
        bar.close()
