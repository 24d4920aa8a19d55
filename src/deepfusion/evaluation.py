"""Metrics a catalog team can act on: overall and per-class quality, frequent vs rare categories, the pairs
the model confuses, calibration, and what the numbers mean at catalog scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

RARE_THRESHOLD = 100  # a class with fewer training examples than this counts as rare
PRECISION_TARGETS = (0.95, 0.98, 0.99)
BOOTSTRAP_RESAMPLES = 1000
INTERVAL_LEVEL = 0.95
# Below this many test products a single product moves accuracy by more than 0.05 points and rare classes have
# one or two products each, so figures scaled to "per 100,000" are mostly extrapolation: reports say so.
SMALL_TEST_SPLIT = 2000


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins: the gap between confidence and accuracy, weighted by bin size."""
    if len(confidence) == 0:
        return float("nan")
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> list[dict[str, float]]:
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    rows = []
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            rows.append(
                {
                    "lower": b / n_bins,
                    "upper": (b + 1) / n_bins,
                    "count": int(mask.sum()),
                    "confidence": float(confidence[mask].mean()),
                    "accuracy": float(correct[mask].mean()),
                }
            )
    return rows


def coverage_at_precision(confidence: np.ndarray, correct: np.ndarray, target: float) -> dict[str, float]:
    """Largest share of products that can be auto-approved (highest confidence first) while the approved set
    keeps at least ``target`` precision, and the confidence threshold that achieves it."""
    if len(confidence) == 0:
        return {"target_precision": target, "coverage": 0.0, "threshold": 1.0, "precision": float("nan")}
    order = np.argsort(-confidence, kind="stable")
    conf = confidence[order]
    precision = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    # Products tied on confidence are approved together, so only cut where the confidence changes.
    cut_ok = np.r_[conf[:-1] != conf[1:], True]
    ok = np.flatnonzero((precision >= target) & cut_ok)
    if len(ok) == 0:
        return {"target_precision": target, "coverage": 0.0, "threshold": 1.0, "precision": float("nan")}
    k = ok[-1]
    return {
        "target_precision": target,
        "coverage": float((k + 1) / len(order)),
        "threshold": float(conf[k]),
        "precision": float(precision[k]),
    }


def evaluate_predictions(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    confidence: np.ndarray,
    train_counts: dict[str, int],
    *,
    rare_threshold: int = RARE_THRESHOLD,
    top_pairs: int = 20,
) -> dict[str, Any]:
    """All metrics for one model on one labelled set. Labels are class names."""
    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray(y_pred, dtype=object)
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = (y_true == y_pred).astype(float)
    labels = sorted(set(y_true))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = [
        {
            "class": c,
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "support": int(s),
            "train_count": int(train_counts.get(c, 0)),
        }
        for c, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
    ]

    def subset(mask: np.ndarray) -> dict[str, Any]:
        if not mask.any():
            return {"n": 0, "classes": 0, "accuracy": None, "macro_f1": None}
        present = sorted(set(y_true[mask]))
        return {
            "n": int(mask.sum()),
            "classes": len(present),
            "accuracy": float(correct[mask].mean()),
            # F1 of each class in the group, computed on all predictions (a rare class hurt by false positives
            # from frequent ones counts as hurt).
            "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        }

    is_frequent = np.array([train_counts.get(c, 0) >= rare_threshold for c in y_true])
    confusions = (
        pd.DataFrame({"true": y_true[correct == 0], "predicted": y_pred[correct == 0]})
        .value_counts()
        .head(top_pairs)
        .reset_index(name="count")
    )
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else float("nan"),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "frequent": {"definition": f">= {rare_threshold} training examples", **subset(is_frequent)},
        "rare": {"definition": f"< {rare_threshold} training examples", **subset(~is_frequent)},
        "ece": expected_calibration_error(confidence, correct),
        "mean_confidence": float(confidence.mean()) if len(confidence) else float("nan"),
        "reliability": reliability_bins(confidence, correct),
        "auto_approval": [coverage_at_precision(confidence, correct, t) for t in PRECISION_TARGETS],
        "per_100k_correct": float(correct.mean() * 100_000) if len(correct) else float("nan"),
        "confused_pairs": confusions.to_dict(orient="records"),
        "per_class": per_class,
    }


def calibration_helped(metrics: dict[str, Any]) -> bool | None:
    """Whether temperature scaling lowered the test ECE (``ece`` after, ``ece_uncalibrated`` before); None when
    either is unknown."""
    after, before = metrics.get("ece"), metrics.get("ece_uncalibrated")
    if after is None or before is None or np.isnan(after) or np.isnan(before):
        return None
    return bool(after < before)


def weakest_classes(per_class: Sequence[dict[str, Any]], limit: int = 15) -> list[dict[str, Any]]:
    """Classes with F1 below 1, lowest first (more test products first among equals): a class the model got
    entirely right is not weak, however it sorts."""
    weak = [r for r in per_class if r["f1"] < 1]
    return sorted(weak, key=lambda r: (r["f1"], -r["support"], r["class"]))[:limit]


def summary_markdown(metrics: dict[str, Any], title: str, intervals: dict[str, Any] | None = None) -> str:
    """A readable one-page summary of ``evaluate_predictions`` output; with ``intervals`` (from
    ``bootstrap_intervals`` on the same products) accuracy, macro-F1 and auto-approval carry their interval."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.2f}%"

    def between(key: str, fmt: Any) -> str:
        if not intervals:
            return ""
        iv = intervals[key]
        return f" ({intervals['level']:.0%} interval {fmt(iv['low'])} to {fmt(iv['high'])})"

    n = metrics["n"]
    lines = [f"# {title}", "", f"Evaluated on {n:,} products."]
    if n < SMALL_TEST_SPLIT:
        lines += [
            "",
            f"**Warning: small evaluation set ({n:,} products, under {SMALL_TEST_SPLIT:,}).** One product moves "
            f"accuracy by {100 / max(n, 1):.2f} points; figures per 100,000 products scale up these {n:,} and "
            "are uncertain by as much.",
        ]
    helped = calibration_helped(metrics)
    ece = f"{metrics['ece']:.4f}"
    if metrics.get("ece_uncalibrated") is not None:
        ece = f"{metrics['ece_uncalibrated']:.4f} before calibration, {metrics['ece']:.4f} after"
        if helped is False:
            ece += " (**calibration did not help**)"
    lines += [
        "",
        "| metric | value |",
        "|---|---|",
        f"| accuracy | {pct(metrics['accuracy'])}{between('accuracy', pct)} |",
        f"| macro-F1 | {metrics['macro_f1']:.4f}{between('macro_f1', lambda v: f'{v:.4f}')} |",
        f"| weighted-F1 | {metrics['weighted_f1']:.4f} |",
        f"| frequent classes ({metrics['frequent']['definition']}): accuracy / macro-F1 | "
        f"{pct(metrics['frequent']['accuracy'])} / {metrics['frequent']['macro_f1'] or 0:.4f} |",
        f"| rare classes ({metrics['rare']['definition']}): accuracy / macro-F1 | "
        f"{pct(metrics['rare']['accuracy'])} / {metrics['rare']['macro_f1'] or 0:.4f} |",
        f"| expected calibration error | {ece} |",
        f"| correct per 100,000 products | {metrics['per_100k_correct']:,.0f} |",
        "",
        "## Auto-approval",
        "",
        "| target precision | share auto-approved | confidence threshold |",
        "|---|---|---|",
    ]
    bounds = {r["target_precision"]: r for r in (intervals or {}).get("auto_approval", [])}
    for row in metrics["auto_approval"]:
        iv = bounds.get(row["target_precision"])
        share = pct(row["coverage"]) + (f" ({pct(iv['low'])} to {pct(iv['high'])})" if iv else "")
        lines.append(f"| {pct(row['target_precision'])} | {share} | {row['threshold']:.3f} |")
    lines += ["", "## Most confused pairs", ""]
    if metrics["confused_pairs"]:
        lines += ["| true | predicted | count |", "|---|---|---|"]
        lines += [f"| {r['true']} | {r['predicted']} | {r['count']} |" for r in metrics["confused_pairs"][:15]]
    else:
        lines.append("No product was misclassified.")
    lines += ["", "## Weakest classes", ""]
    worst = weakest_classes(metrics["per_class"])
    if worst:
        lines += [
            "Classes with F1 below 1, lowest first.",
            "",
            "| class | precision | recall | F1 | support | train examples |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} | "
            f"{r['train_count']} |"
            for r in worst
        ]
    else:
        lines.append(f"Every class has F1 1.000 on these {n:,} products.")
    if metrics.get("levels"):
        lines += _levels_markdown(metrics, pct)
    return "\n".join(lines) + "\n"


def _levels_markdown(metrics: dict[str, Any], pct: Any) -> list[str]:
    """A tree label's figures per level (taxonomy.level_metrics) and the paths backed off to their parent."""
    lv = metrics["levels"]
    lines = [
        "", "## Each level of the category tree", "",
        f"Hierarchical F1 {lv['hierarchical_f1']:.4f}. First wrong: products whose predicted path first differs "
        "at that level.", "",
        "| level | classes | accuracy | macro-F1 | first wrong here |", "|---|---|---|---|---|",
    ]
    for level in lv["levels"]:
        wrong = lv["first_wrong_level"].get(level["name"], {}).get("products", 0)
        lines.append(f"| {level['name']} | {level['classes']} | {pct(level['accuracy'])} | "
                     f"{level['macro_f1']:.4f} | {wrong} |")
    merged = (metrics.get("taxonomy") or {}).get("merged") or {}
    if merged:
        lines += ["", "Paths backed off to their parent (too few training products):", "",
                  "| path | backed off to | training products |", "|---|---|---|"]
        lines += [f"| {k} | {v['into']} | {v['products']} |" for k, v in merged.items()]
    return lines


def _macro_f1_weighted(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray, n_classes: int) -> float:
    """Macro-F1 over the classes present in ``y_true`` (as ``evaluate_predictions``), each product counted
    ``weights`` times; labels are integer codes below ``n_classes``."""
    right = y_true == y_pred
    tp = np.bincount(y_true[right], weights=weights[right], minlength=n_classes)
    support = np.bincount(y_true, weights=weights, minlength=n_classes)
    predicted = np.bincount(y_pred, weights=weights, minlength=n_classes)
    present = support > 0
    f1 = 2 * tp[present] / (support[present] + predicted[present])
    return float(f1.mean())


def paired_bootstrap(
    y_true: Sequence[str],
    pred_a: Sequence[str],
    pred_b: Sequence[str],
    *,
    strata: Sequence[Any] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """How sure is "model A beats model B" on this test set? Resamples the products with replacement (both models
    on the same resample) and returns, for accuracy and macro-F1 (classes present in ``y_true``), the observed
    difference A - B, its 95% percentile interval and the share of resamples in which A is ahead. Macro-F1 over
    ~120 classes, many with one or two test products, moves by a point when a handful of products change.

    With ``strata`` (e.g. which of several test sets a row comes from), each stratum is resampled on its own and
    the metrics are the mean of the per-stratum metrics: the interval of a mean over several splits."""
    labels = np.asarray(y_true, dtype=object)
    a, b = np.asarray(pred_a, dtype=object), np.asarray(pred_b, dtype=object)
    if not len(labels) == len(a) == len(b):
        raise ValueError("y_true, pred_a and pred_b must have the same length")
    codes, uniques = pd.factorize(np.concatenate([labels, a, b]), use_na_sentinel=False)
    n, k = len(labels), len(uniques)
    y, pa, pb = codes[:n], codes[n : 2 * n], codes[2 * n :]
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(m) for m in _masks(strata)]
    rng = np.random.default_rng(seed)

    def differences(weights: list[np.ndarray]) -> tuple[float, float]:
        acc = f1 = 0.0
        for rows, w in zip(groups, weights, strict=True):
            acc += float(w @ ((pa[rows] == y[rows]).astype(float) - (pb[rows] == y[rows])) / w.sum())
            f1 += _macro_f1_weighted(y[rows], pa[rows], w, k) - _macro_f1_weighted(y[rows], pb[rows], w, k)
        return acc / len(groups), f1 / len(groups)

    observed = differences([np.ones(len(rows)) for rows in groups])
    resampled = np.array(
        [
            differences(
                [rng.multinomial(len(rows), np.full(len(rows), 1.0 / len(rows))).astype(float) for rows in groups]
            )
            for _ in range(n_resamples)
        ]
    )
    return {
        metric: {
            "difference": observed[i],
            "low": float(np.quantile(resampled[:, i], 0.025)),
            "high": float(np.quantile(resampled[:, i], 0.975)),
            "a_ahead": float(np.mean(resampled[:, i] > 0)),
        }
        for i, metric in enumerate(("accuracy", "macro_f1"))
    }


def _masks(strata: Sequence[Any]) -> list[np.ndarray]:
    values = np.asarray(strata, dtype=object)
    return [values == v for v in pd.unique(values)]


def _exact_binomial(successes: int, n: int, level: float) -> tuple[float, float]:
    """Clopper-Pearson interval, only where it has a closed form and the bootstrap has none: no success or no
    failure (0 of n or n of n)."""
    tail = (1 - level) / 2
    if successes >= n:
        return float(tail ** (1 / n)), 1.0
    return 0.0, float(1 - tail ** (1 / n))


def bootstrap_intervals(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    confidence: Sequence[float],
    *,
    targets: Sequence[float] = PRECISION_TARGETS,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = INTERVAL_LEVEL,
) -> dict[str, Any]:
    """How much the test figures of one model would move on another test set of the same size: resamples the
    products with replacement (seeded) and returns the observed value and the ``level`` percentile interval of
    accuracy, macro-F1 (classes present, as ``evaluate_predictions``) and the auto-approvable share at each
    precision target (``coverage_at_precision``).

    The products of each true class are resampled among themselves (a stratified bootstrap), as the test split
    itself is drawn stratified by class. A plain resample would drop a rare class from about a third of the
    resamples, and macro-F1 over the classes present would then leave out its (often poor) F1: the resampled
    macro-F1 would sit above the observed one, and its interval could miss it altogether.

    When every product is right (or every one wrong, or every one approved), every resample gives the same
    value and the percentile interval shrinks to a point, which would read as certainty. For accuracy and the
    approvable share the interval is then the exact binomial one of that proportion (``method`` says which);
    macro-F1 has no such fallback and is marked ``collapsed``."""
    labels = np.asarray(y_true, dtype=object)
    pred = np.asarray(y_pred, dtype=object)
    conf = np.asarray(confidence, dtype=np.float64)
    n = len(labels)
    if not n == len(pred) == len(conf):
        raise ValueError("y_true, y_pred and confidence must have the same length")
    info = {"n": n, "n_resamples": n_resamples, "seed": seed, "level": level}
    if n == 0:
        empty = {"value": float("nan"), "low": float("nan"), "high": float("nan"), "method": "none", "collapsed": True}
        return {
            **info,
            "accuracy": dict(empty),
            "macro_f1": dict(empty),
            "auto_approval": [{"target_precision": t, **empty} for t in targets],
        }
    codes, uniques = pd.factorize(np.concatenate([labels, pred]), use_na_sentinel=False)
    y, p, k = codes[:n], codes[n:], len(uniques)
    correct = (y == p).astype(float)
    order = np.argsort(-conf, kind="stable")
    correct_sorted = correct[order]
    conf_sorted = conf[order]
    # As in coverage_at_precision: products tied on confidence are approved together.
    cut_ok = np.r_[conf_sorted[:-1] != conf_sorted[1:], True]
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(y == c) for c in np.unique(y)]
    acc, f1, cov = [], [], []
    # Chunks keep the (resamples x products) weight matrix small on a large test split.
    chunk = max(1, min(n_resamples, 1_000_000 // n))
    done = 0
    while done < n_resamples:
        m = min(chunk, n_resamples - done)
        weights = np.zeros((m, n))
        for rows in members:
            weights[:, rows] = rng.multinomial(len(rows), np.full(len(rows), 1.0 / len(rows)), size=m)
        acc.append(weights @ correct / n)
        f1.append([_macro_f1_weighted(y, p, w, k) for w in weights])
        approved = np.cumsum(weights[:, order], axis=1)
        right = np.cumsum(weights[:, order] * correct_sorted, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = right / approved
        cov.append(
            np.stack(
                [np.where((precision >= t) & cut_ok & (approved > 0), approved, 0).max(axis=1) / n for t in targets],
                axis=1,
            )
        )
        done += m
    acc_s, f1_s, cov_s = np.concatenate(acc), np.concatenate(f1), np.concatenate(cov)
    tail = (1 - level) / 2

    def interval(values: np.ndarray, observed: float, share_of: int | None) -> dict[str, Any]:
        low, high = (float(q) for q in np.quantile(values, [tail, 1 - tail]))
        collapsed = high - low == 0
        if collapsed and share_of is not None:
            low, high = _exact_binomial(round(observed * share_of), share_of, level)
            return {"value": observed, "low": low, "high": high, "method": "exact binomial", "collapsed": True}
        if not low <= observed <= high:
            # A skewed resampling distribution (F1 is a ratio) can leave the observed value just outside the
            # percentile interval; an interval that excludes the figure it qualifies would only confuse.
            low, high = min(low, observed), max(high, observed)
            return {
                "value": observed,
                "low": low,
                "high": high,
                "method": "bootstrap, widened to the observed value",
                "collapsed": False,
            }
        return {"value": observed, "low": low, "high": high, "method": "bootstrap", "collapsed": collapsed}

    observed_f1 = _macro_f1_weighted(y, p, np.ones(n), k)
    return {
        **info,
        "accuracy": interval(acc_s, float(correct.mean()), n),
        "macro_f1": interval(f1_s, observed_f1, None),
        "auto_approval": [
            {
                "target_precision": t,
                **interval(cov_s[:, i], coverage_at_precision(conf, correct, t)["coverage"], n),
            }
            for i, t in enumerate(targets)
        ],
    }
