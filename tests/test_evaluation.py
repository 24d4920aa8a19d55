"""How sure the test figures are: the paired bootstrap of a comparison of two models on one test set, the
bootstrap intervals of one model's figures, and the one-page summary of a model's metrics."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from deepfusion.evaluation import (
    bootstrap_intervals,
    coverage_at_precision,
    evaluate_predictions,
    paired_bootstrap,
    summary_markdown,
)


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


def _with_confidence(y: list, pred: list, seed: int) -> np.ndarray:
    """Confidences higher for the right predictions, with overlap, as a trained model's are."""
    rng = np.random.default_rng(seed)
    right = np.array(y, dtype=object) == np.array(pred, dtype=object)
    return np.where(right, rng.uniform(0.6, 1.0, len(y)), rng.uniform(0.3, 0.9, len(y)))


def test_intervals_contain_the_estimate_and_narrow_with_more_data() -> None:
    widths = {}
    for n in (300, 3000):
        y, pred, _ = _catalog_like(n, 25, 0.12, 0.0, seed=5)
        conf = _with_confidence(y, pred, seed=6)
        out = bootstrap_intervals(y, pred, conf, n_resamples=400, seed=1)
        metrics = evaluate_predictions(y, pred, conf, {})
        assert out["accuracy"]["value"] == pytest.approx(metrics["accuracy"])
        assert out["macro_f1"]["value"] == pytest.approx(metrics["macro_f1"])
        for key in ("accuracy", "macro_f1"):
            assert out[key]["low"] < out[key]["value"] < out[key]["high"], (n, key)
            assert out[key]["method"] == "bootstrap" and not out[key]["collapsed"]
        for band, target in zip(out["auto_approval"], (0.95, 0.98, 0.99), strict=True):
            correct = (np.array(y, dtype=object) == np.array(pred, dtype=object)).astype(float)
            assert band["value"] == coverage_at_precision(conf, correct, target)["coverage"]
            assert band["low"] <= band["value"] <= band["high"]
        widths[n] = {k: out[k]["high"] - out[k]["low"] for k in ("accuracy", "macro_f1")}
        # Seeded: the same call gives the same interval, another seed another one.
        assert bootstrap_intervals(y, pred, conf, n_resamples=400, seed=1) == out
        assert bootstrap_intervals(y, pred, conf, n_resamples=400, seed=2)["accuracy"] != out["accuracy"]
    for key in ("accuracy", "macro_f1"):
        # Ten times the products: about a third of the width (1 / sqrt(10)).
        assert widths[3000][key] < widths[300][key] / 2, key


def test_a_flawless_test_set_still_has_an_interval() -> None:
    y = ["Tshirts", "Jeans", "Heels"] * 17
    out = bootstrap_intervals(y, y, np.full(len(y), 0.97), n_resamples=200)
    n = len(y)
    # Every resample is flawless too; the exact binomial interval of n right out of n is used instead.
    assert out["accuracy"]["value"] == 1.0 and out["accuracy"]["method"] == "exact binomial"
    assert out["accuracy"]["low"] == pytest.approx(0.025 ** (1 / n)) and out["accuracy"]["high"] == 1.0
    for band in out["auto_approval"]:
        assert band["value"] == 1.0 and band["low"] == pytest.approx(0.025 ** (1 / n))
    assert out["macro_f1"]["collapsed"] and out["macro_f1"]["method"] == "bootstrap"
    with pytest.raises(ValueError, match="same length"):
        bootstrap_intervals(y, y[:-1], np.ones(n))


def test_summary_flags_a_small_set_and_calibration_that_did_not_help() -> None:
    y, pred, _ = _catalog_like(50, 5, 0.2, 0.0, seed=7)
    metrics = evaluate_predictions(y, pred, _with_confidence(y, pred, seed=8), {})
    metrics["ece_uncalibrated"] = metrics["ece"]  # no better after calibration
    text = summary_markdown(metrics, "test")
    assert "small evaluation set (50 products, under 2,000)" in text
    assert "(**calibration did not help**)" in text
    metrics["ece_uncalibrated"] = metrics["ece"] + 0.1
    intervals = bootstrap_intervals(y, pred, _with_confidence(y, pred, seed=8), n_resamples=100)
    text = summary_markdown(metrics, "test", intervals)
    assert "calibration did not help" not in text
    assert f"(95% interval {100 * intervals['accuracy']['low']:.2f}% to" in text
    big, big_pred, _ = _catalog_like(2500, 5, 0.2, 0.0, seed=9)
    assert "small evaluation set" not in summary_markdown(
        evaluate_predictions(big, big_pred, np.full(2500, 0.8), {}), "test")


def test_summary_lists_only_weak_classes() -> None:
    y = np.array(["Tshirts"] * 6 + ["Jeans"] * 4 + ["Heels"] * 5 + ["Watches"] * 3, dtype=object)
    pred = y.copy()
    pred[:2] = "Jeans"  # Tshirts: recall 4/6; Jeans: precision 4/6
    pred[10] = "Watches"  # Heels 4/5; Watches precision 3/4
    metrics = evaluate_predictions(y, pred, np.full(len(y), 0.9), {"Tshirts": 50})
    metrics["ece_uncalibrated"] = 0.2
    text = summary_markdown(metrics, "test")
    weakest = text.split("## Weakest classes", 1)[1]
    rows = [r.split("|")[1:-1] for r in weakest.splitlines() if r.startswith("| ") and "---" not in r][1:]
    names = [r[0].strip() for r in rows]
    f1 = [float(r[3]) for r in rows]
    assert set(names) == {"Tshirts", "Jeans", "Heels", "Watches"} and f1 == sorted(f1) and max(f1) < 1
    assert {r[0].strip(): int(r[4]) for r in rows} == {"Tshirts": 6, "Jeans": 4, "Heels": 5, "Watches": 3}
    assert "small evaluation set (18 products, under 2,000)" in text

    perfect = evaluate_predictions(y, y, np.full(len(y), 0.9), {})
    text = summary_markdown(perfect, "test")
    assert "1.000 |" not in text.split("## Weakest classes", 1)[1]
    assert "Every class has F1 1.000" in text

    mixed = y.copy()
    mixed[10] = "Watches"  # only Heels and Watches are hurt; Tshirts and Jeans stay perfect
    text = summary_markdown(evaluate_predictions(y, mixed, np.full(len(y), 0.9), {}), "test")
    weakest = text.split("## Weakest classes", 1)[1]
    assert "| Heels |" in weakest and "| Watches |" in weakest
    assert "| Tshirts |" not in weakest and "| Jeans |" not in weakest
