"""Jobs on a catalog folder: train a run, evaluate a saved model, predict a catalog. The CLI calls these.

A run folder holds ``split.csv``, ``rejects.csv``, ``split.json`` and one sub-folder per model
(``metadata/``, ``image/``, ``fusion/``), each a loadable model with its ``metrics.json`` on the test split.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .baselines import TextSVMBaseline
from .catalog import (
    DEFAULT_CHUNK_ROWS,
    ID,
    TARGET,
    Catalog,
    CatalogError,
    CatalogStream,
    CatalogTotals,
    columns_for,
    load_catalog,
)
from .config import ModelConfig
from .evaluation import summary_markdown
from .missing import blank_fields, without_modalities
from .predictor import MODEL_KINDS, Predictor, parse_modalities
from .schema import FASHION, CatalogSchema
from .split import Split, split_by_duplicate_groups

log = logging.getLogger(__name__)


def _json_default(o: object) -> object:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_json_default, allow_nan=True))
    return path


def required_columns(modalities: Sequence[str], schema: CatalogSchema = FASHION) -> list[str]:
    """The catalog columns (the user's names) a model of these modalities must find in a catalog."""
    return columns_for(modalities, schema)


# The options of load_catalog that say where a catalog's columns and images are (the CLI's --label, --text, ...).
# ``links``: how image links are fetched (image_links.LinkOptions).
CATALOG_OPTIONS = (
    "schema", "label", "label_sep", "id", "text", "categorical", "numeric", "image", "image_sep", "images_dir", "sep",
    "links",
)


def _catalog_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    options = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(options) - set(CATALOG_OPTIONS))
    if unknown:
        raise ValueError(f"unknown catalog options {unknown}; expected some of {', '.join(CATALOG_OPTIONS)}")
    return options


def usable_specs(specs: list[ModelSpec], catalog: Catalog, model: str) -> list[ModelSpec]:
    """``specs`` without the inputs this catalog does not have: no image found for any product, or no attribute
    column in its schema. A model left with nothing to read is an error, with what to do."""
    has_images = bool(catalog.products["image_status"].isin(["ok", "unchecked"]).any())
    has_metadata = bool(catalog.schema.metadata)
    has_text = bool(catalog.schema.text)
    lacking = {m for m, ok in (("image", has_images), ("metadata", has_metadata), ("title", has_text)) if not ok}
    out: list[ModelSpec] = []
    for spec in specs:
        mods = tuple(m for m in spec.modalities if m not in lacking)
        if mods == spec.modalities:
            out.append(spec)
            continue
        dropped = ", ".join(m for m in spec.modalities if m in lacking)
        if not mods or (model == "all" and spec.name != "fusion"):
            if model != "all":
                raise CatalogError(
                    f"The {spec.name} model reads {dropped}, which this catalog does not have (no image found, or "
                    "no such column in its schema: see schema.json). Choose another --model, name the columns "
                    "(--image, --categorical, --numeric, --text) or pass --images-dir."
                )
            log.warning("no %s model: the catalog has no %s", spec.name, dropped)
            continue
        log.warning("%s model without %s: the catalog has none", spec.name, dropped)
        out.append(ModelSpec(spec.name, mods))
    if not out:
        raise CatalogError("No model can be trained on this catalog: it has no image, no text and no attribute.")
    return out


@dataclass
class ModelSpec:
    """One model of a run: its folder name and its inputs."""

    name: str
    modalities: tuple[str, ...]


def model_specs(model: str, modalities: str | Sequence[str] | None = None) -> list[ModelSpec]:
    if model == "all":
        fusion = parse_modalities(modalities) if modalities else MODEL_KINDS["fusion"]
        return [
            ModelSpec("metadata", MODEL_KINDS["metadata"]),
            ModelSpec("image", MODEL_KINDS["image"]),
            ModelSpec("fusion", fusion),
        ]
    if model not in MODEL_KINDS:
        raise ValueError(f"Unknown model '{model}'. Choose one of: {', '.join([*MODEL_KINDS, 'all'])}")
    mods = parse_modalities(modalities) if modalities and model == "fusion" else MODEL_KINDS[model]
    return [ModelSpec(model, mods)]


def train_model(
    spec: ModelSpec,
    catalog: Catalog,
    split: Split,
    out_dir: Path,
    *,
    config: ModelConfig | None = None,
    cache_dir: str | Path | None = None,
    embedder: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit one model (``config`` with the spec's modalities) on the train split (early stopping on val; with
    ``refit``, then on train + val), evaluate on test, save to ``out_dir``."""
    config = (config or ModelConfig()).with_modalities(spec.modalities)
    seed = config.seed
    products = catalog.products.set_index(ID, drop=False)
    parts = {name: products.loc[split.ids(name)].reset_index(drop=True) for name in ("train", "val", "test")}
    predictor = Predictor.from_config(
        config, schema=catalog.schema, cache_dir=cache_dir, embedder=embedder, progress=progress
    )
    start = time.perf_counter()
    predictor.fit(parts["train"], parts["val"])
    fit_seconds = time.perf_counter() - start
    metrics = predictor.evaluate(parts["test"], return_predictions=True)
    predictions = metrics.pop("predictions")
    if len(spec.modalities) > 1:
        metrics["ablation"] = input_ablation(predictor, parts["train"], parts["test"], seed=seed)
    train_metrics = predictor.evaluate(parts["train"])
    metrics.update(
        {
            "model": spec.name,
            "date": time.strftime("%Y-%m-%d"),
            "modalities": list(spec.modalities),
            "preset": config.head.preset,
            "split": "test",
            "train_accuracy": train_metrics["accuracy"],
            "train_macro_f1": train_metrics["macro_f1"],
            "train_accuracy_ceiling": label_ceiling(parts["train"], predictor),
            "fit_seconds": fit_seconds,
            "train_loop_seconds": predictor.train_seconds_,
            "title_fallback": config.uses_title_fallback,
            "refit": predictor.refit_,
            "best_epoch": predictor.best_epoch_,
            "epochs_run": len(predictor.history_),
            # Peak resident memory of the whole process so far (Linux reports KiB).
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )
    predictor.save(out_dir)
    predictions.to_csv(out_dir / "test_predictions.csv", index=False)
    write_json(out_dir / "metrics.json", metrics)
    title = f"{spec.name} model ({config.head.preset}) on the test split"
    (out_dir / "summary.md").write_text(summary_markdown(metrics, title))
    log.info("%s: test accuracy %.4f, macro-F1 %.4f", spec.name, metrics["accuracy"], metrics["macro_f1"])
    return metrics


RANDOM_BLANKING = 0.3  # the ablation's "each metadata field empty with this chance" row


def input_ablation(predictor: Predictor, train: pd.DataFrame, test: pd.DataFrame, seed: int = 0) -> list[dict]:
    """Test accuracy of one trained model when products arrive with inputs missing: for every non-empty subset of
    its modalities the other modalities' fields are emptied in the data, and once with each metadata field empty
    at random (``RANDOM_BLANKING``). Beside each, the TF-IDF + linear SVM baseline fitted on the same text inputs
    and tested on the same blanked products ("baseline_accuracy"; None when no text input is left)."""
    baselines: dict[tuple[str, ...], TextSVMBaseline] = {}

    def baseline_accuracy(inputs: tuple[str, ...], products: pd.DataFrame) -> float | None:
        if not inputs:
            return None
        if inputs not in baselines:
            encoder = getattr(predictor, "metadata_encoder_", None)
            fields = (encoder.categorical, encoder.numeric) if encoder is not None else None
            baselines[inputs] = TextSVMBaseline(inputs, metadata_fields=fields).fit(train)
        return float((baselines[inputs].predict(products) == products[TARGET].to_numpy()).mean())

    mods = list(predictor.config_.modalities)
    cases: list[tuple[list[str], list[str], pd.DataFrame]] = []
    for mask in range(1, 2 ** len(mods)):
        kept = [m for i, m in enumerate(mods) if mask >> i & 1]
        absent = [m for m in mods if m not in kept]
        cases.append((kept, absent, without_modalities(test, absent, predictor.metadata_fields)))
    if "metadata" in mods:
        rng = np.random.default_rng(seed)
        blanked = blank_fields(test, rng, p_field=RANDOM_BLANKING, fields=predictor.metadata_fields)
        cases.append((mods, [f"each metadata field with chance {RANDOM_BLANKING}"], blanked))
    rows = []
    for kept, absent, products in cases:
        m = predictor.evaluate(products)
        rows.append(
            {
                "modalities": kept,
                "withheld": absent,
                "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"],
                "weighted_f1": m["weighted_f1"],
                "ece": m["ece"],
                "baseline_accuracy": baseline_accuracy(tuple(x for x in kept if x in ("metadata", "title")), products),
            }
        )
        log.info("ablation: %s without %s: accuracy %.4f", "+".join(kept), absent or "nothing", m["accuracy"])
    return rows


def label_ceiling(train: pd.DataFrame, predictor: Predictor) -> float | None:
    """Highest train accuracy any model can reach on these inputs: products with identical inputs but different
    labels cannot all be right. Only computed for the structured-metadata model, where such clashes are common."""
    if predictor.config_.modalities != ("metadata",):
        return None
    x = pd.DataFrame(predictor.metadata_encoder_.transform(train)).round(6)
    key = pd.util.hash_pandas_object(x, index=False)
    majority = pd.DataFrame({"key": key.to_numpy(), "y": train[TARGET].to_numpy()}).value_counts()
    return float(majority.groupby(level=0).max().sum() / len(train))


def train_run(
    data: str | Path,
    out: str | Path,
    *,
    model: str = "metadata",
    config: ModelConfig | None = None,
    modalities: str | Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    engine: str = "local",
    address: str | None = None,
    actors: int = 2,
    catalog_options: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Load and validate the catalog, split it (seeded by ``config.seed``), train each requested model (``config``
    with the model's modalities; None: the defaults); returns metrics per model.
    ``catalog_options``: where the catalog's columns and images are (load_catalog's schema, label, text, ...,
    images_dir, sep); the schema used is written to ``schema.json`` and saved with every model.
    ``engine="ray"``: the images are embedded on Ray Data first (``distributed.embed_images_ray``, into the
    embedding cache that training reads; ``address`` / ``actors`` as for ``predict --engine ray``); the networks
    train in this process."""
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be local or ray, got {engine!r}")
    if address is not None and engine != "ray":
        raise ValueError("address is only used with engine='ray'")
    out = Path(out)
    config = config or ModelConfig()
    seed = config.seed
    specs = model_specs(model, modalities)
    needs_images = any("image" in s.modalities for s in specs)
    catalog = load_catalog(
        data,
        require_target=True,
        required_modalities=sorted({m for s in specs for m in s.modalities if m != "image"}),
        progress=progress,
        rejects_path=out / "rejects.csv",
        **_catalog_options(catalog_options),
    )
    catalog.write_rejects(out / "rejects.csv")
    catalog.write_links(out / "links.csv")
    write_json(out / "schema.json", catalog.schema.to_json())
    specs = usable_specs(specs, catalog, model)
    needs_images = any("image" in s.modalities for s in specs)
    split = split_by_duplicate_groups(catalog.products, seed=seed)
    split.to_frame().to_csv(out / "split.csv", index=False)
    summary = {"catalog": catalog.summary(), "notes": catalog.notes, "source": str(catalog.source)}
    write_json(out / "split.json", {**split.report(), **summary})
    if needs_images:
        log.info("products without a readable image are kept; image models treat the image as absent")
    if engine == "ray":
        _embed_on_ray(specs, catalog, config, cache_dir, address, actors, progress)
    results = {}
    for spec in specs:
        results[spec.name] = train_model(
            spec,
            catalog,
            split,
            out / spec.name,
            config=config,
            cache_dir=cache_dir,
            progress=progress,
        )
    from .reports import write_report

    write_report(out)
    return results


def shared_embedder(config: ModelConfig, cache_dir: str | Path | None = None) -> Any:
    """The image embedder that every model of this configuration can share (the audit's folds, the image models
    of a ``train`` run: one cache read for all of them), or None: the model reads no image, or it fine-tunes the
    backbone (each model then embeds with its own weights)."""
    if "image" not in config.modalities or config.image.finetune_blocks:
        return None
    return Predictor.from_config(config, cache_dir=cache_dir, progress=False).image_embedder()


def _embed_on_ray(
    specs: Sequence[ModelSpec],
    catalog: Catalog,
    config: ModelConfig,
    cache_dir: str | Path | None,
    address: str | None,
    actors: int,
    progress: bool,
) -> None:
    """Fill the embedding cache of every image model on Ray, so their fits read the vectors instead of computing
    them (models sharing a backbone share the vectors: the second finds nothing left to embed). A model that
    fine-tunes its backbone embeds during training instead."""
    from .distributed import embed_images_ray

    for spec in specs:
        embedder = shared_embedder(config.with_modalities(spec.modalities), cache_dir)
        if embedder is not None:
            embed_images_ray(
                embedder, list(catalog.products["image_path"]), address=address, actors=actors, progress=progress
            )


def catalog_for_model(
    predictor: Predictor,
    data: str | Path,
    *,
    require_target: bool,
    progress: bool,
    catalog_options: Mapping[str, Any] | None = None,
) -> Catalog:
    """``data`` loaded the way ``predictor`` reads products: its saved schema, with ``catalog_options`` (e.g.
    another image column or images folder) replacing where a column is found."""
    return load_catalog(data, **_model_load_options(predictor, require_target, progress, catalog_options))


def catalog_stream_for_model(
    predictor: Predictor,
    data: str | Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: bool,
    links_path: str | Path | None = None,
    catalog_options: Mapping[str, Any] | None = None,
) -> CatalogStream:
    """``catalog_for_model`` (unlabelled products) as a ``CatalogStream`` of ``chunk_rows`` rows at a time."""
    options = _model_load_options(predictor, False, progress, catalog_options)
    return CatalogStream(data, chunk_rows=chunk_rows, links_path=links_path, **options)


def _model_load_options(
    predictor: Predictor, require_target: bool, progress: bool, catalog_options: Mapping[str, Any] | None
) -> dict[str, Any]:
    return {
        "schema": predictor.schema_,
        "require_target": require_target,
        "require_images": predictor.config_.modalities == ("image",),
        "required_modalities": predictor.config_.modalities,
        "check_image_files": "image" in predictor.config_.modalities,
        "progress": progress,
        **_catalog_options(catalog_options),
    }


def user_columns(frame: pd.DataFrame, schema: CatalogSchema) -> pd.DataFrame:
    """``frame`` with the id column under the catalog's own name (``id`` when products are numbered by row)."""
    if schema.id and schema.id != ID and ID in frame.columns:
        return frame.rename(columns={ID: schema.id})
    return frame


def evaluate_model(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    catalog_options: Mapping[str, Any] | None = None,
) -> dict:
    predictor = Predictor.load(model_dir, progress=progress)
    catalog = catalog_for_model(
        predictor, data, require_target=True, progress=progress, catalog_options=catalog_options
    )
    out = Path(out)
    catalog.write_rejects(out / "rejects.csv")
    catalog.write_links(out / "links.csv")
    metrics = predictor.evaluate(catalog.products)
    metrics.update({"model_dir": str(model_dir), "data": str(data), "catalog": catalog.summary()})
    write_json(out / "metrics.json", metrics)
    (out / "summary.md").write_text(summary_markdown(metrics, f"{Path(model_dir).name} model on {data}"))
    return metrics


CONFIDENCE_DECIMALS = 4


def output_columns(predictions: pd.DataFrame) -> pd.DataFrame:
    """What ``predict`` writes: ``id, prediction, confidence``, for a tree label ``prediction_<level>`` and
    ``confidence_<level>`` per level, ``needs_review, inputs`` and the runners-up (``top2_label``,
    ``top2_confidence``, ...; the first is the prediction itself), confidences rounded."""
    out = predictions.drop(columns=["top1_label", "top1_confidence"], errors="ignore")
    for col in out.columns:
        if col == "confidence" or col.endswith("_confidence") or col.startswith("confidence_"):
            out[col] = out[col].round(CONFIDENCE_DECIMALS)
    return out


def predict_catalog(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    top_k: int = 3,
    chunk_size: int = DEFAULT_CHUNK_ROWS,
    progress: bool = True,
    catalog_options: Mapping[str, Any] | None = None,
) -> tuple[int, CatalogTotals]:
    """Predict every product of a catalog into ``out`` (.csv or .parquet); returns (number of predictions, what
    the load found). The catalog is streamed (``catalog.CatalogStream``): read, checked, predicted and written
    ``chunk_size`` products at a time, so memory stays flat however large the catalog, and the predictions are
    those of predicting the whole loaded catalog in chunks of that size. Rejected rows go to
    ``OUT-stem.rejects.csv``, the image links tried to ``OUT-stem.links.csv``. The id column keeps the catalog's
    name."""
    predictor = Predictor.load(model_dir, progress=progress)
    out = Path(out)
    stream = catalog_stream_for_model(
        predictor, data, chunk_rows=chunk_size, progress=progress,
        links_path=out.with_name(out.stem + ".links.csv"), catalog_options=catalog_options,
    )
    n = 0
    with PredictionWriter(out) as writer:
        for products in rechunked(stream, chunk_size):
            chunk = predictor.predict_frame(products, top_k=top_k)
            assert stream.totals is not None  # set by the stream's first chunk
            preds = user_columns(output_columns(chunk), stream.totals.schema)
            writer.write(preds)
            n += len(preds)
    totals = stream.totals
    assert totals is not None
    totals.write_rejects(out.with_name(out.stem + ".rejects.csv"))
    log.info("wrote %d predictions to %s", n, out)
    return n, totals


def rechunked(frames: Iterable[pd.DataFrame], size: int) -> Iterator[pd.DataFrame]:
    """The rows of ``frames`` in frames of ``size`` rows (the last one shorter), index reset: the chunks of the
    concatenated frames, holding at most two chunks' rows at a time."""
    pending: list[pd.DataFrame] = []
    held = 0
    for frame in frames:
        pending.append(frame)
        held += len(frame)
        while held >= size:
            rows = pd.concat(pending, ignore_index=True)
            yield rows.iloc[:size].reset_index(drop=True)
            pending, held = [rows.iloc[size:]], held - size
    if held:
        yield pd.concat(pending, ignore_index=True)


class PredictionWriter:
    """Appends prediction frames to ``path``: CSV (header once) or Parquet (one row group per frame), by suffix.
    The file is created by the first frame written."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.parquet = self.path.suffix.lower() == ".parquet"
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        if self.rows == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.parquet:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            self._writer = self._writer or pq.ParquetWriter(self.path, table.schema)
            self._writer.write_table(table)
        else:
            frame.to_csv(self.path, index=False, mode="a" if self.rows else "w", header=not self.rows)
        self.rows += len(frame)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
