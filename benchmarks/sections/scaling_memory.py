"""Memory that does not grow with the catalog: the cost-growth steps it concerns, each in a process of its own
(benchmarks/scaling.py), on catalogs made of the cost-growth section's 10k sample, so that one cold embedding of its
10k images warms the cache for all of them: the fusion fit on its first 4k products and on all of it (bytes per
training product), `predict` streamed on the sample repeated 4 and 40 times with changed ids (40k and 400k
products) with the 10k fit's model (flat peak RSS), then the Ray driver at 10k and 40k. Each row is checkpointed as
soon as it is measured; catalogs, cache and models stay in --scaling-workdir (reused when there). Opt-in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench import SEED, Bench

from sections.scaling import SCALING_SMALL


def measure(b: Bench) -> dict[str, Any]:
    import scaling as sc

    from deepfusion.catalog import DEFAULT_CHUNK_ROWS
    from deepfusion.embeddings import ImageEmbedder

    tmp = Path(b.options.get("scaling_workdir") or (b.out / "scaling_memory"))
    tmp.mkdir(parents=True, exist_ok=True)
    products = b.catalog.products
    sample = products.sample(n=min(SCALING_SMALL, len(products)), random_state=SEED).sort_index()
    catalogs = {}
    for label, frame, repeats in (
        ("4k", sample.iloc[:4000], 1), ("10k", sample, 1), ("40k", sample, 4), ("400k", sample, 40)
    ):
        folder = tmp / f"s{label}"
        if not (folder / "styles.csv").is_file():
            sc.make_catalog(frame, folder, repeats=repeats)
        catalogs[label] = len(frame) * repeats
    cache = tmp / "cache"
    ImageEmbedder(cache_dir=cache, progress=False).session()
    figures: dict[str, Any] = {"cpus": os.cpu_count(), "catalogs": catalogs, "chunk_rows": DEFAULT_CHUNK_ROWS}
    figures["rows"] = []

    def step(name: str, label: str, args: dict[str, Any], **tags: Any) -> None:
        row = {"step": name, "catalog": label, **tags, **sc.run_step(name, args, {"DEEPFUSION_CACHE": str(cache)})}
        figures["rows"].append(row)
        b.checkpoint(figures)

    data = {label: str(tmp / f"s{label}") for label in catalogs}
    step("embed", "10k", {"paths": f"{data['10k']}/paths.txt", "cache": str(cache)}, cache="cold")
    model = str(tmp / "fusion-10k")
    step("fit", "4k", {"data": data["4k"], "cache": str(cache), "modalities": list(sc.FUSION)}, inputs="fusion")
    step("fit", "10k", {"data": data["10k"], "cache": str(cache), "modalities": list(sc.FUSION), "model": model},
         inputs="fusion")
    for label in ("40k", "400k"):
        step("predict", label, {"model": model, "data": data[label], "out": str(tmp / f"pred-{label}.parquet")})
    exported = str(tmp / "fusion-10k-export")
    sc.run_step("export", {"model": model, "out": exported, "cache": str(cache)})
    for label in ("10k", "40k"):
        step("ray_predict", label, {"model": exported, "data": data[label], "out": str(tmp / f"ray-{label}.parquet"),
                                    "actors": 1})
    return figures
