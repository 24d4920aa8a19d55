"""Paired bootstrap: how sure a comparison of two models on one test set is."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from deepfusion.evaluation import paired_bootstrap


def _catalog_like(n: int, n_classes: int, err_a: float, err_b: float, seed: int) -> tuple[list, list, list]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)

    def noisy(err: float) -> np.ndarray:
        return np.where(rng.random(n) < err, rng.integers(0, n_classes, n), y)

    names = np.array([f"class {i}" for i in range(n_classes)], dtype=object)
    return list(names[y]), list(names[noisy(err_a)]), list(names[noisy(err_b)])


def test_observed_differences_are_the_sklearn_metrics() -> None:
    y, a, b = _catalog_like(600, 30, 0.05, 0.2, seed=0)
    labels = sorted(set(y))
    out = paired_bootstrap(y, a, b, n_resamples=200)
    assert out["accuracy"]["difference"] == pytest.approx(accuracy_score(y, a) - accuracy_score(y, b))
    f1 = f1_score(y, a, labels=labels, average="macro") - f1_score(y, b, labels=labels, average="macro")
    assert out["macro_f1"]["difference"] == pytest.approx(f1)


def test_clear_winner_and_a_tie() -> None:
    y, a, b = _catalog_like(2000, 20, 0.02, 0.15, seed=1)
    out = paired_bootstrap(y, a, b, n_resamples=300)
    for metric in ("accuracy", "macro_f1"):
        assert 0 < out[metric]["low"] <= out[metric]["difference"] <= out[metric]["high"]
        assert out[metric]["a_ahead"] == 1.0
    same = paired_bootstrap(y, a, a, n_resamples=50)
    assert same["accuracy"] == {"difference": 0.0, "low": 0.0, "high": 0.0, "a_ahead": 0.0}
    # Swapping the models mirrors the answer.
    swapped = paired_bootstrap(y, b, a, n_resamples=300)
    assert swapped["accuracy"]["difference"] == pytest.approx(-out["accuracy"]["difference"])
    assert swapped["accuracy"]["a_ahead"] == 0.0


def test_a_small_gap_on_a_small_test_set_is_not_called() -> None:
    y, a, b = _catalog_like(300, 10, 0.10, 0.12, seed=2)
    out = paired_bootstrap(y, a, b, n_resamples=500)
    assert out["accuracy"]["low"] < 0 < out["accuracy"]["high"]


def test_strata_give_the_mean_over_test_sets() -> None:
    y1, a1, b1 = _catalog_like(400, 15, 0.05, 0.10, seed=3)
    y2, a2, b2 = _catalog_like(800, 15, 0.10, 0.05, seed=4)
    one = paired_bootstrap(y1, a1, b1, n_resamples=100)
    two = paired_bootstrap(y2, a2, b2, n_resamples=100)
    both = paired_bootstrap(y1 + y2, a1 + a2, b1 + b2, strata=["s1"] * 400 + ["s2"] * 800, n_resamples=100)
    for metric in ("accuracy", "macro_f1"):
        mean = (one[metric]["difference"] + two[metric]["difference"]) / 2
        assert both[metric]["difference"] == pytest.approx(mean)
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap(y1, a1, b1[:-1])
