"""What predict and predict_proba hand back: class names, ids, a review flag chosen on validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from deepfusion import Predictor, load_catalog


def _fitted(catalog: Path, **options: object) -> tuple[Predictor, pd.DataFrame]:
    frame = load_catalog(catalog, progress=False).products
    train, val, test = frame.iloc[0::3], frame.iloc[1::3], frame.iloc[2::3]
    predictor = Predictor(["metadata", "title"], preset="small", head={"epochs": 20}, progress=False, **options)
    return predictor.fit(train, val), test


def test_predict_proba_is_a_frame_of_class_names_indexed_by_id(clean_catalog_dir: Path) -> None:
    predictor, test = _fitted(clean_catalog_dir)
    proba = predictor.predict_proba(test)
    assert list(proba.columns) == predictor.classes_
    assert list(proba.index) == list(test["id"])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(proba.to_numpy(), predictor.predict_proba(test, as_pandas=False))
    assert list(proba.idxmax(axis=1)) == list(predictor.predict(test))


def test_needs_review_follows_the_precision_target(clean_catalog_dir: Path, tmp_path: Path) -> None:
    strict, test = _fitted(clean_catalog_dir, review_precision=1.0)
    lax, _ = _fitted(clean_catalog_dir, review_precision=0.0)
    # Precision 0 is met by every confidence: the threshold is the lowest validation confidence.
    assert lax.review_threshold_ <= strict.review_threshold_
    frame = strict.predict_frame(test)
    assert frame["needs_review"].dtype == bool
    np.testing.assert_array_equal(frame["needs_review"], frame["confidence"] < strict.review_threshold_)
    strict.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["config"]["review_precision"] == 1.0 and config["review_threshold"] == strict.review_threshold_
    assert Predictor.load(tmp_path / "m").review_threshold_ == strict.review_threshold_


def test_predict_writes_rounded_confidences_and_no_duplicate_columns(clean_catalog_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deepfusion.cli import app

    predictor, _ = _fitted(clean_catalog_dir)
    predictor.save(tmp_path / "m")
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "m"), "--data", str(clean_catalog_dir),
                                      "--out", str(out), "--top-k", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(out, dtype={"id": str})
    assert list(preds.columns) == ["id", "prediction", "confidence", "needs_review", "inputs",
                                   "top2_label", "top2_confidence", "top3_label", "top3_confidence"]
    for col in ("confidence", "top2_confidence", "top3_confidence"):
        assert (preds[col] == preds[col].round(4)).all()
    assert (preds["confidence"] >= preds["top2_confidence"]).all()
