"""Stacking: the linear SVM's scores the fusion network reads are out-of-fold on training data, keep duplicate
products in one fold, survive save/load, and are withheld together with the title."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from safetensors.numpy import load_file

from deepfusion.catalog import load_catalog
from deepfusion.predictor import Predictor
from deepfusion.text_scores import TextScoreModel, fit_title_image_model


def _random_text(n_groups: int, copies: int, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Sparse rows with labels unrelated to the features; each group is ``copies`` identical products."""
    rng = np.random.default_rng(seed)
    base = sp.random(n_groups, 400, density=0.05, random_state=seed, format="csr", dtype=np.float32)
    labels = rng.integers(0, 4, n_groups)
    rows = np.repeat(np.arange(n_groups), copies)
    return base[rows], labels[rows], rows


def test_training_scores_are_out_of_fold_and_keep_duplicates_together() -> None:
    X, y, groups = _random_text(80, 3)
    model = TextScoreModel()
    oof = model.fit(X, y, n_classes=4, groups=groups).oof_scores_
    assert oof.shape == (len(y), 4)
    # The full model memorises its training rows; the out-of-fold scores cannot, as the labels are noise.
    assert (model.scores(X).argmax(axis=1) == y).mean() > 0.95
    assert (oof.argmax(axis=1) == y).mean() < 0.5
    # Ignoring the duplicate groups would leak: each product's copies are in the other folds.
    leaky = TextScoreModel().fit(X, y, n_classes=4, groups=None).oof_scores_
    assert (leaky.argmax(axis=1) == y).mean() > 0.9
    # A seed reproduces the scores exactly.
    again = TextScoreModel()
    np.testing.assert_array_equal(again.fit(X, y, n_classes=4, groups=groups).oof_scores_, oof)
    np.testing.assert_array_equal(again.coef_, model.coef_)


def test_two_classes_and_absent_classes_score_sensibly() -> None:
    X, y, _ = _random_text(30, 1, seed=1)
    y = np.where(y < 2, 0, 2)  # classes 0 and 2 of 3: class 1 never seen
    model = TextScoreModel(folds=3)
    model.fit(X, y, n_classes=3)
    scores = model.scores(X)
    assert (scores.argmax(axis=1) == y).mean() > 0.95
    assert not (scores.argmax(axis=1) == 1).any() and np.ptp(scores[:, 1]) == 0  # the unseen class: a constant floor

    restored = TextScoreModel.from_state(json.loads(json.dumps(model.to_json())), model.tensors())
    np.testing.assert_array_equal(restored.scores(X), scores)


def test_fusion_model_saves_its_text_model_and_withholds_it_with_the_title(
    clean_catalog_dir: Path, tmp_path: Path
) -> None:
    frame = load_catalog(clean_catalog_dir, progress=False).products
    train, val = frame.iloc[::2], frame.iloc[1::2]
    predictor = Predictor(["metadata", "title"], preset="small", progress=False,
                          head={"epochs": 60, "modality_dropout": 0.2})
    predictor.fit(train, val)
    assert predictor.evaluate(val)["accuracy"] >= 0.9
    predictor.save(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert list(config["input_dims"]) == ["metadata", "title", "text_scores"]
    tensors = load_file(str(tmp_path / "model" / "text_scores.safetensors"))
    assert tensors["coef"].shape[0] == len(predictor.classes_)
    loaded = Predictor.load(tmp_path / "model")
    np.testing.assert_allclose(loaded.predict_proba(val), predictor.predict_proba(val), atol=1e-6)

    # With the title withheld, its words (and so the SVM scores) no longer matter: shuffle them within each title
    # (same word count, so the metadata's name_length is unchanged) and the prediction stays the same.
    rng = random.Random(0)
    shuffled = val.assign(
        productDisplayName=[" ".join(rng.sample(t.split(), len(t.split()))) for t in val["productDisplayName"]]
    )
    np.testing.assert_allclose(
        loaded.predict_proba(shuffled, absent=["title"]), loaded.predict_proba(val, absent=["title"]), atol=1e-6
    )
    # Compared as log-probabilities: a confident model's probabilities sit within 1e-6 of 0 and 1 either way.
    assert not np.allclose(np.log(loaded.predict_proba(shuffled)), np.log(loaded.predict_proba(val)), atol=1e-3)


def test_stacked_svm_learns_from_validation_products_once_the_mix_is_chosen(clean_catalog_dir: Path) -> None:
    """Validation chooses the network's epochs, the mix and the review threshold; then the stacked SVM is fitted
    again with the validation products. A title word that training files twice under one class and validation
    eight times under another scores highest for the validation's class."""
    frame = load_catalog(clean_catalog_dir, progress=False).products
    train, val = frame.iloc[::2].copy(), frame.iloc[1::2].copy()
    first, second = sorted(frame["articleType"].unique())[:2]
    word = "Zorblatt Quix"
    train.loc[train.index[train["articleType"] == first][:2], "productDisplayName"] = word
    val.loc[val.index[val["articleType"] == second][:8], "productDisplayName"] = word
    product = pd.DataFrame({"productDisplayName": [word]})

    def svm_answer(predictor: Predictor) -> str:
        scores = predictor.text_model_.scores(predictor.title_encoder_.transform(product))
        return str(predictor.labels_.classes_[int(scores.argmax())])

    options = {"preset": "small", "progress": False, "head": {"epochs": 3}}
    assert svm_answer(Predictor(["title"], **options).fit(train, val)) == second
    # A model without validation products has nothing more to learn from: its SVM is the one fitted on train.
    assert svm_answer(Predictor(["title"], **options).fit(train)) == first


def test_text_scores_can_be_switched_off(clean_catalog_dir: Path, tmp_path: Path) -> None:
    frame = load_catalog(clean_catalog_dir, progress=False).products
    predictor = Predictor(["metadata", "title"], preset="small", progress=False, head={"epochs": 5}, stacking=False)
    predictor.fit(frame.iloc[::2], frame.iloc[1::2]).save(tmp_path / "model")
    assert not (tmp_path / "model" / "text_scores.safetensors").exists()
    assert "text_scores" not in json.loads((tmp_path / "model" / "config.json").read_text())["input_dims"]
    assert not Predictor.load(tmp_path / "model").config_.uses_stacking


def test_title_image_model_reads_the_photo_where_the_title_is_silent() -> None:
    """Four classes, two title words: the title tells {0, 1} from {2, 3}, the image features tell the pairs apart.
    The title + image model separates all four; the title alone cannot, and its folded weights score the raw
    image features exactly as the projected model it was fitted as."""
    rng = np.random.default_rng(0)
    n, dim = 800, 64
    y = rng.integers(0, 4, n)
    title = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), y // 2)), shape=(n, 2))
    image = rng.normal(size=(n, dim)).astype(np.float32)
    image[:, 0] += 3.0 * (y % 2) - 1.5  # the photo's one informative direction
    train, test = np.arange(600), np.arange(600, n)
    joint = fit_title_image_model(title[train], image[train], y[train], 4, seed=0, chunk_rows=128)
    alone = TextScoreModel(folds=1, seed=0).fit(title[train], y[train], 4)
    assert joint.coef_.shape == (4, 2 + dim)
    scores = joint.scores(title[test], image[test])
    np.testing.assert_allclose(scores, joint.scores(sp.hstack([title[test], sp.csr_matrix(image[test])])), atol=1e-4)
    assert (scores.argmax(axis=1) == y[test]).mean() > 0.8  # the pairs overlap: at best 93%
    assert (alone.scores(title[test]).argmax(axis=1) == y[test]).mean() < 0.6
