"""The catalogs in other schemas (benchmarks/other_catalogs.py): fusion against the TF-IDF + SVM reference, for
each catalog found under the shared data folder, on each split seed of ``--catalog-seeds``; with
``--sentence-model`` (auto by default, as the product's) the fusion model's sentence model is that one."""

from __future__ import annotations

import os
from typing import Any

from bench import Bench


def measure(b: Bench) -> dict[str, Any] | None:
    import other_catalogs as oc

    names = [n for n in oc.CATALOGS if (oc.SHARED / oc.CATALOGS[n]["file"]).exists()]
    if not names:
        return None
    seeds = b.options.get("catalog_seeds") or [0]
    sentence = b.options.get("sentence_model", "auto")
    rows = [row for name in names for seed in seeds for row in oc.measure(name, seed, sentence)]
    return {"cpus": os.cpu_count(), "split_seeds": seeds, "rows": rows}
