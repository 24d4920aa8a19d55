"""The comparison report of a run: the three models side by side, in numbers, charts and plain words, each
figure with how sure it is.

Reads what ``runs.train_run`` wrote (each model's ``metrics.json``, ``test_predictions.csv`` and
``config.json``, the run's ``split.json`` and ``split.csv``) and writes ``report.html`` (self-contained: charts
and product thumbnails are embedded images) and ``comparison.json``.

Test figures come with seeded bootstrap intervals (``evaluation.bootstrap_intervals``); the page warns, before
any figure, when the test split is too small for "per 100,000" figures to mean much, when calibration did not
lower the calibration error, and when the models of the folder were not trained alike (preset, seed, test
products).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .catalog import find_image
from .evaluation import (
    BOOTSTRAP_RESAMPLES,
    INTERVAL_LEVEL,
    PRECISION_TARGETS,
    SMALL_TEST_SPLIT,
    bootstrap_intervals,
    calibration_helped,
    coverage_at_precision,
    paired_bootstrap,
    weakest_classes,
)
from .html_page import MISSING, Markup, card, escape, mini, page, pct, png_uri, table, thumbnail_uri
from .model_files import read_config

log = logging.getLogger(__name__)

MODEL_NAMES = ("metadata", "image", "fusion")
# The reference study's published test accuracy per model (frozen EfficientNet-B0, its own split), shown beside
# ours; docs/experiments.md, "the reference study on the fashion catalog".
REFERENCE = {"metadata": 0.81, "image": 0.857, "fusion": 0.864}
COLORS = {"metadata": "#8c8c8c", "image": "#4c78a8", "fusion": "#e45756"}
PER_100K = 100_000
CONFUSION_PAIRS = 12
EXAMPLES_PER_PAIR = 4
CONFUSION_THUMB = (60, 80)
SMALL_MARK = "⚠"


def _fig(width: float, height: float) -> Any:
    """A figure as pyplot would make it (saved with a tight bounding box), without pyplot's global state."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _png(fig: Any) -> str:
    return png_uri(fig, dpi=110, tight=True)


def load_run(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Each trained model of the run folder: its ``metrics``, test ``predictions`` and saved ``config`` (empty
    when the folder has no config.json)."""
    models = {}
    for name in MODEL_NAMES:
        folder = run_dir / name
        if (folder / "metrics.json").is_file():
            metrics = json.loads((folder / "metrics.json").read_text())
            # Labels are read as written: a class called "NA" or "None" is a class, not a missing value.
            preds = pd.read_csv(
                folder / "test_predictions.csv",
                dtype={"id": str, "true": str, "predicted": str},
                keep_default_na=False,
                na_values={"confidence": [""]},
            )
            config = read_config(folder) if (folder / "config.json").is_file() else {}
            models[name] = {"metrics": metrics, "predictions": preds, "config": config}
    return models


# ------------------------------------------------------------------------------------------ what made each model


def model_options(config: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The choices that made a model, from its config.json (falling back to metrics.json): what a reader needs
    to know before comparing it with another."""
    settings = config.get("config") or {}
    head = settings.get("head") or {}
    image_settings = settings.get("image") or {}
    fallback = config.get("fallback") or {}
    image = "image" in (settings.get("modalities") or metrics.get("modalities") or [])
    return {
        "preset": head.get("preset", metrics.get("preset")),
        "modalities": settings.get("modalities", metrics.get("modalities")),
        "seed": settings.get("seed"),
        "members": head.get("members"),
        "epochs (max)": head.get("epochs"),
        "best epoch": config.get("best_epoch", metrics.get("best_epoch")),
        "early-stopping patience": head.get("patience"),
        "hidden layers": head.get("hidden"),
        "dropout": head.get("dropout"),
        "modality dropout": head.get("modality_dropout"),
        "combiner": head.get("combiner"),
        "wide inputs": head.get("wide"),
        "class balance": head.get("balance"),
        "label smoothing": head.get("label_smoothing"),
        "learning rate": head.get("lr"),
        "weight decay": head.get("weight_decay"),
        "field_blanking": settings.get("field_blanking"),
        "title fallback": fallback.get("modalities") if fallback else bool(metrics.get("title_fallback")),
        "backbone": image_settings.get("backbone") if image else None,
        "image size": image_settings.get("size") if image else None,
        "augmented views": image_settings.get("views") if image else None,
        "fine-tuned backbone": bool(image_settings.get("finetune_blocks")) if image else None,
        "backbone weights": "the folder's own" if image and image_settings.get("weights") else None,
        "refit on train + val": bool(config.get("refit") or metrics.get("refit")),
        "temperature": config.get("temperature", metrics.get("temperature")),
    }


def _read_split_ids(run_dir: Path) -> set[str] | None:
    path = run_dir / "split.csv"
    if not path.is_file():
        return None
    split = pd.read_csv(path, dtype={"id": str, "split": str})
    return set(split.loc[split["split"] == "test", "id"])


def run_consistency(models: dict[str, dict[str, Any]], test_ids: set[str] | None) -> list[str]:
    """Warnings when the models of one run folder were not trained and tested alike: a comparison between
    them would then mix their differences with those of the set-up."""
    warnings = []
    options = {n: m["options"] for n, m in models.items()}
    for key, what in (("preset", "presets"), ("seed", "seeds"), ("refit on train + val", "refit settings")):
        values = {n: o.get(key) for n, o in options.items() if o.get(key) is not None}
        if len(set(map(str, values.values()))) > 1:
            listed = ", ".join(f"{n}: {v}" for n, v in values.items())
            warnings.append(
                f"The models were trained with different {what} ({listed}); their differences are "
                "not only those of their inputs."
            )
    ids = {n: frozenset(m["predictions"]["id"]) for n, m in models.items()}
    if len(set(ids.values())) > 1:
        sizes = ", ".join(f"{n}: {len(v):,}" for n, v in ids.items())
        warnings.append(
            f"The models were tested on different products ({sizes}): they come from different "
            "splits or runs, so their figures do not compare."
        )
    elif test_ids is not None and ids and not next(iter(ids.values())) <= test_ids:
        outside = len(next(iter(ids.values())) - test_ids)
        warnings.append(
            f"{outside:,} of the products the models were tested on are not in the test split of split.csv: "
            "the models come from another split than the one this folder records, and may have been trained on "
            "products they are tested on here."
        )
    missing = [n for n, m in models.items() if not m["config"]]
    if missing:
        warnings.append(
            f"No config.json for {', '.join(missing)}: the options that made "
            f"{'it' if len(missing) == 1 else 'them'} are unknown."
        )
    return warnings


# ------------------------------------------------------------------------------------------- figures and intervals


def _correct(preds: pd.DataFrame) -> np.ndarray:
    return (preds["true"] == preds["predicted"]).to_numpy(float)


def business_impact(
    models: dict[str, dict[str, Any]], *, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """Per 100,000 products: how many each model gets right, how many more than metadata-only, and how many
    can be auto-approved at each precision target (the rest go to manual review); each with its bootstrap
    interval (``interval``: [low, high]) from the test predictions."""
    out: dict[str, Any] = {}
    base = models.get("metadata")
    for name, m in models.items():
        preds = m["predictions"]
        correct, conf = _correct(preds), preds["confidence"].to_numpy(float)
        iv = bootstrap_intervals(preds["true"], preds["predicted"], conf, n_resamples=n_resamples, seed=seed)
        m["intervals"] = iv
        approvals = []
        for target, band in zip(PRECISION_TARGETS, iv["auto_approval"], strict=True):
            cov = coverage_at_precision(conf, correct, target)
            approvals.append(
                {
                    **cov,
                    "coverage_interval": [band["low"], band["high"]],
                    "interval_method": band["method"],
                    "auto_approved_per_100k": round(cov["coverage"] * PER_100K),
                    "manual_reviews_per_100k": round((1 - cov["coverage"]) * PER_100K),
                    "manual_reviews_per_100k_interval": [
                        round((1 - band["high"]) * PER_100K),
                        round((1 - band["low"]) * PER_100K),
                    ],
                }
            )
        acc = float(correct.mean()) if len(correct) else float("nan")
        extra, extra_iv = None, None
        if base is not None:
            extra = round((acc - float(_correct(base["predictions"]).mean())) * PER_100K)
            if name != "metadata":
                extra_iv = _paired_extra(preds, base["predictions"], n_resamples, seed)
            else:
                extra_iv = [0, 0]
        out[name] = {
            "n_test": len(preds),
            "correct_per_100k": round(acc * PER_100K),
            "correct_per_100k_interval": [
                round(iv["accuracy"]["low"] * PER_100K),
                round(iv["accuracy"]["high"] * PER_100K),
            ],
            "errors_per_100k": round((1 - acc) * PER_100K),
            "extra_correct_vs_metadata_per_100k": extra,
            "extra_correct_vs_metadata_per_100k_interval": extra_iv,
            "auto_approval": approvals,
        }
    return out


def _paired_extra(preds: pd.DataFrame, base: pd.DataFrame, n_resamples: int, seed: int) -> list[int] | None:
    """Interval of (accuracy - metadata accuracy) x 100,000 on the products both models were tested on, each
    resample drawing the same products for both: most of the two models' noise cancels."""
    both = preds.merge(base, on="id", suffixes=("", "_base"))
    if both.empty:
        return None
    diff = paired_bootstrap(
        both["true"], both["predicted"], both["predicted_base"], n_resamples=n_resamples, seed=seed
    )["accuracy"]
    return [round(diff["low"] * PER_100K), round(diff["high"] * PER_100K)]


def _bar_chart(models: dict[str, dict[str, Any]]) -> str:
    """Grouped by metric, one bar per model, with the bootstrap interval as an error bar."""
    names = list(models)
    metrics = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("weighted_f1", "weighted-F1"))
    fig = _fig(7.5, 3.6)
    ax = fig.subplots()
    x = np.arange(len(metrics))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        mm, iv = models[name]["metrics"], models[name]["intervals"]
        vals = np.array([mm[k] for k, _ in metrics], dtype=float)
        pos = x + (i - (len(names) - 1) / 2) * width
        bars = ax.bar(pos, vals, width * 0.95, color=COLORS.get(name), label=name)
        # Error bars only where there is an interval (not weighted-F1).
        has = np.array([k in iv for k, _ in metrics])
        low = np.array([iv[k]["low"] for k, _ in metrics if k in iv])
        high = np.array([iv[k]["high"] for k, _ in metrics if k in iv])
        ax.errorbar(
            pos[has],
            vals[has],
            yerr=[np.maximum(vals[has] - low, 0), np.maximum(high - vals[has], 0)],
            fmt="none",
            ecolor="black",
            elinewidth=1,
            capsize=3,
        )
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in vals], fontsize=7, padding=2, label_type="center", color="white")
        if name in REFERENCE:
            ax.plot(
                [pos[0] - width / 2, pos[0] + width / 2],
                [REFERENCE[name]] * 2,
                color="black",
                lw=2.5,
                label="reference study accuracy" if i == 0 else None,
            )
    ax.set_xticks(x, [label for _, label in metrics])
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score on the test split")
    ax.set_title(f"Model comparison (error bars: {INTERVAL_LEVEL:.0%} bootstrap interval)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _png(fig)


def _per_class_chart(models: dict[str, dict[str, Any]], top: int = 40) -> str:
    frames = {n: pd.DataFrame(m["metrics"]["per_class"]).set_index("class") for n, m in models.items()}
    last = list(frames)[-1]
    classes = frames[last].sort_values("support", ascending=False).index[:top]
    fig = _fig(12, 4.2)
    ax = fig.subplots()
    x = np.arange(len(classes))
    width = 0.8 / len(frames)
    for i, (name, frame) in enumerate(frames.items()):
        ax.bar(
            x + (i - (len(frames) - 1) / 2) * width,
            frame.reindex(classes)["f1"].fillna(0),
            width,
            label=name,
            color=COLORS.get(name),
        )
    support = frames[last].reindex(classes)["support"]
    ax.set_xticks(
        x, [f"{c} ({s:,})" for c, s in zip(classes, support, strict=True)], rotation=75, ha="right", fontsize=7
    )
    ax.set_ylabel("F1")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Per-class F1, the {len(classes)} most common categories in the test split (test products)")
    # Outside the axes: inside, it would hide the bars of the first classes, which are near 1.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1), frameon=False)
    return _png(fig)


def _reliability_chart(models: dict[str, dict[str, Any]]) -> str:
    """Confidence against accuracy per bin, and below it how many test products each bin holds: a point made of
    three products says little."""
    fig = _fig(5.2, 5.6)
    ax, counts = fig.subplots(2, 1, height_ratios=[3, 1.4], sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", color="black", lw=1, label="perfect calibration")
    width = 0.1 / (len(models) + 1)
    for i, (name, m) in enumerate(models.items()):
        bins = m["metrics"]["reliability"]
        before, after = m["metrics"].get("ece_uncalibrated"), m["metrics"]["ece"]
        ece = f"ECE {before:.3f} → {after:.3f}" if before is not None else f"ECE {after:.3f}"
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            marker="o",
            color=COLORS.get(name),
            label=f"{name} ({ece})",
        )
        pos = np.array([(b["lower"] + b["upper"]) / 2 for b in bins]) + (i - (len(models) - 1) / 2) * width
        bars = counts.bar(pos, [b["count"] for b in bins], width, color=COLORS.get(name))
        counts.bar_label(bars, labels=[f"{b['count']:,}" for b in bins], fontsize=6, padding=1, rotation=90)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(-0.02, 1.05)
    ax.set_title("Reliability diagram (calibrated; ECE before → after)", fontsize=10)
    # Below the figure: inside the axes it would hide points of the diagram.
    fig.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)
    counts.set_yscale("log")
    counts.set_ylim(0.7, max([b["count"] for m in models.values() for b in m["metrics"]["reliability"]] + [1]) * 30)
    counts.set_ylabel("test products\n(log scale)", fontsize=8)
    counts.set_xlabel("confidence (bins of 0.1)")
    return _png(fig)


def _coverage_chart(models: dict[str, dict[str, Any]]) -> str:
    fig = _fig(5.6, 4.2)
    ax = fig.subplots()
    for name, m in models.items():
        p = m["predictions"]
        order = np.argsort(-p["confidence"].to_numpy(), kind="stable")
        correct = _correct(p)[order]
        precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
        coverage = np.arange(1, len(correct) + 1) / len(correct)
        ax.plot(coverage, precision, color=COLORS.get(name), label=name)
    for t in PRECISION_TARGETS:
        ax.axhline(t, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("share of products auto-approved (most confident first)")
    ax.set_ylabel("precision of the approved products")
    ax.set_ylim(0.7, 1.005)
    ax.set_title("Coverage vs precision")
    ax.legend(fontsize=8)
    return _png(fig)


def _history_chart(models: dict[str, dict[str, Any]]) -> str | None:
    """Training loss and validation accuracy per epoch, from each model's config.json ``history``; the best
    epoch (the weights kept) is marked."""
    histories = {n: m["config"].get("history") or [] for n, m in models.items()}
    histories = {n: h for n, h in histories.items() if any("epoch" in r for r in h)}
    if not histories:
        return None
    fig = _fig(10.5, 3.6)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for name, rows in histories.items():
        frame = pd.DataFrame(rows)
        colour = COLORS.get(name)
        if "train_loss" in frame:
            loss_ax.plot(frame["epoch"], frame["train_loss"], color=colour, label=f"{name} train")
        if "val_loss" in frame:
            loss_ax.plot(frame["epoch"], frame["val_loss"], color=colour, ls="--", label=f"{name} validation")
        if "val_accuracy" in frame:
            acc_ax.plot(frame["epoch"], frame["val_accuracy"], color=colour, marker=".", label=name)
            best = models[name]["config"].get("best_epoch")
            hit = frame[frame["epoch"] == best]
            if not hit.empty:
                acc_ax.plot(hit["epoch"], hit["val_accuracy"], marker="*", ms=12, color=colour, ls="none")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.set_yscale("log")
    loss_ax.set_title("Loss per epoch (solid: train, dashed: validation)", fontsize=10)
    loss_ax.legend(fontsize=7, ncol=2)
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("validation accuracy")
    acc_ax.set_title("Validation accuracy per epoch (★ the epoch kept)", fontsize=10)
    acc_ax.legend(fontsize=8, loc="lower right")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    return _png(fig)


# ------------------------------------------------------------------------------------------------------- HTML


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str], cls: str = "") -> str:
    """A table of cells already written as HTML here (escaped where they hold catalog text); figures are
    right-aligned after the first column, except in the text tables ``options`` and ``ex``."""
    numeric = () if cls in ("options", "ex") else range(1, len(header))
    return table(header, [[Markup(c) for c in r] for r in rows], numeric=numeric, cls=cls)


def _pct(v: float | None) -> str:
    return pct(v, 2)


def _f4(v: float | None) -> str:
    return MISSING if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def _band(iv: dict[str, Any] | None, fmt: Any = _pct) -> str:
    """The interval of a figure, small and grey, under or beside it."""
    if not iv or iv.get("method") == "none":
        return ""
    mark = "*" if iv.get("collapsed") else ""
    return f"<span class='ci'>[{fmt(iv['low'])} – {fmt(iv['high'])}]{mark}</span>"


def _count_band(pair: list[int] | None, signed: bool = False) -> str:
    if not pair:
        return ""
    fmt = "{:+,}" if signed else "{:,}"
    return f"<span class='ci'>[{fmt.format(pair[0])} – {fmt.format(pair[1])}]</span>"


def _option_text(value: Any, key: str = "") -> str:
    if key == "image size" and isinstance(value, list | tuple):
        return "x".join(map(str, value))
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return "+".join(map(str, value)) if value else "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _images_dir(run_dir: Path, data: str | Path | None, split: dict[str, Any]) -> Path | None:
    """The catalog's images/ folder: next to styles.csv in ``data`` (a folder or the table file), else where the
    run's split.json says the catalog was."""
    source = data or split.get("source") or split.get("data")
    if not source:
        return None
    path = Path(source)
    if not path.is_absolute() and not path.exists():
        path = run_dir / path
    folder = path if path.is_dir() else path.parent
    return folder / "images" if (folder / "images").is_dir() else None


def _confusions_html(models: dict[str, dict[str, Any]], order: list[str], images_dir: Path | None) -> str:
    """Each model's most frequent mistakes (best model first), with its most confident wrong products as
    thumbnails: a reader sees whether the label, the photo or the model is at fault."""
    any_paths = any("image_path" in m["predictions"] for m in models.values())
    show_images = images_dir is not None or any_paths
    parts = []
    for name in order:
        model = models[name]
        pairs = model["metrics"].get("confused_pairs", [])[:CONFUSION_PAIRS]
        if not pairs:
            parts.append(f"<h3>{escape(name)}</h3><p class='note'>No test product was misclassified.</p>")
            continue
        preds = model["predictions"]
        rows = []
        for p in pairs:
            wrong = preds[(preds["true"] == p["true"]) & (preds["predicted"] == p["predicted"])]
            wrong = wrong.sort_values("confidence", ascending=False, kind="stable").head(EXAMPLES_PER_PAIR)
            examples = []
            for pid, conf, given in zip(wrong["id"], wrong["confidence"], _given_paths(wrong), strict=True):
                caption = f"{escape(pid)} · {conf:.2f}"
                if not show_images:
                    examples.append(f"<span class='ci'>{caption}</span>")
                    continue
                path = given if given is not None else find_image(images_dir, pid) if images_dir else None
                src = thumbnail_uri(path, "ok" if path is not None else "missing", CONFUSION_THUMB)
                examples.append(mini(src, str(pid), f"{pid} · {conf:.2f}", f"confidence {conf:.3f}", large=True))
            rows.append([escape(p["true"]), escape(p["predicted"]), p["count"], " ".join(examples)])
        parts.append(
            f"<h3>{escape(name)}</h3>"
            + _table(rows, ["true category", "predicted as", "test products", "examples (id · confidence)"], cls="ex")
        )
    note = (
        "Examples: the most confident mistakes of each pair; a red frame means the image is missing or unreadable."
        if show_images
        else "No example images: this run folder does not record where its catalog is (give the catalog folder "
        "to <code>write_report(run_dir, data=...)</code>), so ids and confidences are shown instead."
    )
    return f"<p class='note'>{note}</p>" + "".join(parts)


def _given_paths(preds: pd.DataFrame) -> list[Path | None]:
    """Image paths written in the predictions themselves, when the file has an image_path column."""
    if "image_path" not in preds:
        return [None] * len(preds)
    return [Path(p) if isinstance(p, str) and p else None for p in preds["image_path"]]


def write_report(
    run_dir: str | Path,
    data: str | Path | None = None,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Path:
    """Write ``report.html`` and ``comparison.json`` into ``run_dir``. ``data`` (the catalog folder or its
    styles table) lets the page show the misclassified products' images; without it the report looks for the
    catalog in split.json."""
    run_dir = Path(run_dir)
    models = load_run(run_dir)
    if not models:
        raise FileNotFoundError(f"No trained models with metrics.json in {run_dir}")
    split = json.loads((run_dir / "split.json").read_text()) if (run_dir / "split.json").exists() else {}
    for m in models.values():
        m["options"] = model_options(m["config"], m["metrics"])
    impact = business_impact(models, n_resamples=n_resamples, seed=seed)
    warnings = _warnings(models, run_consistency(models, _read_split_ids(run_dir)))
    comparison = {
        "reference_study_accuracy": REFERENCE,
        "split": split,
        "models": {
            n: {
                **{
                    k: m["metrics"].get(k)
                    for k in (
                        "accuracy",
                        "macro_f1",
                        "weighted_f1",
                        "frequent",
                        "rare",
                        "ece",
                        "ece_uncalibrated",
                        "modalities",
                        "preset",
                        "fit_seconds",
                        "refit",
                        "n",
                    )
                },
                "calibration_helped": calibration_helped(m["metrics"]),
                "intervals": m["intervals"],
                "options": m["options"],
            }
            for n, m in models.items()
        },
        "business_impact": impact,
        "ablation": models.get("fusion", {}).get("metrics", {}).get("ablation"),
        "warnings": [w["text"] for w in warnings],
    }
    (run_dir / "comparison.json").write_text(json.dumps(comparison, indent=2, default=str))
    page = _page(models, impact, split, warnings, comparison["ablation"], _images_dir(run_dir, data, split))
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    log.info("wrote %s", path)
    return path


def _warnings(models: dict[str, dict[str, Any]], consistency: list[str]) -> list[dict[str, str]]:
    """What a reader must know before trusting the figures, as plain text and as HTML."""
    out = []
    n = min(len(m["predictions"]) for m in models.values())
    if n < SMALL_TEST_SPLIT:
        text = (
            f"Small test split: {n:,} products (under {SMALL_TEST_SPLIT:,}). One product moves accuracy by "
            f"{100 / max(n, 1):.2f} points, so every figure below carries a wide interval; the figures "
            f'"per 100,000" ({SMALL_MARK}) scale these {n:,} products up {PER_100K / max(n, 1):,.0f}-fold '
            "and are no more certain than they are."
        )
        head, rest = text.split(". ", 1)
        out.append({"text": text, "html": f"<b>{SMALL_MARK} {escape(head)}.</b> {escape(rest)}"})
    flawless = [name for name, m in models.items() if len(m["predictions"]) and _correct(m["predictions"]).all()]
    if flawless:
        low = models[flawless[0]]["intervals"]["accuracy"]["low"]
        text = (
            f"No test product was misclassified by the {', '.join(flawless)} model"
            f"{'s' if len(flawless) > 1 else ''}. Resampling cannot vary a flawless set, so the accuracy and "
            "auto-approval intervals marked * are exact binomial (Clopper-Pearson) ones and macro-F1 has no real "
            f"interval: 100% accuracy on these products is consistent with a true accuracy as low as {_pct(low)}."
        )
        out.append({"text": text, "html": escape(text)})
    for name, m in models.items():
        if calibration_helped(m["metrics"]) is False:
            mm = m["metrics"]
            text = (
                f"Calibration did not help the {name} model: its expected calibration error on the test split is "
                f"{mm['ece']:.3f} after temperature scaling against {mm['ece_uncalibrated']:.3f} before. Its "
                "confidences (and the auto-approval thresholds set on them) are no better calibrated than the "
                "raw network's."
            )
            head, rest = text.split(": ", 1)
            out.append({"text": text, "html": f"<span class='flag'>{escape(head)}:</span> {escape(rest)}"})
    out += [{"text": t, "html": escape(t)} for t in consistency]
    return out


def _levels_html(models: dict[str, dict[str, Any]]) -> str:
    """For a tree label (taxonomy.py): each model's accuracy and macro-F1 per level, hierarchical F1, where the
    wrong paths first go wrong, and the rare paths that were backed off to their parent."""
    tree = {n: m["metrics"] for n, m in models.items() if m["metrics"].get("levels")}
    if not tree:
        return ""
    rows = []
    for n, mm in tree.items():
        lv = mm["levels"]
        for level in lv["levels"]:
            wrong = lv["first_wrong_level"].get(level["name"], {})
            rows.append([n, escape(level["name"]), f"{level['classes']:,}", _pct(level["accuracy"]),
                         _f4(level["macro_f1"]), f"{wrong.get('products', 0):,}", _f4(lv["hierarchical_f1"])])
    first = next(iter(tree.values()))["taxonomy"]
    merged = first.get("merged") or {}
    merged_rows = [[escape(k), escape(v["into"]), f"{v['products']:,}"] for k, v in merged.items()]
    merged_html = (
        f"<p class='note'>{len(merged)} paths had fewer than {first['min_class_size']} training products and "
        "were backed off to their parent (the model predicts the parent for them):</p>"
        + _table(merged_rows, ["path", "backed off to", "training products"])
        if merged
        else "<p class='note'>No path was backed off.</p>"
    )
    depth = f", depth {first['depth']}" if first.get("depth") else ""
    return (
        "<section><h2>Category tree: each level</h2><p class='note'>The label is a path of "
        f"{len(first['level_names'])} levels ({first['paths']:,} paths in the training taxonomy{depth}; decoding: "
        f"{escape(first['decode'])}). Every predicted path is one of the training taxonomy's. Accuracy and macro-F1 of "
        "each level's value over the test products whose path reaches that level; first wrong: products whose "
        "predicted path first differs at that level; hierarchical F1 over the paths' ancestors.</p>"
        + _table(rows, ["model", "level", "classes", "accuracy", "macro-F1", "first wrong here", "hierarchical F1"])
        + merged_html
        + "</section>"
    )


def _page(
    models: dict[str, dict[str, Any]],
    impact: dict[str, Any],
    split: dict[str, Any],
    warnings: list[dict[str, str]],
    ablation: list[dict[str, Any]] | None,
    images_dir: Path | None,
) -> str:
    n_test = min(len(m["predictions"]) for m in models.values())
    small = n_test < SMALL_TEST_SPLIT
    mark = f" <span class='flag' title='small test split: see the warning at the top'>{SMALL_MARK}</span>"
    mark = mark if small else ""
    best = max(models, key=lambda n: models[n]["metrics"]["accuracy"])
    order = [best, *[n for n in models if n != best]]
    warnings_html = (
        "<section class='warnings'><h2>Read this first</h2><ul>"
        + "".join(f"<li>{w['html']}</li>" for w in warnings)
        + "</ul></section>"
        if warnings
        else ""
    )
    small_note = (
        f"<p class='note flag'>{SMALL_MARK} scaled from {n_test:,} test products: see the warning at the top.</p>"
        if small
        else ""
    )
    body = f"""
{warnings_html}
<div class="cards" style="margin-top:18px">{_cards_html(models, impact, best, mark)}</div>
<section><h2>In plain words</h2>{_plain_words(models, impact, mark)}</section>
<section><h2>The three models side by side</h2>{_models_html(models)}</section>
<section><h2>What it means at catalog scale</h2>{_impact_table(impact, mark)}{small_note}
<div class="row"><img alt="coverage vs precision" src="{_coverage_chart(models)}">
<img alt="reliability diagram" src="{_reliability_chart(models)}"></div></section>
{_ablation_html(models, ablation)}
{_levels_html(models)}
<section><h2>Per-class F1</h2><img alt="per-class F1" src="{_per_class_chart(models)}">{_weak_table(models)}</section>
<section><h2>What the models still confuse</h2>{_confusions_html(models, order, images_dir)}</section>
<section><h2>Training curves</h2>{_history_html(models)}</section>
<section><h2>What made each model</h2><p class="note">From each model folder's config.json.</p>
{_options_table(models)}</section>
"""
    sizes = " · ".join(f"{k} {v:,}" for k, v in split.get("sizes", {}).items())
    return page(
        "DeepFusion run report", "DeepFusion — model comparison", body,
        subtitle=[str(split.get("catalog", "")),
                  f"Leakage-safe split (duplicate products kept on one side, seed {split.get('seed', '')}): {sizes}"],
    )


def _cards_html(models: dict[str, dict[str, Any]], impact: dict[str, Any], best: str, mark: str) -> str:
    """The best model's headline figures, each with its interval."""
    bm, biv = models[best]["metrics"], models[best]["intervals"]
    cards = [
        (_pct(bm["accuracy"]), _band(biv["accuracy"]), f"test accuracy ({best})"),
        (f"{bm['macro_f1']:.3f}", _band(biv["macro_f1"], lambda v: f"{v:.3f}"), f"macro-F1 ({best})"),
        (f"{bm['n']:,}" + mark, "", "test products"),
    ]
    if "metadata" in impact and best != "metadata":
        cards.append(
            (
                f"{impact[best]['extra_correct_vs_metadata_per_100k']:+,}" + mark,
                _count_band(impact[best]["extra_correct_vs_metadata_per_100k_interval"], signed=True),
                "more products right per 100k than metadata-only",
            )
        )
    a98 = next((a for a in impact[best]["auto_approval"] if a["target_precision"] == 0.98), None)
    if a98:
        cards.append(
            (
                _pct(a98["coverage"]) + mark,
                _band(_iv(a98)) + f"<span class='ci'>{a98['manual_reviews_per_100k']:,} reviews per 100k "
                f"{_count_band(a98['manual_reviews_per_100k_interval'])}</span>",
                "auto-approvable at 98% precision",
            )
        )
    return "".join(card(Markup(v), label, band=Markup(ci)) for v, ci, label in cards)


def _models_html(models: dict[str, dict[str, Any]]) -> str:
    """Each model's figures with their intervals, beside the reference study's, and the comparison chart."""
    rows = []
    for n, m in models.items():
        mm, iv = m["metrics"], m["intervals"]
        before = mm.get("ece_uncalibrated")
        ece = f"{before:.3f} → {mm['ece']:.3f}" if before is not None else f"{mm['ece']:.3f}"
        if calibration_helped(mm) is False:
            ece = f"<span class='flag'>{ece} (did not help)</span>"
        rows.append([
            n, escape("+".join(mm.get("modalities", [n]))), f"{_pct(mm['accuracy'])}<br>{_band(iv['accuracy'])}",
            _pct(REFERENCE.get(n)), f"{mm['macro_f1']:.4f}<br>{_band(iv['macro_f1'], lambda v: f'{v:.4f}')}",
            f"{mm['weighted_f1']:.4f}", _pct(mm["frequent"]["accuracy"]), _f4(mm["frequent"]["macro_f1"]),
            _pct(mm["rare"]["accuracy"]), _f4(mm["rare"]["macro_f1"]), ece,
        ])
    header = ["model", "inputs", "accuracy", "reference study", "macro-F1", "weighted-F1", "frequent acc.",
              "frequent macro-F1", "rare acc.", "rare macro-F1", "ECE before → after calibration"]
    resamples = next(iter(models.values()))["intervals"]["n_resamples"]
    interval_note = (
        f"<p class='note'>In brackets: the {INTERVAL_LEVEL:.0%} bootstrap interval ({resamples:,} "
        "resamples of the test products, each class among its own products as the split is stratified; seeded), "
        "i.e. how far the figure could move on another test set of the same size; * marks an exact binomial "
        "interval where resampling cannot vary. The difference from metadata-only resamples the same products "
        "for both models.</p>"
    )
    refit = {n: m["metrics"]["refit"] for n, m in models.items() if m["metrics"].get("refit")}
    refit_note = (
        f"<p class='note'>Refit: {', '.join(refit)} trained again on train + validation "
        f"({next(iter(refit.values()))['products']:,} products) after early stopping and calibration on "
        "validation; the test split stayed held out.</p>"
        if refit
        else ""
    )
    return f"""{_table(rows, header)}{interval_note}
<p class="note">Frequent classes have ≥ 100 training examples, rare ones fewer. Reference study: frozen
EfficientNet-B0, metadata-only {pct(REFERENCE["metadata"])}, image-only {pct(REFERENCE["image"])}, fusion
{pct(REFERENCE["fusion"])} (its own split).</p>{refit_note}
<img alt="model comparison chart" src="{_bar_chart(models)}">"""


def _impact_table(impact: dict[str, Any], mark: str) -> str:
    """Right and wrong products per 100,000 and auto-approval at each precision target, per model."""
    rows = []
    for n, imp in impact.items():
        extra = imp["extra_correct_vs_metadata_per_100k"]
        cells = [
            n,
            f"{imp['correct_per_100k']:,}{mark}<br>{_count_band(imp['correct_per_100k_interval'])}",
            f"{imp['errors_per_100k']:,}{mark}",
            MISSING
            if extra is None or n == "metadata"
            else f"{extra:+,}{mark}<br>{_count_band(imp['extra_correct_vs_metadata_per_100k_interval'], signed=True)}",
        ]
        for a in imp["auto_approval"]:
            cells.append(
                f"{_pct(a['coverage'])} {_band(_iv(a))}<br>{a['manual_reviews_per_100k']:,} reviews{mark} "
                f"{_count_band(a['manual_reviews_per_100k_interval'])}"
            )
        rows.append(cells)
    header = ["model", "right per 100k", "wrong per 100k", "vs metadata-only",
              *[f"auto-approved at {int(t * 100)}% precision (reviews per 100k)" for t in PRECISION_TARGETS]]
    return _table(rows, header)


def _ablation_html(models: dict[str, dict[str, Any]], ablation: list[dict[str, Any]] | None) -> str:
    """The fusion model on test products with inputs emptied, beside the TF-IDF + SVM baseline."""
    if not ablation:
        return ""
    rows = [
        [
            escape("+".join(r["modalities"])),
            escape(", ".join(r["withheld"]) or "none"),
            _pct(r["accuracy"]),
            f"{r['macro_f1']:.4f}",
            _pct(r["baseline_accuracy"]) if r.get("baseline_accuracy") is not None else "",
        ]
        for r in ablation
    ]
    fallback = (
        "; a product without a title is answered by its second network, trained without titles"
        if models["fusion"]["metrics"].get("title_fallback")
        else ""
    )
    return (
        "<section><h2>Missing inputs (fusion model)</h2><p class='note'>The same trained fusion model on the "
        "test products with some inputs emptied in the data, as a product arrives without them: the fields "
        "of a withheld input are blank, and the last row blanks each metadata field at random. The model was "
        f"trained on blanked copies of its training products and with modality dropout so that it copes{fallback}. "
        "The baseline is a TF-IDF + linear SVM fitted on the same text inputs and tested on the same "
        "blanked products.</p>"
        + _table(rows, ["inputs used", "withheld", "accuracy", "macro-F1", "TF-IDF + SVM baseline"])
        + "</section>"
    )


def _weak_table(models: dict[str, dict[str, Any]]) -> str:
    rows = []
    for n, m in models.items():
        weak = weakest_classes(m["metrics"]["per_class"], limit=8)
        text = ", ".join(f"{escape(r['class'])} {r['f1']:.2f} ({r['support']})" for r in weak)
        rows.append([n, text or "none: every class has F1 1.000"])
    return _table(rows, ["model", "weakest classes: F1 (test products), lowest first; only F1 < 1"], cls="options")


def _history_html(models: dict[str, dict[str, Any]]) -> str:
    history = _history_chart(models)
    if not history:
        return "<p class='note'>No per-epoch history in the models' config.json.</p>"
    return f"<img alt='training curves' src='{history}'>"


def _options_table(models: dict[str, dict[str, Any]]) -> str:
    """What made each model, from its config.json; preset and seed flagged where the models differ."""
    rows = []
    for key in next(iter(models.values()))["options"]:
        values = [_option_text(m["options"].get(key), key) for m in models.values()]
        if all(v == MISSING for v in values):
            continue
        differs = key in ("preset", "seed") and len(set(values)) > 1
        cells = [f"<span class='flag'>{escape(v)}</span>" if differs else escape(v) for v in values]
        rows.append([escape(key), *cells])
    return _table(rows, ["option", *models], cls="options")


def _iv(approval: dict[str, Any]) -> dict[str, Any]:
    low, high = approval["coverage_interval"]
    return {"low": low, "high": high, "collapsed": approval["interval_method"] == "exact binomial"}


def _plain_words(models: dict[str, dict[str, Any]], impact: dict[str, Any], mark: str) -> str:
    parts = []
    for n, imp in impact.items():
        a98 = next(a for a in imp["auto_approval"] if a["target_precision"] == 0.98)
        low, high = imp["correct_per_100k_interval"]
        r_low, r_high = a98["manual_reviews_per_100k_interval"]
        parts.append(
            f"<li>The <b>{n}</b> model puts {imp['correct_per_100k']:,}{mark} of every 100,000 products in the right "
            f"category (plausibly {low:,} to {high:,}). Trusting it only where it is confident, "
            f"{_pct(a98['coverage'])} of products can be approved automatically with 98% of those approvals "
            f"correct, leaving {a98['manual_reviews_per_100k']:,}{mark} per 100,000 (plausibly {r_low:,} to "
            f"{r_high:,}) for a person to check.</li>"
        )
    if "metadata" in impact:
        for n in ("image", "fusion"):
            if n in impact and impact[n]["extra_correct_vs_metadata_per_100k"] is not None:
                band = impact[n]["extra_correct_vs_metadata_per_100k_interval"]
                sure = ""
                if band:
                    sure = (
                        " — more than metadata alone on this evidence"
                        if band[0] > 0
                        else " — not clearly different from metadata alone on this test split"
                        if band[0] <= 0 <= band[1]
                        else " — fewer than metadata alone on this evidence"
                    )
                parts.append(
                    f"<li>Compared with metadata alone, the {n} model gets "
                    f"{impact[n]['extra_correct_vs_metadata_per_100k']:+,}{mark} more products right per "
                    f"100,000 {_count_band(band, signed=True)}{sure}.</li>"
                )
    return "<ul>" + "".join(parts) + "</ul>"
