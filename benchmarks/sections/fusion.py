"""Fusion models (the default and its variants), then the default model's modality ablation, with and without
its no-title network."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from bench import Bench

FUSION = ("metadata", "title", "image")


def measure(b: Bench) -> dict[str, Any]:
    b.train("fusion/regularized", "fusion", FUSION)
    b.train("fusion/regularized-gated", "fusion", FUSION, combiner="gated")
    b.train("fusion/regularized-no-title", "fusion", ("metadata", "image"))
    b.train("fusion/regularized-metadata-title", "fusion", ("metadata", "title"))
    # What the default's choices add: the stacked SVM scores (text_scores.py), and two networks instead of one.
    b.train("fusion/regularized-no-text-scores", "fusion", FUSION, stacking=False)
    b.train("fusion/regularized-members-1", "fusion", FUSION, members=1)
    ablation = json.loads((b.out / "fusion/regularized" / "metrics.json").read_text())["ablation"]
    # The same saved model with its no-title network switched off: what the fallback adds.
    from deepfusion import Predictor

    (test,) = b.frames("test")
    single = Predictor.load(b.out / "fusion/regularized", cache_dir=b.cache_dir, progress=False)
    # Routing follows the fitted configuration: without the no-title network, untitled products go to the main one.
    single.config_ = replace(single.config_, title_fallback=False)
    for row in ablation:
        m = single.evaluate(test, absent=row["withheld"]) if "title" in row["withheld"] else row
        row["without_fallback"] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    return {"models": b.models, "ablation": ablation}
