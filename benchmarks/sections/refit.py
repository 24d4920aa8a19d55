"""Opt-in: the fusion model with ``refit=True`` (trained again on train + validation once validation has
calibrated it) vs the default fusion model on the same splits (``--refit-splits``; ``--reuse-refit`` reuses the
models trained earlier under OUT/refit/)."""

from __future__ import annotations

import json
import logging
from typing import Any

from bench import Bench
from compare import fusion_test_predictions, means, paired, split_for, split_fusion_csv, train_split_fusion

log = logging.getLogger("benchmark.refit")


def _refit_model(b: Bench, split: Any, split_seed: int) -> tuple[Any, dict[str, Any]]:
    folder = b.out / f"refit/seed{split_seed}/fusion"
    if b.options.get("reuse_refit") and (folder / "metrics.json").exists():
        log.info("refit: reusing the model trained earlier in %s (--reuse-refit)", folder)
        return folder, json.loads((folder / "metrics.json").read_text())
    return folder, train_split_fusion(b, split, folder, refit=True)


def _row(split_seed: int, truth: Any, refit: Any, default: Any, svm: Any, m: dict, default_seconds: float) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    from deepfusion.evaluation import paired_bootstrap

    labels = sorted(set(truth))

    def f1(pred: Any) -> float:
        return f1_score(truth, pred, labels=labels, average="macro", zero_division=0)

    pairs = paired(truth, refit, default)
    return {
        "split_seed": split_seed,
        "test_products": len(truth),
        "refit_products": m["refit"]["products"],
        "refit_accuracy": accuracy_score(truth, refit),
        "refit_macro_f1": f1(refit),
        "default_accuracy": accuracy_score(truth, default),
        "default_macro_f1": f1(default),
        "only_refit_right": pairs["only_fusion_right"],
        "only_default_right": pairs["only_svm_right"],
        "svm_train_val_accuracy": accuracy_score(truth, svm),
        "svm_train_val_macro_f1": f1(svm),
        "refit_fit_seconds": m["fit_seconds"],
        "default_fit_seconds": default_seconds,
        "bootstrap": paired_bootstrap(truth, refit, default),
        "bootstrap_vs_svm": paired_bootstrap(truth, refit, svm),
    }


def measure(b: Bench) -> dict[str, Any]:
    from deepfusion.baselines import TextSVMBaseline
    from deepfusion.catalog import TARGET
    from deepfusion.evaluation import paired_bootstrap

    rows = []
    pooled: dict[str, list[Any]] = {"truth": [], "refit": [], "default": [], "svm": [], "split": []}
    for split_seed in b.options.get("refit_splits", [42, 7, 11, 19, 23]):
        split = split_for(b, split_seed)
        train, val, test = b.frames("train", "val", "test", split=split)
        # The text baseline has nothing to tune on validation, so its fair match for a refit model is the SVM
        # fitted on train + validation too.
        svm = TextSVMBaseline(("metadata", "title")).fit(_concat(train, val)).predict(test)
        default_csv = split_fusion_csv(b, split_seed)
        if not default_csv.exists():
            train_split_fusion(b, split, default_csv.parent)
        folder, m = _refit_model(b, split, split_seed)
        refit = fusion_test_predictions(folder / "test_predictions.csv", test)
        default = fusion_test_predictions(default_csv, test)
        default_seconds = json.loads((default_csv.parent / "metrics.json").read_text())["fit_seconds"]
        truth = test[TARGET].to_numpy()
        rows.append(_row(split_seed, truth, refit, default, svm, m, default_seconds))
        for key, values in (("truth", truth), ("refit", refit), ("default", default), ("svm", svm),
                            ("split", [split_seed] * len(test))):
            pooled[key].extend(values)
        log.info("refit %s", rows[-1])
    return {
        "rows": rows,
        "mean": means(rows),
        "mean_bootstrap": paired_bootstrap(pooled["truth"], pooled["refit"], pooled["default"], strata=pooled["split"]),
        "mean_bootstrap_vs_svm": paired_bootstrap(pooled["truth"], pooled["refit"], pooled["svm"],
                                                  strata=pooled["split"]),
    }


def _concat(*frames: Any) -> Any:
    import pandas as pd

    return pd.concat(frames, ignore_index=True)
