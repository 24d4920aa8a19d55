"""Refit: after early stopping and calibration on validation, the model is trained again on train + validation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from deepfusion.catalog import load_catalog
from deepfusion.cli import app
from deepfusion.predictor import Predictor

# TF-IDF alone: the test's words seen only in validation are unknown to the plain model's network (a sentence model,
# the default for text-only models, reads them by meaning and would make both models right).
OPTIONS = {"preset": "small", "progress": False, "head": {"epochs": 20}, "sentence_model": None}


def _shoes(word: int, n: int, start: int, seed: int) -> pd.DataFrame:
    """Heels and flats whose titles use one of two words per class: 0 in training, 1 in validation and test."""
    rng = np.random.default_rng(seed)
    words = {"Heels": ("stiletto", "pump"), "Flats": ("ballerina", "loafer")}
    rows = [
        {"id": start + 2 * i + k, "articleType": article, "productDisplayName": f"Brand{rng.integers(50)} {w[word]}"}
        for i in range(n)
        for k, (article, w) in enumerate(words.items())
    ]
    return pd.DataFrame(rows)


def test_refit_learns_from_validation_and_keeps_its_calibration(tmp_path: Path) -> None:
    train, val, test = _shoes(0, 40, 0, seed=0), _shoes(1, 20, 1000, seed=1), _shoes(1, 20, 2000, seed=2)
    plain = Predictor(["title"], **OPTIONS).fit(train, val)
    refit = Predictor(["title"], refit=True, **OPTIONS).fit(train, val)
    # Words seen only in validation: the refit model learned them everywhere; the plain model only in its stacked SVM
    # (fitted again on train + validation once the mix is chosen), not in its network, which decides with it.
    assert plain.evaluate(test)["accuracy"] < 0.9
    assert refit.evaluate(test)["accuracy"] == 1.0
    # The first pass is the plain model's: same calibration and validation curve, kept by the refit model.
    assert refit.temperature_ == plain.temperature_ != 1.0
    assert refit.history_ == plain.history_ and "val_accuracy" in refit.history_[-1]
    assert (refit.refit_["products"], refit.refit_["epochs"]) == (120, 20) and refit.refit_["train_seconds"] > 0
    assert sum(refit.train_counts_.values()) == 120

    refit.save(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["refit"]["products"] == 120
    loaded = Predictor.load(tmp_path / "model")
    assert loaded.refit and loaded.refit_["epochs"] == 20
    np.testing.assert_allclose(loaded.predict_proba(test), refit.predict_proba(test), atol=1e-6)
    assert Predictor.load(_saved(plain, tmp_path / "plain")).refit_ is None


def _saved(predictor: Predictor, path: Path) -> Path:
    predictor.save(path)
    return path


def test_refit_without_validation_is_a_plain_fit(caplog: pytest.LogCaptureFixture) -> None:
    train = _shoes(0, 20, 0, seed=0)
    with caplog.at_level(logging.INFO, logger="deepfusion"):
        predictor = Predictor(["title"], refit=True, **OPTIONS).fit(train)
    assert predictor.refit_ is None and sum(predictor.train_counts_.values()) == len(train)
    assert "refit" not in caplog.text


def test_fusion_refit_keeps_both_temperatures_and_stacking(clean_catalog_dir: Path) -> None:
    frame = load_catalog(clean_catalog_dir, progress=False).products
    train, val = frame.iloc[::2], frame.iloc[1::2]
    options = OPTIONS
    plain = Predictor(["metadata", "title"], **options).fit(train, val)
    refit = Predictor(["metadata", "title"], refit=True, **options).fit(train, val)
    assert refit.config_.uses_title_fallback and refit.config_.uses_stacking
    assert (refit.temperature_, refit.fallback_temperature_) == (plain.temperature_, plain.fallback_temperature_)
    assert refit.fallback_best_epochs_ == plain.fallback_best_epochs_  # from the first pass, as is the history
    # The stacked SVM and the encoders were fitted again, on every labelled product.
    assert refit.text_model_ is not plain.text_model_
    assert refit.refit_["products"] == len(train) + len(val)
    untitled = val.assign(productDisplayName=None)
    assert refit.evaluate(val)["accuracy"] >= 0.9 and refit.evaluate(untitled)["accuracy"] >= 0.9


def test_cli_refit(catalog_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(catalog_dir), "--model", "metadata", "--preset", "small",
                                      "--refit", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    sizes = json.loads((out / "split.json").read_text())["sizes"]
    metrics = json.loads((out / "metadata" / "metrics.json").read_text())
    assert metrics["refit"]["products"] == sizes["train"] + sizes["val"]
    assert metrics["n"] == sizes["test"]  # the test split stays held out
    page = (out / "report.html").read_text()
    assert f"metadata trained again on train + validation ({sizes['train'] + sizes['val']:,} products)" in page
    assert json.loads((out / "comparison.json").read_text())["models"]["metadata"]["refit"] == metrics["refit"]
