"""Cost growth: wall time and peak resident memory of load, embed, fit and predict at about 10k, 40k and 400k
products, each step in a process of its own (benchmarks/scaling.py); then batch prediction on Ray with 1 and 2
actors against the local engine on the same products. Opt-in: about an hour on 2 CPUs (--scaling-workdir keeps
the catalogs, caches and models)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from bench import SEED, Bench

log = logging.getLogger("benchmark.scaling")
SCALING_SMALL = 10_000  # products of the small catalog, a seeded sample of the real one
SCALING_REPEATS = 10  # the large catalog: the real one this many times, ids changed (about 400k products)
SCALING_RAY_ACTORS = (1, 2)
SCALING_RAY_CATALOG = "10k"  # the products that Ray and the local engine both predict


def measure(b: Bench) -> dict[str, Any]:
    """Cost growth: wall time and peak resident memory of load, embed, fit and predict at about 10k, 40k and 400k
    products, each step in a process of its own (benchmarks/scaling.py); then batch prediction on Ray with 1 and 2
    actors against the local engine on the same products. The model is the default fusion model (metadata + title
    + image). The 400k catalog is the real one repeated with changed ids (same images, hard-linked), made in a
    temporary folder; its images are already in the cache from the 40k step, so embedding at 400k measures the
    per-product cost of a warm cache (every distinct image is computed once, at 40k). Fit is measured at 10k and
    40k only. Opt-in: about an hour on 2 CPUs."""
    import tempfile

    import scaling as sc

    from deepfusion.embeddings import ImageEmbedder

    products = b.catalog.products
    sample = products.sample(n=min(SCALING_SMALL, len(products)), random_state=SEED).sort_index()
    with tempfile.TemporaryDirectory(prefix="deepfusion-scaling-") as name:
        # --scaling-workdir keeps the catalogs, caches and models (e.g. to reuse the 40k embedding cache).
        tmp = Path(b.options.get("scaling_workdir") or name)
        tmp.mkdir(parents=True, exist_ok=True)
        catalogs = {
            "10k": sc.make_catalog(sample, tmp / "c10k"),
            "40k": sc.make_catalog(products, tmp / "c40k"),
            "400k": sc.make_catalog(products, tmp / "c400k", repeats=SCALING_REPEATS),
        }
        log.info("scaling catalogs: %s", catalogs)
        onnx_home = tmp / "onnx-home"
        ImageEmbedder(cache_dir=onnx_home, progress=False).session()  # the backbone's ONNX file, exported once

        def cache(label: str) -> str:
            """An embedding cache of its own (empty when first asked for) that shares the exported backbone."""
            folder = tmp / f"cache-{label}"
            if not folder.exists():
                folder.mkdir()
                (folder / "onnx").symlink_to(onnx_home / "onnx", target_is_directory=True)
            return str(folder)

        def data(label: str) -> str:
            return str(tmp / f"c{label}")

        def step(
            name: str, label: str, args: dict[str, Any], env: dict[str, str] | None = None, **tags: Any
        ) -> dict[str, Any]:
            return {"step": name, "catalog": label, **tags, **sc.run_step(name, args, env)}

        rows = [step("load", label, {"data": data(label)}) for label in catalogs]
        # Cold: every distinct image computed into an empty cache. Warm: the 40k cache, which holds every image.
        for label, store, state in (("10k", "10k", "cold"), ("40k", "40k", "cold"), ("40k", "40k", "warm")):
            rows.append(step("embed", label, {"paths": f"{data(label)}/paths.txt", "cache": cache(store)}, cache=state))
        rows.append(step("embed", "400k", {"paths": f"{data('400k')}/paths.txt", "cache": cache("40k")}, cache="warm"))
        model = str(tmp / "fusion-40k")
        for label in ("10k", "40k"):
            args = {"data": data(label), "cache": cache(label), "modalities": list(sc.FUSION)}
            rows.append(step("fit", label, args | ({"model": model} if label == "40k" else {}), inputs="fusion"))
        args = {"data": data("40k"), "cache": cache("40k"), "modalities": list(sc.TEXT)}
        rows.append(step("fit", "40k", args, inputs="metadata+title"))
        for label in catalogs:
            args = {"model": model, "data": data(label), "out": str(tmp / f"pred-{label}.parquet")}
            rows.append(step("predict", label, args, env={"DEEPFUSION_CACHE": cache("40k")}, cache="warm"))

        # Ray against the local engine on the same products, both computing every image embedding: the local
        # engine with an empty cache, the Ray actors on the exported model (they keep no cache).
        exported = str(tmp / "fusion-40k-export")
        sc.run_step("export", {"model": model, "out": exported, "cache": cache("40k")})
        label = SCALING_RAY_CATALOG
        args = {"model": model, "data": data(label), "out": str(tmp / "local-cold.parquet")}
        ray_rows = [{"engine": "local", **sc.run_step("predict", args, env={"DEEPFUSION_CACHE": cache("cold")})}]
        for actors in SCALING_RAY_ACTORS:
            args = {"model": exported, "data": data(label), "out": str(tmp / f"ray-{actors}.parquet"), "actors": actors}
            ray_rows.append({"engine": "ray", **sc.run_step("ray_predict", args)})
            ray_rows[-1]["agreement"] = ray_agreement(tmp / "local-cold.parquet", tmp / f"ray-{actors}.parquet")
    for row in ray_rows:
        row["products_per_s"] = row["products"] / row["seconds"]
    return {
        "model": "fusion (metadata + title + image), regularized",
        "cpus": os.cpu_count(),
        "catalogs": catalogs,
        "repeats": SCALING_REPEATS,
        "rows": rows,
        "ray": {"catalog": SCALING_RAY_CATALOG, "products": catalogs[SCALING_RAY_CATALOG], "rows": ray_rows},
    }


def ray_agreement(local: Path, ray: Path) -> dict[str, Any]:
    """How the Ray engine's output file compares with the local engine's on the same products: same ids in the same
    order, same labels, largest confidence difference (both files hold confidences rounded to 4 decimals)."""
    import pandas as pd

    a, b = pd.read_parquet(local), pd.read_parquet(ray)
    same_rows = len(a) == len(b) and bool((a["id"].to_numpy() == b["id"].to_numpy()).all())
    return {
        "products": len(a),
        "same_rows": same_rows,
        "same_labels": float((a["prediction"].to_numpy() == b["prediction"].to_numpy()).mean()) if same_rows else 0.0,
        "max_confidence_diff": float((a["confidence"] - b["confidence"]).abs().max()) if same_rows else None,
    }
