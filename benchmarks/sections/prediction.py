"""Batch prediction products/s of the saved fusion model, with cached and with fresh image embeddings (needs the
fusion and metadata sections' models under OUT)."""

from __future__ import annotations

import tempfile
from typing import Any

from bench import Bench, throughput


def measure(b: Bench) -> dict[str, Any]:
    from deepfusion import Predictor

    folder = b.out / "fusion/regularized"
    (test,) = b.frames("test")
    warm = Predictor.load(folder, progress=False, cache_dir=b.cache_dir)
    warm.predict_frame(test.head(64))
    warm_rate = throughput(lambda: warm.predict_frame(test), len(test))
    meta = Predictor.load(b.out / "metadata/regularized", progress=False)
    meta_rate = throughput(lambda: meta.predict_frame(test), len(test))
    with tempfile.TemporaryDirectory() as tmp:
        cold = Predictor.load(folder, progress=False, cache_dir=tmp)
        embedder = cold.image_embedder()
        embedder.session()
        cold_rate = throughput(lambda: cold.predict_frame(test), len(test))
        # The backbone alone on the same images, into a scratch store: the floor for products with new images.
        paths = list(test["image_path"].dropna())
        floor = throughput(lambda: embedder._compute(paths, 0, embedder.store(9)), len(test))
    return {"warm": warm_rate, "cold": cold_rate, "floor": floor, "metadata": meta_rate, "test_products": len(test)}
