"""Latency and throughput of `deepfusion serve`, one product per request (benchmarks/latency.py): the exported
folder (lean runtime: onnxruntime, no torch) against the model folder (torch), new and cached images, at
concurrency 1 and 4; then the export's predictions against the model folder's. Needs a trained fusion model:
--serve-model, default OUT/missing/fusion (the missing_inputs section's)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from bench import Bench

REQUESTS = 300  # per scenario (backend x image new/cached x concurrency)
CACHED_PRODUCTS = 32  # latency.scenarios' default: the products repeated in the cached-image scenarios
log = logging.getLogger("benchmark.serving")


def measure(b: Bench) -> dict[str, Any]:
    import latency

    from deepfusion.export import export_model

    model = Path(b.options.get("serve_model") or b.out / "missing" / "fusion")
    if not (model / "config.json").is_file():
        raise SystemExit(f"serving section: no model at {model}; pass --serve-model RUN/fusion, or run "
                         "missing_inputs first")
    (test,) = b.frames("test")
    items = latency.payloads(test, 2 * REQUESTS + CACHED_PRODUCTS)
    env = {"DEEPFUSION_CACHE": str(b.cache_dir)} if b.cache_dir else None
    with tempfile.TemporaryDirectory(prefix="deepfusion-serving-") as name:
        exported = export_model(model, Path(name) / "export", cache_dir=b.cache_dir)
        agreement = export_agreement(model, exported, test, b.cache_dir)
        rows = [{"backend": "export", **r} for r in latency.scenarios(exported, items, requests=REQUESTS)]
        rows += [
            {"backend": "model folder", **r} for r in latency.scenarios(model, items, requests=REQUESTS, env=env)
        ]
    return {"model": str(model), "cpus": os.cpu_count(), "requests": REQUESTS, "cached_products": CACHED_PRODUCTS,
            "rows": rows, "agreement": agreement}


def export_agreement(model: Path, exported: Path, test: Any, cache_dir: Path | None) -> list[dict[str, Any]]:
    """The exported model (runtime.ExportedModel, images read and embedded by it) against the trained model
    (Predictor, image embeddings from the cache) on the test products as they are and with the metadata or the
    title emptied (the no-metadata and no-title routes): label agreement and the largest probability gap."""
    from deepfusion import Predictor
    from deepfusion.catalog import TARGET
    from deepfusion.missing import without_modalities
    from deepfusion.runtime import ExportedModel

    predictor = Predictor.load(model, cache_dir=cache_dir, progress=False)
    lean = ExportedModel.load(exported)
    index = {c: i for i, c in enumerate(predictor.classes_)}
    rows = []
    for absent in ((), ("metadata",), ("title",)):
        products = without_modalities(test, absent) if absent else test
        expected = predictor.predict_proba(products, as_pandas=False)
        got = lean.predict_frame(products[[c for c in products.columns if c != TARGET]], top_k=len(lean.classes))
        proba = np.zeros_like(expected)
        for j in range(len(lean.classes)):
            cols = got[f"top{j + 1}_label"].map(index).to_numpy()
            proba[np.arange(len(got)), cols] = got[f"top{j + 1}_confidence"].to_numpy()
        same = np.asarray(predictor.classes_)[expected.argmax(1)] == got["prediction"].to_numpy()
        rows.append({
            "emptied": "+".join(absent) or "nothing",
            "products": len(products),
            "label_agreement": float(same.mean()),
            "max_probability_gap": float(np.abs(proba - expected).max()),
        })
        log.info("export agreement, %s emptied: %s", rows[-1]["emptied"], rows[-1])
    return rows
