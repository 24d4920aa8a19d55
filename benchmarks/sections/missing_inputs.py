"""Products as they arrive with fields missing: the default fusion model on test products whose fields are emptied
in the data (what `predict` and the service see), beside a TF-IDF + linear SVM fitted and tested on the same text
inputs (runs.input_ablation, the same rows as the run's report). With --missing-splits the same is measured on
other leakage-safe splits (one split's 3,994 test products move these rows by tenths of a point). With
--reuse-missing a model already trained under OUT/missing/fusion (by this section, or `deepfusion train --model
fusion` with the same seed), or OUT/missing/seedN/fusion for split seed N, is evaluated instead of trained again."""

from __future__ import annotations

import json
from typing import Any

from bench import SEED, Bench
from compare import split_for, train_split_fusion


def measure(b: Bench) -> dict[str, Any]:
    splits = []
    for split_seed in b.options.get("missing_splits") or [SEED]:
        key = "missing/fusion" if split_seed == SEED else f"missing/seed{split_seed}/fusion"
        folder = b.out / key
        if not (b.options.get("reuse_missing") and (folder / "metrics.json").is_file()):
            if split_seed == SEED:
                b.train(key, "fusion", ("metadata", "title", "image"))
            else:
                train_split_fusion(b, split_for(b, split_seed), folder)
        metrics = json.loads((folder / "metrics.json").read_text())
        splits.append(
            {"split_seed": split_seed, "ablation": metrics["ablation"], "fusion_trained": metrics.get("date")}
        )
    models = dict(b.models)
    previous = b.latest_models("missing_inputs").get("missing/fusion")
    if "missing/fusion" not in models and previous and previous.get("date") == splits[0]["fusion_trained"]:
        models["missing/fusion"] = previous  # reused: the row of the run that trained it
    # The first split's rows stay at the top level, where the README's table and earlier results have them.
    return {"models": models, **splits[0], "splits": splits}
