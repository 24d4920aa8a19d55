"""Catalogs DeepFusion was not written for: the fusion model beside the plain text baseline, per category level.

    python benchmarks/other_catalogs.py            # both catalogs, prints the rows and writes a dated results file
    python benchmarks/other_catalogs.py --seeds 0,1,2   # the same on three 80/20 splits
    python benchmarks/other_catalogs.py --sentence-model none   # fusion reads titles with TF-IDF alone
    python benchmarks/run.py --sections other_catalogs   # the same, and RESULTS.md rendered

amazon-toys-uk: the label is level k of the category path (``Hobbies > Model Trains & Railway Sets > ...`` cut
after k parts), classes with at least 10 products, a stratified 80/20 split (seed 0; ``--seeds`` draws more), as
the any-catalog issue's reference. The baseline is that reference: TF-IDF (word 1-2 + character 2-5 grams) of
name + manufacturer and a linear SVM. The fusion model reads the columns the inferred schema gives it (the text,
the attributes, the numbers); it holds out 10% of its 80% (stratified) for early stopping and calibration, then
fits its stacked SVM again on the whole 80%, and never sees the 20%.

amazon-us-2020-sample: the same at level 1 and 2 (classes with at least 5 products: 1,000 products), text only,
and the image column's links, which cannot be reached here, left out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import result_files
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.svm import LinearSVC

from deepfusion import Predictor, load_catalog
from deepfusion.catalog import TARGET

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("DEEPFUSION_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
log = logging.getLogger("benchmark.other_catalogs")

# (folder, label column, the baseline's text columns, minimum class size, levels)
CATALOGS: dict[str, dict[str, Any]] = {
    "amazon-toys-uk": {
        "file": "amazon-toys-uk/products.csv",
        "label": "amazon_category_and_sub_category",
        "baseline_text": ["product_name", "manufacturer"],
        "min_class": 10,
        "levels": (1, 2),
    },
    "amazon-us-2020-sample": {
        "file": "amazon-us-2020-sample/products.csv",
        "label": "Category",
        "baseline_text": ["Product Name", "About Product"],
        "min_class": 5,
        "levels": (1, 2),
        "drop": ["Image"],
    },
}


def path_level(path: str, level: int) -> str | None:
    """The first ``level`` parts of a category path (``>`` or ``|`` between parts); None when it is shorter."""
    sep = "|" if "|" in path and ">" not in path else ">"
    parts = [p.strip() for p in str(path).split(sep) if p.strip()]
    return f" {sep} ".join(parts[:level]) if len(parts) >= level else None


def level_split(products: pd.DataFrame, label: str, level: int, min_class: int, seed: int = 0):  # noqa: ANN201
    """Products labelled with level ``level`` of their path, classes of at least ``min_class``, split 80/20."""
    frame = products.copy()
    frame["level_label"] = [path_level(p, level) for p in frame[label].fillna("")]
    frame = frame[frame["level_label"].notna()]
    counts = frame["level_label"].value_counts()
    frame = frame[frame["level_label"].isin(counts[counts >= min_class].index)].reset_index(drop=True)
    train, test = train_test_split(frame, test_size=0.2, random_state=seed, stratify=frame["level_label"])
    return train.reset_index(drop=True), test.reset_index(drop=True)


def text_svm(train: pd.DataFrame, test: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """The issue's reference baseline: TF-IDF of word 1-2 and character 2-5 grams of the text columns, linear SVM."""
    def text(frame: pd.DataFrame) -> pd.Series:
        return frame[columns].fillna("").astype(str).agg(" ".join, axis=1)

    words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)
    x_train = sp.hstack([words.fit_transform(text(train)), chars.fit_transform(text(train))]).tocsr()
    x_test = sp.hstack([words.transform(text(test)), chars.transform(text(test))]).tocsr()
    svm = LinearSVC(C=0.5, random_state=0).fit(x_train, train["level_label"])
    return svm.predict(x_test)


def fusion(
    train: pd.DataFrame, test: pd.DataFrame, schema: Any, seed: int = 0, sentence_model: str | None = "auto"
) -> tuple[np.ndarray, dict]:
    """The default model on every input the schema names but images: fit on 90% of ``train``, calibrated on 10%;
    ``sentence_model``: the Predictor's option ("auto", its default: the packaged sentence model where installed;
    None: TF-IDF alone)."""
    fit, val = train_test_split(train, test_size=0.1, random_state=seed, stratify=train["level_label"])
    schema = schema.with_roles(label="level_label")
    modalities = tuple(m for m in ("metadata", "title") if (schema.metadata if m == "metadata" else schema.text))
    start = time.perf_counter()
    # min_class_size=1: the classes are the level's labels, as the SVM's (no back-off of a level-2 path with 5 to 9
    # products to its level-1 parent, which would make its products wrong at level 2 by construction).
    predictor = Predictor(
        modalities, schema=schema, progress=False, min_class_size=1, sentence_model=sentence_model
    ).fit(fit, val)
    seconds = time.perf_counter() - start
    predicted = predictor.predict(test)
    info = {"modalities": list(modalities), "sentence_model": predictor.config_.sentence_model,
            "fit_seconds": round(seconds, 1)}
    return np.asarray(predicted), info


def measure(name: str, seed: int = 0, sentence_model: str | None = "auto") -> list[dict[str, Any]]:
    spec = CATALOGS[name]
    path = SHARED / spec["file"]
    catalog = load_catalog(path, label=spec["label"], progress=False)
    schema = catalog.schema
    if spec.get("drop"):
        schema = schema.with_roles(image=None) if schema.image in spec["drop"] else schema
    table = catalog.products[[c for _, c in schema.columns() if c in catalog.products.columns] + [TARGET]]
    rows = []
    for level in spec["levels"]:
        train, test = level_split(table, TARGET, level, spec["min_class"], seed)
        truth = test["level_label"].to_numpy()
        baseline = text_svm(train, test, spec["baseline_text"])
        predicted, info = fusion(train.drop(columns=[TARGET]), test.drop(columns=[TARGET, "level_label"]),
                                 schema.with_roles(image=None) if schema.image else schema, seed, sentence_model)
        rows.append({
            "catalog": name,
            "level": level,
            "split_seed": seed,
            "classes": int(train["level_label"].nunique()),
            "train": len(train),
            "test": len(test),
            "fusion_accuracy": float(accuracy_score(truth, predicted)),
            "fusion_macro_f1": float(f1_score(truth, predicted, average="macro")),
            "svm_accuracy": float(accuracy_score(truth, baseline)),
            "svm_macro_f1": float(f1_score(truth, baseline, average="macro")),
            "schema": schema.to_json(),
            **info,
        })
        log.info("%s level %d: fusion %.4f, svm %.4f", name, level, rows[-1]["fusion_accuracy"],
                 rows[-1]["svm_accuracy"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalogs", default=",".join(CATALOGS), help="comma-separated: " + ", ".join(CATALOGS))
    parser.add_argument("--seeds", default="0", help="split seeds, comma-separated: each catalog is measured on each")
    parser.add_argument("--sentence-model", default="auto",
                        help="the fusion model's sentence_model: auto (the default model's choice), a name or "
                        "folder, or none (TF-IDF alone)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for name in args.catalogs.split(","):
        if not (SHARED / CATALOGS[name]["file"]).exists():
            log.warning("%s not found under %s: skipped", name, SHARED)
            continue
        rows += [row for seed in seeds for row in measure(name, seed, args.sentence_model)]
    # One file per run (date, time and commit): a run of one catalog does not replace another run's rows.
    out = result_files.write("other_catalogs", {"cpus": os.cpu_count(), "split_seeds": seeds, "rows": rows})
    print(json.dumps([{k: v for k, v in r.items() if k != "schema"} for r in rows], indent=2))
    print(f"-> {out}; python benchmarks/render.py renders RESULTS.md")


if __name__ == "__main__":
    main()
