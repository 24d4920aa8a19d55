"""Products as they arrive with fields missing: the default fusion model on test products whose fields are emptied
in the data (what `predict` and the service see), beside a TF-IDF + linear SVM fitted and tested on the same text
inputs (runs.input_ablation, the same rows as the run's report). With --reuse-missing a model already trained under
OUT/missing/fusion (by this section, or `deepfusion train --model fusion` with the same seed) is evaluated instead
of trained again."""

from __future__ import annotations

import json
from typing import Any

from bench import Bench


def measure(b: Bench) -> dict[str, Any]:
    key = "missing/fusion"
    folder = b.out / key
    if not (b.options.get("reuse_missing") and (folder / "metrics.json").is_file()):
        b.train(key, "fusion", ("metadata", "title", "image"))
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"models": b.models, "ablation": metrics["ablation"], "fusion_trained": metrics.get("date")}
