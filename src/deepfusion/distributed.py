"""Batch prediction and audit folds on Ray: the same jobs as ``runs.predict_catalog`` and the audit's fold loop,
spread over the cores of one machine or the nodes of a Ray cluster.

    from deepfusion.distributed import predict_catalog_ray
    predict_catalog_ray("RUN/fusion", "catalog/", "predictions.parquet", top_k=3, actors=4)

What runs where in ``predict_catalog_ray``:

* The driver (the process that calls it) loads and validates the catalog with ``catalog.load_catalog``, exactly as
  the local engine does, so the rejects report is the same file. The catalog loader mends damaged lines (stray
  quotes, unquoted commas in titles) that a generic CSV reader such as ``ray.data.read_csv`` would split
  differently, which is why the table is not read by Ray itself. A model folder written by ``train`` is exported
  (``export.export_model``) to a temporary folder first; an exported folder (with ``manifest.json``) is used as
  it is. The exported files travel to the workers through Ray's object store, so the model needs no shared disk.
* Ray tasks read and decode the product images (the backbone's input pixels). The image files must be readable
  at the same path on every node (a shared file system or the same copy everywhere).
* A pool of Ray actors, each holding one ``runtime.ExportedModel`` (onnxruntime, numpy and Pillow; no torch),
  embeds the pixels and predicts, batch after batch.
* Ray writes the predictions as Parquet shards into ``OUT.parts/``; the driver merges them in catalog order
  into ``OUT`` (.csv or .parquet), with the columns of the local engine.

``run_folds_ray`` trains the audit's k fold models as parallel Ray tasks (``deepfusion audit --engine ray``), each
task running ``audit.fit_fold``, the fold body of the local loop; only arrays (the fold's probabilities) come back,
never a torch model.

Ray is an optional dependency (``pip install 'deepfusion[ray]'``): this module imports it inside its functions,
and its module level imports nothing that pulls in torch, so Ray workers that unpickle the actor class stay lean.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import runtime as rt

if TYPE_CHECKING:
    from .audit import FoldPlan
    from .catalog import CatalogStream, CatalogTotals
    from .config import ModelConfig
    from .schema import CatalogSchema

log = logging.getLogger(__name__)

RAY_REQUIREMENT = "ray[data]==2.60.0"
ROW = "_row"  # the product's position in the loaded catalog: the shards carry it so the merge restores the order
IMAGE_COLUMN = "image_path"
BATCH_SIZE = rt.BATCH_SIZE  # products per actor call, the runtime's own network batch
CONFIDENCE_DECIMALS = 4  # as runs.CONFIDENCE_DECIMALS (tests/test_ray.py checks that they agree)
SHARD_SUFFIX = ".parquet"
INPUT_PREFIX = "chunk-"  # the staged catalog's files in OUT.input/
CHUNK_ROWS = 8192  # catalog rows read, checked and staged at a time on the driver
# CPUs per image-decoding task. Fractional, which also keeps Ray Data from fusing decoding into the model actors
# (it fuses a task stage into the next actor stage when their resources match): decoding then scales as tasks of
# its own instead of taking the actors' time.
DECODE_CPUS = 0.5
# What Ray may leave in a parts folder besides the shards; anything else there is the user's and is not deleted.
PARTS_EXTRA = frozenset({"_SUCCESS"})
# Set by the Ray Jobs manager in a submitted job's driver: the job's runtime_env is inside.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


class DistributedError(Exception):
    """A distributed run that cannot start or finish (Ray missing, a parts folder holding foreign files); the
    message says what to do."""


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is a separate import, and a separate extra
    except ImportError as exc:
        raise DistributedError(
            f"--engine ray needs Ray Data: pip install 'deepfusion[ray]' (or '{RAY_REQUIREMENT}')."
        ) from exc
    return ray


# ---------------------------------------------------------------------------------------------- Ray session
@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None, ship_code: bool = True) -> Iterator[Any]:
    """The ``ray`` module, connected for the duration of the block.

    * Ray already initialised in this process (a notebook, a test, a caller's own ``ray.init``): used as it is
      and left running.
    * ``address`` given, or ``RAY_ADDRESS`` set (as it is inside a job submitted with ``ray job submit``): that
      cluster is joined and disconnected from afterwards. With ``ship_code``, this package's source is sent to
      the workers (``runtime_env`` ``py_modules``), so the nodes need only its dependencies, not an install of
      this very version; skipped when a submitted job already brings its own ``py_modules``.
    * Otherwise a local Ray with ``num_cpus`` logical CPUs is started here and shut down afterwards. Ray enables
      token authentication for a local cluster by default (and writes ``~/.ray/auth_token`` when there is no
      token yet); the ``RAY_AUTH_MODE`` it sets in this process is put back as it was when Ray shuts down.
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        runtime_env = {"py_modules": [str(Path(__file__).resolve().parent)]} if ship_code else None
        if runtime_env and "py_modules" in json.loads(os.environ.get(JOB_CONFIG_ENV, "{}")).get("runtime_env", {}):
            runtime_env = None  # Ray refuses to merge two py_modules lists; the job's own code is what it asked for
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        try:
            yield ray
        finally:
            ray.shutdown()  # disconnects this driver; the cluster keeps running
        return
    auth_mode = os.environ.get("RAY_AUTH_MODE")
    log.info("starting a local Ray with %s CPUs", num_cpus or "all")
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    try:
        yield ray
    finally:
        ray.shutdown()
        if auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth_mode


def _joins_cluster(ray: Any, address: str | None) -> bool:
    """Whether ``ray_session`` will join a cluster (rather than use this process's Ray or start a local one)."""
    return not ray.is_initialized() and bool(address or os.environ.get("RAY_ADDRESS"))


def _check_cpus(ray: Any, need: float, what: str, joined: bool) -> None:
    """Refuse a run that Ray would never schedule: with fewer CPUs than the actors and one task need, Ray Data
    waits for resources forever instead of failing. A joined cluster may still grow (an autoscaler adds nodes
    for pending work), so there it is only a warning."""
    have = float(ray.cluster_resources().get("CPU", 0.0))
    if have >= need:
        return
    message = f"the Ray cluster has {have:g} CPUs; {what} need {need:g}"
    if joined:
        log.warning("%s: the run waits until the cluster grows (stop it and use fewer if it cannot)", message)
        return
    raise DistributedError(f"{message}. Use fewer, or a Ray with more CPUs.")


# ---------------------------------------------------------------------------------------------- tasks and actors
def _read_image(path: object) -> bytes | None:
    """The bytes of an image file, None when there is no path, the file is over the size limit or unreadable
    (as ``runtime.ExportedModel.predict_frame`` reads files)."""
    if not isinstance(path, str) or not path:
        return None
    try:
        file = Path(path)
        if file.stat().st_size > rt.MAX_IMAGE_BYTES:
            log.warning("image %s is over %s bytes; treated as missing", file, f"{rt.MAX_IMAGE_BYTES:,}")
            return None
        return file.read_bytes()
    except OSError as exc:
        log.warning("cannot read image %s (%s); treated as missing", path, exc)
        return None


def decode_pixels(data: bytes, size: Sequence[int], max_pixels: int) -> np.ndarray:
    """The backbone's uint8 (height, width, 3) input for one image, decoded within ``max_pixels``: the steps of
    ``runtime.ExportedModel.image_pixels``, which needs a loaded model (its onnxruntime sessions) that a decoding
    task should not load. tests/test_ray.py checks that the two agree."""
    h, w = int(size[0]), int(size[1])
    with rt.open_image_within_budget(data, max_pixels, (w, h)) as im:
        rgb = im.convert("RGB")
    return np.asarray(rt.letterbox(rgb, (w, h)), dtype=np.uint8)


def decode_images(batch: dict[str, np.ndarray], *, size: Sequence[int], max_pixels: int) -> dict[str, np.ndarray]:
    """A Ray Data task: read and decode the batch's images. Replaces ``image_path`` with ``pixels`` (n, height,
    width, 3; zeros where there is no usable image) and ``decoded`` (bool)."""
    paths = batch[IMAGE_COLUMN]
    n = len(paths)
    pixels = np.zeros((n, int(size[0]), int(size[1]), 3), dtype=np.uint8)
    decoded = np.zeros(n, dtype=bool)
    failures: list[str] = []
    for i, path in enumerate(paths):
        data = _read_image(path)
        if data is None:
            continue
        try:
            pixels[i] = decode_pixels(data, size, max_pixels)
            decoded[i] = True
        except rt.DECODE_ERRORS as exc:
            failures.append(f"{path}: {type(exc).__name__}: {exc}")
    if failures:
        log.warning("%d images could not be decoded and are treated as missing; first: %s", len(failures), failures[0])
    out = {k: v for k, v in batch.items() if k != IMAGE_COLUMN}
    out["pixels"] = pixels
    out["decoded"] = decoded
    return out


def output_columns(predictions: pd.DataFrame) -> pd.DataFrame:
    """``runs.output_columns`` (which cannot be imported here: runs imports torch): drop ``top1_*``, round the
    confidences."""
    out = predictions.drop(columns=["top1_label", "top1_confidence"], errors="ignore")
    for col in out.columns:
        if col == "confidence" or col.endswith("_confidence") or col.startswith("confidence_"):
            out[col] = out[col].round(CONFIDENCE_DECIMALS)
    return out


def _records(batch: Mapping[str, np.ndarray], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Products as the runtime takes them; a missing value (Arrow null, NaN) becomes None, as in
    ``ExportedModel.predict_frame``. Ray hands a text column whose block holds only nulls over as float32 NaN
    (not a Python float): left as it is, the runtime would read it as the text "nan", an unknown category."""
    n = len(batch[ROW])
    cols = {c: batch[c] for c in columns if c in batch}
    rows: list[dict[str, Any]] = []
    for i in range(n):
        row: dict[str, Any] = {}
        for c, values in cols.items():
            v = values[i]
            row[c] = None if v is None or (isinstance(v, float | np.floating) and math.isnan(v)) else v
        rows.append(row)
    return rows


class BatchPredictor:
    """A Ray Data actor: one exported model, loaded once, predicting batch after batch.

    ``files`` are the exported folder's files (name -> bytes), sent through the object store so that workers
    need no access to the driver's disk; they are written to a private temporary folder only for
    ``ExportedModel.load`` (which checks every SHA-256 against the manifest) and removed right after, since the
    loaded sessions hold everything in memory."""

    def __init__(self, files: Any, *, top_k: int, threads: int | None, max_image_pixels: int) -> None:
        import ray

        if isinstance(files, ray.ObjectRef):  # Ray Data hands constructor arguments over unresolved
            files = ray.get(files)
        folder = Path(tempfile.mkdtemp(prefix="deepfusion-model-"))
        try:
            for name, data in files.items():
                (folder / name).write_bytes(data)
            self.model = rt.ExportedModel.load(folder, threads=threads, max_image_pixels=max_image_pixels)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.top_k = top_k
        f = self.model.fields
        self.columns = [f["id"], *f["categorical"], *f["numeric"], f["title"]]

    def predict_table(self, batch: Mapping[str, np.ndarray]) -> pd.DataFrame:
        """Unrounded predictions of one batch, in ``Predictor.predict_frame``'s columns, plus ``_row``."""
        model = self.model
        n = len(batch[ROW])
        embeddings = None
        if model.image is not None:
            ok = np.asarray(batch["decoded"], dtype=bool).reshape(n)
            features = np.zeros((n, model.image.dim), dtype=np.float32)
            which = np.flatnonzero(ok)
            pixels = np.asarray(batch["pixels"])
            # The runtime's backbone batch, so each image is embedded in a call of the usual size.
            for start in range(0, len(which), rt.IMAGE_BATCH):
                chunk = which[start : start + rt.IMAGE_BATCH]
                features[chunk] = model.embed_pixels(pixels[chunk])
            embeddings = (features, ok)
        rows = model.predict(_records(batch, self.columns), top_k=self.top_k, image_embeddings=embeddings)
        confidence = np.array([r["confidence"] for r in rows], dtype=np.float64)
        # Predictor.load reads a model without a threshold as 1.0, so the local engine flags every product then.
        threshold = 1.0 if model.review_threshold is None else model.review_threshold
        table: dict[str, Any] = {
            "id": [r["id"] for r in rows],
            "prediction": [r["prediction"] for r in rows],
            "confidence": confidence,
            **model.level_columns(rows),  # a tree label's prediction_<level>, confidence_<level>
            "needs_review": confidence < threshold,
            "inputs": [r["inputs"] for r in rows],
        }
        for j in range(min(self.top_k, len(model.classes))):
            table[f"top{j + 1}_label"] = [r["top_k"][j]["label"] for r in rows]
            table[f"top{j + 1}_confidence"] = np.array([r["top_k"][j]["confidence"] for r in rows], dtype=np.float64)
        table[ROW] = np.asarray(batch[ROW], dtype=np.int64)
        return pd.DataFrame(table)

    def __call__(self, batch: dict[str, np.ndarray]) -> pd.DataFrame:
        # The id column under the catalog's own name, as runs.user_columns writes it.
        id_column = self.model.fields.get("id_column") or "id"
        return output_columns(self.predict_table(batch)).rename(columns={"id": id_column})


# ---------------------------------------------------------------------------------------------- driver
def _export_files(folder: Path) -> dict[str, bytes]:
    """The files of an exported folder that ``ExportedModel.load`` reads: the manifest and those it lists."""
    manifest = json.loads((folder / rt.MANIFEST).read_text(encoding="utf-8"))
    return {
        rt.MANIFEST: (folder / rt.MANIFEST).read_bytes(),
        **{n: (folder / n).read_bytes() for n in manifest["files"]},
    }


@contextmanager
def exported_model(model_dir: str | Path) -> Iterator[Path]:
    """An exported folder for ``model_dir``: the folder itself when it is an export (``manifest.json``), else
    an export of the model folder into a temporary folder, removed afterwards."""
    model_dir = Path(model_dir)
    if (model_dir / rt.MANIFEST).is_file():
        yield model_dir
        return
    from .export import export_model  # torch: only on the driver, and only for a model folder

    with tempfile.TemporaryDirectory(prefix="deepfusion-export-") as tmp:
        log.info("exporting %s for the Ray workers", model_dir)
        yield export_model(model_dir, Path(tmp) / "model")


def _prepare_parts(parts: Path) -> None:
    """An empty ``OUT.parts`` folder: shards of an earlier run are removed; a folder holding anything else (or
    a file in the way) is refused rather than cleaned."""
    if parts.is_symlink() or (parts.exists() and not parts.is_dir()):
        raise DistributedError(f"{parts} exists and is not a folder; move it away so the shards can be written there.")
    if parts.is_dir():
        entries = list(parts.iterdir())
        foreign = [
            e.name
            for e in entries
            if e.is_symlink() or not e.is_file() or not (e.name.endswith(SHARD_SUFFIX) or e.name in PARTS_EXTRA)
        ]
        if foreign:
            shown = ", ".join(sorted(foreign)[:5])
            raise DistributedError(
                f"{parts} holds files that are not prediction shards ({shown}); move them away or choose another --out."
            )
        for entry in entries:
            entry.unlink()
    parts.mkdir(parents=True, exist_ok=True)


def _blocks(products: pd.DataFrame, columns: Sequence[str], rows_per_block: int) -> list[pd.DataFrame]:
    frame = products[[c for c in columns if c in products.columns]].copy()
    frame.insert(0, ROW, np.arange(len(frame), dtype=np.int64))
    # object dtype: a column of missing values only would otherwise reach Arrow as a null column of no type.
    for col in frame.columns:
        if col != ROW and frame[col].dtype != np.float64:
            frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
    return [frame.iloc[i : i + rows_per_block] for i in range(0, len(frame), rows_per_block)]


def _row_groups(files: dict[Path, pq.ParquetFile]) -> tuple[list[tuple[Path, int]], bool]:
    """Every row group of the shards, sorted by its first catalog row, and whether their row ranges are disjoint
    (each row group then merges on its own). Ray writes one row group per block, but not always in catalog order,
    and may write every block of a catalog into one shard; a row group is one block. The ranges come from the
    row groups' statistics where they have them, else from reading the row column of that group."""
    spans = []
    for shard, reader in files.items():
        column = reader.schema_arrow.get_field_index(ROW)
        for group in range(reader.metadata.num_row_groups):
            meta = reader.metadata.row_group(group)
            if meta.num_rows == 0:
                continue
            stats = meta.column(column).statistics
            if stats is not None and stats.has_min_max:
                low, high = int(stats.min), int(stats.max)
            else:
                rows = reader.read_row_group(group, columns=[ROW]).column(0).to_numpy()
                low, high = int(rows.min()), int(rows.max())
            spans.append((low, high, shard, group))
    spans.sort(key=lambda s: s[0])
    disjoint = all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False))
    return [(s[2], s[3]) for s in spans], disjoint


def _tables_in_order(files: dict[Path, pq.ParquetFile]) -> Iterator[pa.Table]:
    """The shards' rows in catalog order, about ``CHUNK_ROWS`` rows at a time: one row group is read at a time,
    so memory holds a batch, not the catalog (unless row groups overlap, which Ray does not write)."""
    groups, disjoint = _row_groups(files)
    if not disjoint:
        log.debug("prediction shards overlap in catalog order; merging them in memory")
        yield pa.concat_tables([f.read() for f in files.values()], promote_options="default").sort_by(ROW)
        return
    batch: list[pa.Table] = []
    rows = 0
    for shard, group in groups:
        batch.append(files[shard].read_row_group(group).sort_by(ROW))
        rows += len(batch[-1])
        if rows >= CHUNK_ROWS:
            yield pa.concat_tables(batch, promote_options="default")  # a column of nulls in one block is typed
            batch, rows = [], 0
    if batch:
        yield pa.concat_tables(batch, promote_options="default")


def _output_schema(first: pd.DataFrame, files: dict[Path, pq.ParquetFile]) -> pa.Schema:
    """The merged Parquet file's schema: the one the first batch of predictions gets from pandas (as the local
    engine's file), where a column that is empty in that batch takes its type from the shards, so every batch is
    written with one schema."""
    unified = pa.unify_schemas([f.schema_arrow for f in files.values()], promote_options="default")
    inferred = pa.Table.from_pandas(first, preserve_index=False).schema
    return pa.schema([
        f.with_type(unified.field(f.name).type) if pa.types.is_null(f.type) and f.name in unified.names else f
        for f in inferred
    ], metadata=inferred.metadata)


def merge_shards(parts: Path, out: Path, n_products: int) -> int:
    """Write the shards of ``parts`` into ``out`` (.csv or .parquet) in catalog order, without ``_row``, as
    ``runs.predict_catalog`` writes its file; returns the number of rows. Every catalog row must be there once.
    Memory holds one batch of rows, not the catalog."""
    shards = sorted(p for p in parts.iterdir() if p.name.endswith(SHARD_SUFFIX))
    out.parent.mkdir(parents=True, exist_ok=True)
    files = {shard: pq.ParquetFile(shard) for shard in shards}  # each opened once: footer, row groups, schema
    writer = None
    schema = None
    n = 0
    expected = 0
    try:
        for table in _tables_in_order(files):
            rows = table.column(ROW).to_numpy()
            if not np.array_equal(rows, np.arange(expected, expected + len(rows))):
                raise DistributedError(f"the prediction shards in {parts} do not hold each catalog row once")
            expected += len(rows)
            preds = table.drop_columns([ROW]).to_pandas()
            if out.suffix.lower() == ".parquet":
                if schema is None:
                    schema = _output_schema(preds, files)
                chunk = pa.Table.from_pandas(preds, schema=schema, preserve_index=False)
                writer = writer or pq.ParquetWriter(out, chunk.schema)
                writer.write_table(chunk)
            else:
                preds.to_csv(out, index=False, mode="w" if n == 0 else "a", header=n == 0)
            n += len(preds)
    finally:
        if writer is not None:
            writer.close()
        for reader in files.values():
            reader.close()
    if n != n_products:
        raise DistributedError(f"{n} predictions in {parts} for {n_products} products; run the prediction again")
    return n


def _catalog_stream(
    modalities: Sequence[str],
    data: str | Path,
    progress: bool,
    schema: dict[str, Any] | None,
    chunk_rows: int,
    links_path: Path,
) -> CatalogStream:
    """The catalog as ``runs.predict_catalog`` streams it for a model with these inputs and this saved schema
    (same checks, same rejects)."""
    from .catalog import CatalogStream
    from .schema import FASHION, CatalogSchema

    return CatalogStream(
        data,
        chunk_rows=chunk_rows,
        links_path=links_path,
        schema=CatalogSchema.from_json(schema) if schema else FASHION,
        require_target=False,
        require_images=tuple(modalities) == ("image",),
        required_modalities=modalities,
        check_image_files="image" in modalities,
        progress=progress,
    )


def _prepare_input(folder: Path) -> None:
    """An empty folder for the staged catalog (``OUT.input``): staged chunks of an earlier run are removed; a
    folder holding anything else is refused rather than cleaned."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise DistributedError(f"{folder} exists and is not a folder; move it away so the catalog can be staged there.")
    if folder.is_dir():
        entries = list(folder.iterdir())
        foreign = [e.name for e in entries if e.is_symlink() or not e.is_file() or not e.name.startswith(INPUT_PREFIX)]
        if foreign:
            shown = ", ".join(sorted(foreign)[:5])
            raise DistributedError(
                f"{folder} holds files that are not staged catalog chunks ({shown}); move them away or choose another "
                "--out."
            )
        for entry in entries:
            entry.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def _stage_catalog(
    stream: CatalogStream, columns: Sequence[str], numeric: Sequence[str], folder: Path, batch_size: int, actors: int
) -> tuple[int, int, int]:
    """Write the products of ``stream`` into ``folder`` as Parquet files with the columns the workers read and
    ``_row`` (the product's position in the catalog), one file per block of the dataset (each read by one Ray
    task); returns the number of products and of files, and the rows per batch of the actors (``batch_size``). A
    catalog of several chunks is a file per chunk; one of a single chunk is cut into blocks of a batch, no fewer
    than ``actors``, so a small catalog still keeps every actor busy. The driver holds one chunk at a time."""
    fields = [pa.field(ROW, pa.int64())]
    fields += [pa.field(c, pa.float64() if c in numeric else pa.string()) for c in columns]
    schema = pa.schema(fields)
    chunks = iter(stream)
    first = next(chunks, None)
    second = next(chunks, None)
    if first is None:  # not reached: a catalog without products is a CatalogError at the end of the stream
        return 0, 0, 1
    rows_per_block = batch_size if second is not None else max(1, min(batch_size, math.ceil(len(first) / actors)))
    # A catalog of several chunks is staged a chunk per file: Ray's driver keeps some bookkeeping per block, which
    # blocks of one batch would make grow with the catalog; the actors still get batches of rows_per_block.
    rows_per_file = rows_per_block if second is None else max(len(first), 1)
    n = files = 0
    for products in _chained(first, second, chunks):
        frame = _blocks(products, columns, max(len(products), 1))[0]
        frame[ROW] += n
        for col in columns:
            if col not in frame.columns:
                frame[col] = None
        table = pa.Table.from_pandas(frame[[f.name for f in fields]], schema=schema, preserve_index=False)
        for start in range(0, len(table), rows_per_file):
            pq.write_table(table.slice(start, rows_per_file), folder / f"{INPUT_PREFIX}{files:08d}.parquet")
            files += 1
        n += len(frame)
    return n, files, rows_per_block


def _chained(first: pd.DataFrame, second: pd.DataFrame | None, rest: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    yield first
    if second is not None:
        yield second
        yield from rest


def predict_catalog_ray(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    top_k: int = 3,
    address: str | None = None,
    actors: int = 2,
    batch_size: int = BATCH_SIZE,
    cpus_per_actor: int = 1,
    num_cpus: int | None = None,
    progress: bool = True,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[int, CatalogTotals]:
    """``runs.predict_catalog`` on Ray: predict every product of the catalog in ``data`` into ``out`` (.csv or
    .parquet) with the same rows, columns, rejects file (``OUT-stem.rejects.csv``) and link report
    (``OUT-stem.links.csv``); the Parquet shards Ray wrote stay in ``OUT.parts/``. Returns (number of
    predictions, what the load found).

    The driver streams the catalog (``catalog.CatalogStream``, ``chunk_rows`` rows at a time) into Parquet files
    in ``OUT.input/`` (removed at the end), which the workers read, so its memory does not grow with the catalog;
    like ``OUT.parts/``, that folder must be readable by every node.

    ``model_dir``: a model folder written by ``train`` (exported on the driver first, which needs torch there)
    or a folder written by ``deepfusion export``. ``address``: a Ray cluster (``HOST:6379``, ``ray://HOST:10001``
    or ``auto``); None uses ``RAY_ADDRESS`` when set, else starts a local Ray with ``num_cpus`` logical CPUs
    (default: enough for the actors and one decoding task, at least the machine's cores). ``actors``: how many
    model replicas predict at once, each with ``cpus_per_actor`` CPUs (its onnxruntime threads).
    ``batch_size``: products per actor call (and per block of the dataset)."""
    for name, value in (
        ("top_k", top_k),
        ("actors", actors),
        ("batch_size", batch_size),
        ("cpus_per_actor", cpus_per_actor),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    staged = out.with_name(out.name + ".input")
    with exported_model(model_dir) as folder:
        # Loaded here too: a broken export fails now, before a cluster is used; and its inputs pick the checks.
        model = rt.ExportedModel.load(folder, threads=1)
        files = _export_files(folder)
    f = model.fields
    columns = [f["id"], *f["categorical"], *f["numeric"], f["title"]]
    if model.image is not None:
        columns.append(IMAGE_COLUMN)
    _prepare_parts(parts)
    _prepare_input(staged)
    stream = _catalog_stream(
        model.modalities, data, progress, model.manifest.get("schema"), chunk_rows,
        out.with_name(out.stem + ".links.csv"),
    )
    try:
        n_products, n_files, rows_per_block = _stage_catalog(stream, columns, f["numeric"], staged, batch_size, actors)
        totals = stream.totals
        assert totals is not None  # set by the stream's first chunk
        n = _predict_staged(
            staged, parts, n_products, files, model, top_k=top_k, address=address, actors=actors,
            n_files=n_files, rows_per_block=rows_per_block, cpus_per_actor=cpus_per_actor, num_cpus=num_cpus,
            progress=progress,
        )
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    n = merge_shards(parts, out, n_products)
    totals.write_rejects(out.with_name(out.stem + ".rejects.csv"))
    log.info("wrote %d predictions to %s (shards in %s)", n, out, parts)
    return n, totals


def _predict_staged(
    staged: Path,
    parts: Path,
    n_products: int,
    files: dict[str, bytes],
    model: rt.ExportedModel,
    *,
    top_k: int,
    address: str | None,
    actors: int,
    n_files: int,
    rows_per_block: int,
    cpus_per_actor: int,
    num_cpus: int | None,
    progress: bool,
) -> int:
    """Predict the staged catalog on Ray into the shards of ``parts``; returns ``n_products``."""
    # The actors, plus one CPU for the decoding and writing tasks, which Ray must be able to run beside them.
    need = actors * cpus_per_actor + 1
    started = time.perf_counter()
    joined = _joins_cluster(_import_ray(), address)
    with ray_session(address, num_cpus=num_cpus or max(os.cpu_count() or 1, need)) as ray:
        _check_cpus(ray, need, f"{actors} actors of {cpus_per_actor} CPUs and the reading/writing tasks", joined)
        ctx = ray.data.DataContext.get_current()
        saved = (ctx.enable_progress_bars, ctx.execution_options.preserve_order)
        ctx.enable_progress_bars = progress
        # Blocks leave each stage in catalog order, so the shards cover consecutive rows and merge one at a time.
        ctx.execution_options.preserve_order = True
        try:
            # One block per staged file (_stage_catalog), in catalog order.
            ds = ray.data.read_parquet(str(staged), file_extensions=["parquet"], override_num_blocks=n_files)
            if model.image is not None:
                ds = ds.map_batches(
                    decode_images,
                    batch_size=rows_per_block,
                    batch_format="numpy",
                    num_cpus=DECODE_CPUS,
                    fn_kwargs={"size": model.image.size, "max_pixels": model.max_image_pixels},
                )
            ds = ds.map_batches(
                BatchPredictor,
                batch_size=rows_per_block,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=cpus_per_actor,
                fn_constructor_kwargs={
                    "files": ray.put(files),
                    "top_k": top_k,
                    "threads": cpus_per_actor,
                    "max_image_pixels": model.max_image_pixels,
                },
            )
            ds.write_parquet(str(parts))
        finally:
            ctx.enable_progress_bars, ctx.execution_options.preserve_order = saved
    log.info("predicted %d products on Ray in %.1fs with %d actors", n_products, time.perf_counter() - started, actors)
    return n_products


# ---------------------------------------------------------------------------------------------- embedding
class BatchEmbedder:
    """A Ray Data actor: the image backbone's ONNX graph (bytes through the object store), loaded once, embedding
    decoded pixels batch after batch as ``ImageEmbedder.forward`` does (normalised, float16-rounded)."""

    def __init__(self, onnx: Any, *, mean: Sequence[float], std: Sequence[float], threads: int) -> None:
        import onnxruntime as ort
        import ray

        if isinstance(onnx, ray.ObjectRef):
            onnx = ray.get(onnx)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(onnx, sess_options=opts, providers=["CPUExecutionProvider"])
        self.mean = np.array(mean, np.float32)
        self.std = np.array(std, np.float32)
        self.dim = int(self.session.get_outputs()[0].shape[1])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray(batch["decoded"], dtype=bool)
        features = np.zeros((len(ok), self.dim), dtype=np.float16)
        which = np.flatnonzero(ok)
        pixels = np.asarray(batch["pixels"])
        for start in range(0, len(which), rt.IMAGE_BATCH):
            chunk = which[start : start + rt.IMAGE_BATCH]
            x = ((pixels[chunk].astype(np.float32) / 255.0 - self.mean) / self.std).transpose(0, 3, 1, 2)
            features[chunk] = self.session.run(None, {"images": np.ascontiguousarray(x)})[0].astype(np.float16)
        return {"key": batch["key"], "features": features, "decoded": ok}


def embed_images_ray(
    embedder: Any,
    paths: Sequence[str | Path | None],
    *,
    address: str | None = None,
    actors: int = 2,
    batch_size: int = 64,
    num_cpus: int | None = None,
    progress: bool = True,
) -> int:
    """Embed the images of ``paths`` that ``embedder``'s cache lacks on Ray Data, into that cache: Ray tasks read
    and decode the images, a pool of ``actors`` backbone replicas (onnxruntime, no torch) embeds them, and the
    driver writes the vectors into the on-disk cache, where training (``Predictor.fit``) and the audit then read
    them. Returns how many images were embedded. Images that do not decode are left out (``embed`` reports them).
    ``address`` / ``num_cpus``: as for ``predict_catalog_ray``; with nothing to embed no Ray is started."""
    from tqdm.auto import tqdm

    if isinstance(actors, bool) or not isinstance(actors, int) or actors < 1:
        raise ValueError(f"actors must be a positive integer, got {actors!r}")
    todo = embedder.uncached(paths)
    if not todo:
        log.info("every image is in the embedding cache already; nothing to embed on Ray")
        return 0
    onnx = embedder.onnx_file().read_bytes()
    frame = pd.DataFrame({"key": list(todo), IMAGE_COLUMN: list(todo.values())})
    rows_per_block = max(1, min(batch_size, math.ceil(len(frame) / actors)))
    blocks = [frame.iloc[i : i + rows_per_block] for i in range(0, len(frame), rows_per_block)]
    need = actors + 1
    joined = _joins_cluster(_import_ray(), address)
    store = embedder.store(0)
    done = 0
    with ray_session(address, num_cpus=num_cpus or max(os.cpu_count() or 1, need)) as ray:
        _check_cpus(ray, need, f"{actors} embedding actors and the decoding tasks", joined)
        ds = ray.data.from_pandas(blocks).map_batches(
            decode_images,
            batch_size=rows_per_block,
            batch_format="numpy",
            num_cpus=DECODE_CPUS,
            fn_kwargs={"size": embedder.image_size, "max_pixels": embedder.max_pixels},
        )
        ds = ds.map_batches(
            BatchEmbedder,
            batch_size=rows_per_block,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1,
            fn_constructor_kwargs={
                "onnx": ray.put(onnx),
                "mean": embedder.spec.mean,
                "std": embedder.spec.std,
                "threads": 1,
            },
        )
        with tqdm(total=len(frame), desc="embedding images on Ray", unit="img", disable=not progress) as bar:
            # Written a shard at a time, so an interrupted run keeps what it finished.
            for batch in ds.iter_batches(batch_size=4096, batch_format="numpy"):
                ok = np.asarray(batch["decoded"], dtype=bool)
                if ok.any():
                    store.add([str(k) for k in batch["key"][ok]], np.asarray(batch["features"])[ok])
                done += int(ok.sum())
                bar.update(len(ok))
    log.info("embedded %d of %d new images on Ray (%d actors) into %s", done, len(frame), actors, store.folder)
    return done


# ---------------------------------------------------------------------------------------------- audit folds
def run_folds_ray(
    products: pd.DataFrame,
    plan: FoldPlan,
    classes: list[str],
    *,
    config: ModelConfig,
    progress: bool,
    schema: CatalogSchema | None = None,
    cache_dir: str | Path | None = None,
    address: str | None = None,
    cpus_per_fold: int = 1,
    num_cpus: int | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``audit.out_of_fold_probabilities`` with every fold trained in its own Ray task, all at once as far as the
    cluster's CPUs allow (``cpus_per_fold`` each; torch uses that many threads). Same arguments and the same
    result: probabilities (n, len(classes)) for every held-out product (rows of products that are in every
    training fold stay zero) and the per-fold statistics, in fold order. The products go to the object store once;
    each task returns only arrays. ``address`` / ``num_cpus``: as for ``predict_catalog_ray`` (a local Ray gets
    one CPU per fold by default, at least the machine's cores). Models that read images first embed every image
    once into the shared on-disk cache (one task; on a cluster, that node's cache), unless the backbone is
    fine-tuned per fold."""
    from tqdm.auto import tqdm

    # The local loop's fold body (torch, scikit-learn): not at this module's import.
    from .audit import fit_fold, shared_embedder

    n_folds = int(plan.fold.max()) + 1
    proba = np.zeros((len(products), len(classes)), dtype=np.float64)
    stats: list[dict[str, Any]] = []
    if n_folds == 0:  # nothing to judge (every class too rare): no model to train, no Ray to start
        return proba, stats
    joined = _joins_cluster(_import_ray(), address)
    with ray_session(address, num_cpus=num_cpus or max(os.cpu_count() or 1, n_folds * cpus_per_fold)) as ray:
        _check_cpus(ray, cpus_per_fold, f"fold tasks of {cpus_per_fold} CPUs", joined)
        products_ref = ray.put(products)
        embedder = shared_embedder(config, cache_dir)
        if embedder is not None:  # every image once, on Ray Data, into the cache the folds read
            n_images = embed_images_ray(embedder, list(products["image_path"]), actors=1, progress=progress)
            log.info("embedded %d product images into the cache before the folds", n_images)
        # Pickled by reference (deepfusion.audit.fit_fold): the workers run the local loop's own fold body.
        task = ray.remote(num_cpus=cpus_per_fold)(fit_fold)
        pending = [
            task.remote(
                products_ref,
                plan,
                classes,
                k,
                config=config,
                schema=schema,
                cache_dir=cache_dir,
                threads=cpus_per_fold,
            )
            for k in range(n_folds)
        ]
        with tqdm(total=n_folds, desc="audit folds", unit="fold", disable=not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                held, fold_proba, fold_stats = ray.get(done[0])
                proba[held] = fold_proba
                stats.append(fold_stats)
                bar.update(1)
                log.info(
                    "fold %d/%d: out-of-fold accuracy %.4f on %d products",
                    fold_stats["fold"] + 1,
                    n_folds,
                    fold_stats["accuracy"],
                    fold_stats["judged"],
                )
    stats.sort(key=lambda s: s["fold"])
    return proba, stats
