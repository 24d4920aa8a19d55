"""The comparison report of a run: the three models side by side, in numbers, charts and plain words.

Reads what ``runs.train_run`` wrote (each model's ``metrics.json`` and ``test_predictions.csv``) and writes
``report.html`` (self-contained: charts are embedded PNGs) and ``comparison.json``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .evaluation import PRECISION_TARGETS, coverage_at_precision  # noqa: E402

log = logging.getLogger(__name__)

# The reference study (frozen EfficientNet-B0) on this data set: test accuracy per model.
REFERENCE = {"metadata": 0.81, "image": 0.857, "fusion": 0.864}
COLORS = {"metadata": "#8c8c8c", "image": "#4c78a8", "fusion": "#e45756"}
PER_100K = 100_000


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def load_run(run_dir: Path) -> dict[str, dict[str, Any]]:
    models = {}
    for name in ("metadata", "image", "fusion"):
        folder = run_dir / name
        if (folder / "metrics.json").is_file():
            metrics = json.loads((folder / "metrics.json").read_text())
            preds = pd.read_csv(folder / "test_predictions.csv", dtype={"id": str, "true": str, "predicted": str})
            models[name] = {"metrics": metrics, "predictions": preds}
    return models


def business_impact(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per 100,000 products: how many each model gets right, how many more than metadata-only, and how many
    can be auto-approved at each precision target (the rest go to manual review)."""
    out: dict[str, Any] = {}
    base = models.get("metadata", {}).get("metrics", {}).get("accuracy")
    for name, m in models.items():
        preds = m["predictions"]
        correct = (preds["true"] == preds["predicted"]).to_numpy(float)
        conf = preds["confidence"].to_numpy(float)
        approvals = []
        for target in PRECISION_TARGETS:
            cov = coverage_at_precision(conf, correct, target)
            approvals.append(
                {
                    **cov,
                    "auto_approved_per_100k": round(cov["coverage"] * PER_100K),
                    "manual_reviews_per_100k": round((1 - cov["coverage"]) * PER_100K),
                }
            )
        acc = m["metrics"]["accuracy"]
        out[name] = {
            "correct_per_100k": round(acc * PER_100K),
            "errors_per_100k": round((1 - acc) * PER_100K),
            "extra_correct_vs_metadata_per_100k": round((acc - base) * PER_100K) if base is not None else None,
            "auto_approval": approvals,
        }
    return out


def _bar_chart(models: dict[str, dict[str, Any]]) -> str:
    names = list(models)
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    x = np.arange(len(names))
    for i, (key, label) in enumerate(
        (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("weighted_f1", "weighted-F1"))
    ):
        vals = [models[n]["metrics"][key] for n in names]
        bars = ax.bar(x + (i - 1) * 0.26, vals, 0.25, label=label, color=["#4c78a8", "#f58518", "#54a24b"][i])
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in vals], fontsize=7, padding=2)
    ref = [REFERENCE.get(n, np.nan) for n in names]
    ax.scatter(x - 0.26, ref, marker="_", s=500, color="black", zorder=5, label="reference study accuracy")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score on the test split")
    ax.set_title("Model comparison")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _png(fig)


def _per_class_chart(models: dict[str, dict[str, Any]], top: int = 40) -> str:
    frames = {n: pd.DataFrame(m["metrics"]["per_class"]).set_index("class") for n, m in models.items()}
    last = list(frames)[-1]
    classes = frames[last].sort_values("support", ascending=False).index[:top]
    fig, ax = plt.subplots(figsize=(12, 4.2))
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
    ax.set_xticks(x, classes, rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("F1")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Per-class F1, the {len(classes)} most common categories in the test split")
    ax.legend(fontsize=8)
    return _png(fig)


def _reliability_chart(models: dict[str, dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], ls="--", color="black", lw=1, label="perfect calibration")
    for name, m in models.items():
        bins = m["metrics"]["reliability"]
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            marker="o",
            color=COLORS.get(name),
            label=f"{name} (ECE {m['metrics']['ece']:.3f})",
        )
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram (calibrated)")
    ax.legend(fontsize=8)
    return _png(fig)


def _coverage_chart(models: dict[str, dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    for name, m in models.items():
        p = m["predictions"]
        order = np.argsort(-p["confidence"].to_numpy(), kind="stable")
        correct = (p["true"] == p["predicted"]).to_numpy(float)[order]
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


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.2f}%"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#222}
header{background:#1f2d3d;color:#fff;padding:24px 40px}header h1{margin:0 0 6px;font-size:26px}
main{padding:10px 40px 40px;max-width:1250px}section{background:#fff;border-radius:8px;padding:18px 24px;
margin:18px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}h2{margin-top:0;font-size:19px}
.cards{display:flex;gap:14px;flex-wrap:wrap}.card{background:#fff;border-radius:8px;padding:14px 18px;
min-width:170px;box-shadow:0 1px 3px rgba(0,0,0,.08)}.card .v{font-size:26px;font-weight:600}
.card .l{font-size:12px;color:#666}table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border-bottom:1px solid #e3e3e3;padding:5px 10px;text-align:right}th{background:#f0f2f5}
td:first-child,th:first-child{text-align:left}img{max-width:100%}.row{display:flex;gap:20px;flex-wrap:wrap}
.note{color:#555;font-size:13px}
"""


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` and ``comparison.json`` into ``run_dir``."""
    run_dir = Path(run_dir)
    models = load_run(run_dir)
    if not models:
        raise FileNotFoundError(f"No trained models with metrics.json in {run_dir}")
    split = json.loads((run_dir / "split.json").read_text()) if (run_dir / "split.json").exists() else {}
    impact = business_impact(models)
    comparison = {
        "reference_study_accuracy": REFERENCE,
        "split": split,
        "models": {
            n: {
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
            }
            for n, m in models.items()
        },
        "business_impact": impact,
        "ablation": models.get("fusion", {}).get("metrics", {}).get("ablation"),
    }
    (run_dir / "comparison.json").write_text(json.dumps(comparison, indent=2, default=str))

    best = max(models, key=lambda n: models[n]["metrics"]["accuracy"])
    bm = models[best]["metrics"]
    cards = [
        (_pct(bm["accuracy"]), f"test accuracy ({best})"),
        (f"{bm['macro_f1']:.3f}", f"macro-F1 ({best})"),
        (f"{bm['n']:,}", "test products"),
    ]
    if "metadata" in impact and best != "metadata":
        cards.append(
            (
                f"+{impact[best]['extra_correct_vs_metadata_per_100k']:,}",
                "more products right per 100k than metadata-only",
            )
        )
    a98 = next((a for a in impact[best]["auto_approval"] if a["target_precision"] == 0.98), None)
    if a98:
        cards.append((_pct(a98["coverage"]), "auto-approvable at 98% precision"))

    rows = []
    for n, m in models.items():
        mm = m["metrics"]
        rows.append(
            [
                n,
                "+".join(mm.get("modalities", [n])),
                _pct(mm["accuracy"]),
                _pct(REFERENCE.get(n)),
                f"{mm['macro_f1']:.4f}",
                f"{mm['weighted_f1']:.4f}",
                _pct(mm["frequent"]["accuracy"]),
                f"{mm['frequent']['macro_f1'] or 0:.4f}",
                _pct(mm["rare"]["accuracy"]),
                f"{mm['rare']['macro_f1'] or 0:.4f}",
                f"{mm.get('ece_uncalibrated', float('nan')):.3f} → {mm['ece']:.3f}",
            ]
        )
    model_table = _table(
        rows,
        [
            "model",
            "inputs",
            "accuracy",
            "reference study",
            "macro-F1",
            "weighted-F1",
            "frequent acc.",
            "frequent macro-F1",
            "rare acc.",
            "rare macro-F1",
            "ECE before → after calibration",
        ],
    )

    impact_rows = []
    for n, imp in impact.items():
        cells = [
            n,
            f"{imp['correct_per_100k']:,}",
            f"{imp['errors_per_100k']:,}",
            "—"
            if imp["extra_correct_vs_metadata_per_100k"] is None
            else f"{imp['extra_correct_vs_metadata_per_100k']:+,}",
        ]
        for a in imp["auto_approval"]:
            cells.append(f"{_pct(a['coverage'])} ({a['manual_reviews_per_100k']:,} reviews)")
        impact_rows.append(cells)
    impact_table = _table(
        impact_rows,
        [
            "model",
            "right per 100k",
            "wrong per 100k",
            "vs metadata-only",
            *[f"auto-approved at {int(t * 100)}% precision" for t in PRECISION_TARGETS],
        ],
    )
    words = _plain_words(models, impact)
    refit = {n: m["metrics"]["refit"] for n, m in models.items() if m["metrics"].get("refit")}
    refit_note = (
        f"<p class='note'>Refit: {', '.join(refit)} trained again on train + validation "
        f"({next(iter(refit.values()))['products']:,} products) after early stopping and calibration on "
        "validation; the test split stayed held out.</p>"
        if refit
        else ""
    )

    ablation_html = ""
    if comparison["ablation"]:
        ab_rows = [
            [
                "+".join(r["modalities"]),
                ", ".join(r["withheld"]) or "none",
                _pct(r["accuracy"]),
                f"{r['macro_f1']:.4f}",
                _pct(r["baseline_accuracy"]) if r.get("baseline_accuracy") is not None else "",
            ]
            for r in comparison["ablation"]
        ]
        ablation_html = (
            "<section><h2>Missing inputs (fusion model)</h2><p class='note'>The same trained fusion model on the "
            "test products with some inputs emptied in the data, as a product arrives without them: the fields "
            "of a withheld input are blank, and the last row blanks each metadata field at random. The model was "
            "trained on blanked copies of its training products and with modality dropout so that it copes"
            + (
                "; a product without a title is answered by its second network, trained without titles"
                if models["fusion"]["metrics"].get("title_fallback")
                else ""
            )
            + ". The baseline is a TF-IDF + linear SVM fitted on the same text inputs and tested on the same "
            "blanked products.</p>"
            + _table(ab_rows, ["inputs used", "withheld", "accuracy", "macro-F1", "TF-IDF + SVM baseline"])
            + "</section>"
        )

    confusions = ""
    if "fusion" in models or best in models:
        pairs = models[best]["metrics"]["confused_pairs"][:15]
        confusions = _table(
            [[html.escape(p["true"]), html.escape(p["predicted"]), p["count"]] for p in pairs],
            ["true category", "predicted as", "test products"],
        )

    cards_html = "".join(
        f'<div class="card"><div class="v">{v}</div><div class="l">{html.escape(lab)}</div></div>' for v, lab in cards
    )
    sizes = " · ".join(f"{k} {v:,}" for k, v in split.get("sizes", {}).items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>DeepFusion run report</title>
<style>{CSS}</style></head><body>
<header><h1>DeepFusion — model comparison</h1><div>{html.escape(str(split.get("catalog", "")))}</div>
<div>Leakage-safe split (duplicate products kept on one side, seed {split.get("seed", "")}): {sizes}</div>
</header>
<main>
<div class="cards" style="margin-top:18px">{cards_html}</div>
<section><h2>In plain words</h2>{words}</section>
<section><h2>The three models side by side</h2>{model_table}
<p class="note">Frequent classes have ≥ 100 training examples, rare ones fewer. Reference study: frozen
EfficientNet-B0, metadata-only 81%, image-only 85.7%, fusion 86.4% (its own split).</p>{refit_note}
<img alt="model comparison chart" src="{_bar_chart(models)}"></section>
<section><h2>What it means at catalog scale</h2>{impact_table}
<div class="row"><img alt="coverage vs precision" src="{_coverage_chart(models)}">
<img alt="reliability diagram" src="{_reliability_chart(models)}"></div></section>
{ablation_html}
<section><h2>Per-class F1</h2><img alt="per-class F1" src="{_per_class_chart(models)}"></section>
<section><h2>What the best model ({best}) still confuses</h2>{confusions}</section>
</main></body></html>"""
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    log.info("wrote %s", path)
    return path


def _plain_words(models: dict[str, dict[str, Any]], impact: dict[str, Any]) -> str:
    parts = []
    for n, imp in impact.items():
        a98 = next(a for a in imp["auto_approval"] if a["target_precision"] == 0.98)
        parts.append(
            f"<li>The <b>{n}</b> model puts {imp['correct_per_100k']:,} of every 100,000 products in the right "
            f"category. Trusting it only where it is confident, {_pct(a98['coverage'])} of products can be "
            f"approved automatically with 98% of those approvals correct, leaving "
            f"{a98['manual_reviews_per_100k']:,} per 100,000 for a person to check.</li>"
        )
    if "metadata" in impact:
        for n in ("image", "fusion"):
            if n in impact and impact[n]["extra_correct_vs_metadata_per_100k"] is not None:
                parts.append(
                    f"<li>Compared with metadata alone, the {n} model gets "
                    f"{impact[n]['extra_correct_vs_metadata_per_100k']:+,} more products right per "
                    "100,000.</li>"
                )
    return "<ul>" + "".join(parts) + "</ul>"
