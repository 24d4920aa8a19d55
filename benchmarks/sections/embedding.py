"""Images/s of each way to run the frozen backbone, measured side by side on the same images, then a cold and a
warm embedding of the whole catalog."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench import Bench, cold_embedding, throughput

SIZES = ((224, 224), (224, 168), (160, 120), (128, 96))
EAGER_SIZES = ((224, 224), (224, 168))  # eager torch is slow: timed at the two largest inputs only
log = logging.getLogger("benchmark.embedding")


def _eager_rate(emb: Any, size: tuple[int, int], sample: list[str]) -> float:
    import torch

    from deepfusion.backbones import build_torch_extractor

    model = build_torch_extractor(emb.spec, None, size)
    batch = torch.from_numpy(np.stack([emb.preprocess(Path(p).read_bytes()) for p in sample[:128]]))

    def eager() -> None:
        with torch.inference_mode():
            for i in range(0, len(batch), 32):
                model(batch[i : i + 32])

    return throughput(eager, len(batch))


def measure(b: Bench) -> dict[str, Any]:
    from deepfusion.embeddings import ImageEmbedder

    paths = list(b.catalog.products["image_path"].dropna())
    sample = paths[:1024]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            emb = ImageEmbedder(image_size=size, cache_dir=Path(tmp) / f"{size}", progress=False)
            emb.session()  # export once, outside the timing
            row = {
                "size": f"{size[0]}x{size[1]}",
                "onnxruntime_img_s": throughput(lambda e=emb: e.embed(sample), len(sample)),
                "cached_img_s": throughput(lambda e=emb: e.embed(sample), len(sample)),
            }
            if size in EAGER_SIZES:
                row["torch_eager_img_s"] = _eager_rate(emb, size, sample)
            rows.append(row)
            log.info("embedding throughput %s", row)
        cold, emb = cold_embedding(b, "efficientnet_lite0", paths, Path(tmp) / "full")
        start = time.perf_counter()
        emb.embed(paths)
        warm = time.perf_counter() - start
    return {"rows": rows, "cold_seconds": cold, "warm_seconds": warm, "n_images": len(paths),
            "sample_images": len(sample)}
