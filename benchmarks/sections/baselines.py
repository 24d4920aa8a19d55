"""The plain baselines the brief calibrates against, re-measured on this benchmark's leakage-safe split: logistic
regression on the structured metadata, and TF-IDF + linear SVM on metadata + title (both from
``deepfusion.baselines``). Each is also scored with the titles withheld, and the SVM is compared product by
product with the fusion model when that exists. Fit seconds include fitting the feature encoders."""

from __future__ import annotations

import logging
import time
from typing import Any

from bench import Bench
from compare import fusion_test_predictions, paired

log = logging.getLogger("benchmark.baselines")


def measure(b: Bench) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, f1_score

    from deepfusion.baselines import MetadataLRBaseline, TextSVMBaseline
    from deepfusion.catalog import TARGET, TITLE

    train, test = b.frames("train", "test")
    no_title = test.assign(**{TITLE: None})
    rows, predictions = [], {}
    for key, name, model in (
        ("lr", "logistic regression, structured metadata", MetadataLRBaseline()),
        ("svm", "TF-IDF + linear SVM, metadata + title", TextSVMBaseline(("metadata", "title"))),
    ):
        start = time.perf_counter()
        model.fit(train)
        fit_seconds = time.perf_counter() - start
        predictions[key] = pred = model.predict(test)
        rows.append({
            "baseline": name,
            "accuracy": accuracy_score(test[TARGET], pred),
            "macro_f1": f1_score(test[TARGET], pred, average="macro"),
            "accuracy_without_title": accuracy_score(test[TARGET], model.predict(no_title)),
            "fit_seconds": fit_seconds,
        })
        log.info("baseline %s", rows[-1])
    fusion_csv = b.out / "fusion/regularized/test_predictions.csv"
    pairs = None
    if fusion_csv.exists():
        fusion = fusion_test_predictions(fusion_csv, test)
        pairs = paired(test[TARGET].to_numpy(), fusion, predictions["svm"])
    return {"rows": rows, "paired_with_fusion": pairs, "test_products": len(test)}
