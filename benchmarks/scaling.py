"""Steps of the benchmark's cost-growth section (``python benchmarks/run.py --sections scaling``), each run in a
process of its own so that its peak resident memory is its own:

    python benchmarks/scaling.py STEP '{"json": "arguments"}'

prints the step's measurements, its peak resident memory included, as one JSON line (the last line of stdout).
``run.py`` starts the steps and builds the catalogs they read (``make_catalog``): real rows, and for the large
catalog the real rows repeated with changed ids, images hard-linked (copied where links are impossible), so
repeats are the same image bytes and hit the embedding cache.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("benchmark.scaling")
FUSION = ("metadata", "title", "image")
TEXT = ("metadata", "title")
ID_STRIDE = 1_000_000  # repeat r of product id i gets id i + r * ID_STRIDE (the catalog's ids are below 100,000)


# ---------------------------------------------------------------------------------------------- catalogs
def make_catalog(products: Any, folder: Path, repeats: int = 1) -> int:
    """Write ``products`` (a loaded catalog's rows) as a catalog folder (styles.csv + images/), ``repeats`` times
    with changed ids; returns the number of products written. Also writes ``paths.txt``, the image of every
    product in catalog order (empty line: none), for the embedding step."""
    import pandas as pd

    from deepfusion.catalog import COLUMNS, ID

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    base = products[COLUMNS].copy()
    base["year"] = base["year"].astype("Int64")
    frames, paths = [], []
    for r in range(repeats):
        frame = base.copy()
        frame[ID] = (frame[ID].astype(int) + r * ID_STRIDE).astype(str)
        frames.append(frame)
        for pid, source in zip(frame[ID], products["image_path"], strict=True):
            if not isinstance(source, str):
                paths.append("")
                continue
            target = images / f"{pid}{Path(source).suffix}"
            try:
                os.link(source, target)
            except OSError:  # another file system: copy instead
                shutil.copyfile(source, target)
            paths.append(str(target))
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(folder / "styles.csv", index=False)
    (folder / "paths.txt").write_text("\n".join(paths) + "\n")
    return len(table)


# ---------------------------------------------------------------------------------------------- steps
def _bytes_per_product(frame: Any) -> float:
    return float(frame.memory_usage(deep=True).sum() / max(len(frame), 1))


def step_load(args: dict[str, Any]) -> dict[str, Any]:
    """The catalog loaded and validated as `train` loads it (every image file checked)."""
    from deepfusion import load_catalog

    start = time.perf_counter()
    catalog = load_catalog(args["data"], require_target=True, progress=False)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "products": len(catalog.products),
        "table_bytes_per_product": _bytes_per_product(catalog.products),
    }


def step_embed(args: dict[str, Any]) -> dict[str, Any]:
    """``ImageEmbedder.rows`` on every product's image, as training calls it, in the cache ``args["cache"]``
    (cold: every distinct image computed; warm: all found in the memory-mapped cache), then every vector read
    through it once, in batches, as a training epoch reads them."""
    from deepfusion.embeddings import ImageEmbedder

    paths = [p or None for p in Path(args["paths"]).read_text().splitlines()]
    embedder = ImageEmbedder(cache_dir=args["cache"], progress=False)
    embedder.session()  # the backbone's ONNX file is already in the cache: only the session is opened here
    before = len(embedder.store())
    start = time.perf_counter()
    rows = embedder.rows(paths)
    seconds = time.perf_counter() - start
    stored = len(embedder.store())
    start = time.perf_counter()
    for i in range(0, len(rows), 1024):
        rows[i : i + 1024].read()
    return {
        "seconds": seconds,
        "read_seconds": time.perf_counter() - start,
        "products": len(paths),
        "with_image": int(rows.ok.sum()),
        "computed": stored - before,
        "distinct_images": stored,
        # What training holds per product: each one's shard and row in the memory-mapped cache.
        "features_bytes_per_product": (rows.shard.nbytes + rows.row.nbytes) / max(len(paths), 1),
        "vector_bytes": int(rows.dim * 2),  # one float16 vector in the cache, read through the page cache
        "dim": int(rows.dim),
    }


def step_fit(args: dict[str, Any]) -> dict[str, Any]:
    """A model fitted on the train part of the catalog's leakage-safe split (early stopping on its validation
    part), image embeddings already cached; saved to ``args["model"]``. The catalog load is not timed."""
    from deepfusion import Predictor, load_catalog, split_by_duplicate_groups
    from deepfusion.catalog import ID

    catalog = load_catalog(args["data"], require_target=True, progress=False)
    split = split_by_duplicate_groups(catalog.products, seed=42)
    products = catalog.products.set_index(ID, drop=False)
    train, val = (products.loc[split.ids(s)].reset_index(drop=True) for s in ("train", "val"))
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    predictor = Predictor(tuple(args["modalities"]), cache_dir=args["cache"], progress=False)
    start = time.perf_counter()
    predictor.fit(train, val)
    seconds = time.perf_counter() - start
    if args.get("model"):
        predictor.save(args["model"])
    return {
        "seconds": seconds,
        "products": len(catalog.products),
        "train": len(train),
        "val": len(val),
        "epochs_run": len(predictor.history_),
        "rss_after_load_mb": loaded_rss,
    }


def step_predict(args: dict[str, Any]) -> dict[str, Any]:
    """`deepfusion predict` on the local engine (``runs.predict_catalog``, Parquet output), load included."""
    from deepfusion.runs import predict_catalog

    start = time.perf_counter()
    n, _ = predict_catalog(args["model"], args["data"], args["out"], progress=False)
    return {"seconds": time.perf_counter() - start, "products": n}


def step_export(args: dict[str, Any]) -> dict[str, Any]:
    from deepfusion.export import export_model

    start = time.perf_counter()
    export_model(args["model"], args["out"], cache_dir=args["cache"])
    return {"seconds": time.perf_counter() - start}


def step_ray_predict(args: dict[str, Any]) -> dict[str, Any]:
    """`deepfusion predict --engine ray` (``distributed.predict_catalog_ray``) from an exported folder on a local
    Ray started before the clock (its start-up is not timed); catalog load, actor start and shard merge are."""
    import ray

    from deepfusion.distributed import predict_catalog_ray

    actors = int(args["actors"])
    ray.init(num_cpus=max(os.cpu_count() or 1, actors + 1), include_dashboard=False, log_to_driver=False)
    try:
        start = time.perf_counter()
        n, _ = predict_catalog_ray(args["model"], args["data"], args["out"], actors=actors, progress=False)
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    return {"seconds": seconds, "products": n, "actors": actors}


STEPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "load": step_load,
    "embed": step_embed,
    "fit": step_fit,
    "predict": step_predict,
    "export": step_export,
    "ray_predict": step_ray_predict,
}


# ---------------------------------------------------------------------------------------------- the parent side
def peak_rss_mb() -> float:
    """This process's peak resident memory (MB): VmHWM, the high-water mark of its own address space since it
    started (``ru_maxrss`` would not do: Linux carries it over from the parent across fork and exec, so a child
    of a large process reports at least the parent's size)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere: KiB on Linux, bytes on macOS


def run_step(step: str, args: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one step in a new process; its result, with ``peak_rss_mb``, the step process's own peak memory."""
    log.info("scaling step %s %s", step, args)
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), step, json.dumps(args)],
        stdout=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"scaling step {step} failed with exit code {done.returncode}; see the log above")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    log.info("scaling step %s: %s", step, result)
    return result


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    step, args = sys.argv[1], json.loads(sys.argv[2])
    result = STEPS[step](args)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
