"""What every benchmark section shares: the real catalog loaded once, the leakage-safe split (seed SEED), the folder
trained models go to, the command line's options, and ``train``, which trains one model and keeps its row."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import result_files

from deepfusion import load_catalog
from deepfusion.catalog import ID
from deepfusion.config import config_from_options
from deepfusion.runs import ModelSpec, train_model
from deepfusion.split import split_by_duplicate_groups

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = Path(
    os.environ.get("DEEPFUSION_DATA", HERE.parents[1] / "shared" / "data" / "fashion-product-images-small")
)
SEED = 42  # the split's seed and every model's default seed
SPLIT_SEEDS = (SEED, 7, 11, 19, 23)  # the splits section's leakage-safe splits
MODEL_FIELDS = ("accuracy", "macro_f1", "weighted_f1", "train_accuracy", "train_accuracy_ceiling", "fit_seconds",
                "train_loop_seconds", "best_epoch", "epochs_run", "ece", "ece_uncalibrated", "peak_rss_mb")
log = logging.getLogger("benchmark")


def throughput(fn: Callable[[], Any], n: int) -> float:
    """``n`` items over the seconds ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def cold_embedding(b: Bench, backbone: str, paths: list[str], scratch: Path) -> tuple[float, Any]:
    """Seconds to embed ``paths`` from nothing, and the embedder (its cache now warm). The run fills the
    benchmark's cache when that is still empty (so later sections reuse it), and a scratch cache otherwise (so it
    is always cold)."""
    from deepfusion.embeddings import ImageEmbedder

    emb = ImageEmbedder(backbone, cache_dir=b.cache_dir, progress=True)
    if len(emb.store(0)):
        emb = ImageEmbedder(backbone, cache_dir=scratch, progress=True)
    emb.session()  # ONNX export once, outside the timing
    start = time.perf_counter()
    emb.embed(paths)
    return time.perf_counter() - start, emb


class Bench:
    """One benchmark run. ``options`` holds the command line's section options (e.g. ``refit_splits``). The
    catalog is loaded on first use, so sections that do not read it (links, other_catalogs) run without it."""

    def __init__(self, data: Path, out: Path, cache_dir: Path | None, options: dict[str, Any] | None = None,
                 results: Path = result_files.RESULTS) -> None:
        self.data, self.out, self.cache_dir, self.results = data, out, cache_dir, results
        self.options = options or {}
        self.commit = result_files.commit()  # the code this run measures, for every file it writes
        self.section = ""
        self.models: dict[str, dict[str, Any]] = {}  # the rows of the models the current section trained
        self.record: Path | None = None  # the current section's results file, once written

    @cached_property
    def catalog(self) -> Any:
        if not (self.data / "styles.csv").is_file() and not (self.data / "styles.parquet").is_file():
            raise SystemExit(f"No catalog at {self.data}; pass --data or set DEEPFUSION_DATA.")
        start = time.perf_counter()
        catalog = load_catalog(self.data, require_target=True, progress=True)
        self.load_seconds = time.perf_counter() - start
        return catalog

    @cached_property
    def split(self) -> Any:
        return split_by_duplicate_groups(self.catalog.products, seed=SEED)

    def frames(self, *names: str, split: Any = None) -> list[Any]:
        """The products of the named parts of ``split`` (default: the run's), as frames with a plain index."""
        products = self.catalog.products.set_index(ID, drop=False)
        split = self.split if split is None else split
        return [products.loc[split.ids(n)].reset_index(drop=True) for n in names]

    def environment(self) -> dict[str, Any]:
        env = result_files.environment()
        if "catalog" in self.__dict__:  # loaded by this section or an earlier one
            env |= {"catalog": self.catalog.summary(), "catalog_load_seconds": round(self.load_seconds, 1),
                    "split": self.split.report()["sizes"]}
        return env

    def begin(self, section: str) -> None:
        self.section, self.models, self.record = section, {}, None

    def train(self, key: str, name: str, modalities: tuple[str, ...], preset: str = "regularized",
              **options: Any) -> dict[str, Any]:
        """Train one model of the run's split into OUT/key; its row joins the section's ``models`` and the
        section's results file is written at once (marked partial until the section ends)."""
        log.info("training %s", key)
        if "image" in modalities and self.cache_dir:
            options.setdefault("cache_dir", self.cache_dir)
        seed = options.pop("seed", SEED)
        config, runtime = config_from_options(modalities, preset=preset, seed=seed, **options)
        m = train_model(ModelSpec(name, modalities), self.catalog, self.split, self.out / key, config=config,
                        cache_dir=runtime.get("cache_dir"), progress=True)
        row = {k: m.get(k) for k in MODEL_FIELDS} | {
            "date": time.strftime("%Y-%m-%d"),
            "rare_macro_f1": m["rare"]["macro_f1"],
            "frequent_macro_f1": m["frequent"]["macro_f1"],
            "rare_accuracy": m["rare"]["accuracy"],
            "modalities": list(modalities),
            "preset": preset,
            "options": {k: str(v) for k, v in options.items() if k != "cache_dir"}
            | ({"seed": str(seed)} if seed != SEED else {}),
            "auto_approval": m["auto_approval"],
        }
        self.models[key] = row
        self.checkpoint({"models": self.models})
        return row

    def checkpoint(self, figures: dict[str, Any]) -> None:
        """Write what the current section has measured so far to its results file, marked partial (the render
        leaves it out) until ``run.py`` writes the finished figures to the same file."""
        self.record = result_files.write(self.section, {"environment": self.environment(), **figures},
                                         self.results, partial=True, path=self.record, head=self.commit)

    def latest_models(self, section: str) -> dict[str, dict[str, Any]]:
        """The model rows of the latest finished run of ``section`` (empty when there is none)."""
        run = result_files.Runs(self.results).latest(section)
        return run.figures.get("models", {}) if run else {}
