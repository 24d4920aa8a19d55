"""The run report, on run folders written here in the layout ``runs.train_run`` leaves (metrics.json from
``evaluate_predictions``, test_predictions.csv, config.json with its history, split.json, split.csv) for a
tiny generated catalog, so each case (small split, calibration that did not help, models trained differently,
mistakes to show with their images) is set up on purpose; the page is rendered in headless Chromium when it
is installed (``apt-get install -y chromium``)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import make_catalog
from PIL import Image

from deepfusion.evaluation import evaluate_predictions, summary_markdown
from deepfusion.reports import write_report

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
MODALITIES = {"metadata": ["metadata"], "image": ["image"], "fusion": ["metadata", "title", "image"]}


def noisy_predictions(y: np.ndarray, error: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels with about ``error`` of them wrong (always to another class), and confidences that are higher
    for the right ones, as a trained model's are."""
    classes = np.array(sorted(set(y)), dtype=object)
    wrong = rng.random(len(y)) < error
    other = np.array([rng.choice(classes[classes != c]) for c in y], dtype=object)
    pred = np.where(wrong, other, y)
    conf = np.where(wrong, rng.uniform(0.35, 0.8, len(y)), rng.uniform(0.7, 1.0, len(y)))
    return pred, conf


def write_model(folder: Path, test: pd.DataFrame, pred: np.ndarray, conf: np.ndarray, *, name: str,
                preset: str = "small", seed: int = 42, ece_before: float | None = None,
                train_counts: dict[str, int] | None = None) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    y = test["articleType"].to_numpy(dtype=object)
    metrics = evaluate_predictions(y, pred, conf, train_counts or {})
    metrics.update({"model": name, "modalities": MODALITIES[name], "preset": preset, "split": "test",
                    "ece_uncalibrated": metrics["ece"] * 2 if ece_before is None else ece_before,
                    "temperature": 1.3, "title_fallback": name == "fusion", "refit": None, "best_epoch": 4})
    if name == "fusion":
        metrics["ablation"] = [
            {"modalities": ["metadata"], "withheld": ["title", "image"], "accuracy": 0.5, "macro_f1": 0.4,
             "weighted_f1": 0.45, "ece": 0.1, "baseline_accuracy": 0.55},
            {"modalities": MODALITIES["fusion"], "withheld": ["each metadata field with chance 0.3"],
             "accuracy": 0.8, "macro_f1": 0.7, "weighted_f1": 0.75, "ece": 0.05, "baseline_accuracy": None},
        ]
    history = [{"epoch": e, "train_loss": 1.5 / e, "train_accuracy": 1 - 0.5 / e, "val_loss": 1.6 / e,
                "val_accuracy": 1 - 0.6 / e, "val_macro_f1": 1 - 0.7 / e, "val_score": 1 - 0.65 / e}
               for e in range(1, 6)]
    config = {"format_version": 1, "modalities": MODALITIES[name], "seed": seed, "temperature": 1.3,
              "best_epoch": 4, "history": history, "refit": None, "field_blanking": 1.0,
              "head": {"preset": preset, "members": 1, "epochs": 5, "hidden": [64], "dropout": 0.0,
                       "modality_dropout": 0.0, "combiner": "concat", "wide": ["title"], "balance": "none"},
              "backbone": "efficientnet_lite0" if "image" in MODALITIES[name] else None,
              "image_size": [64, 48] if "image" in MODALITIES[name] else None, "augment_views": 0}
    if name == "fusion":
        config["fallback"] = {"modalities": ["metadata", "image"]}
    pd.DataFrame({"id": test["id"], "true": y, "predicted": pred, "confidence": conf}).to_csv(
        folder / "test_predictions.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "summary.md").write_text(summary_markdown(metrics, f"{name} model"))
    return metrics


def make_run(root: Path, catalog: Path, *, errors: dict[str, float], n_test: int | None = None,
             seed: int = 0, **per_model: dict[str, Any]) -> Path:
    """A run folder over ``catalog``'s products: ``n_test`` of them (all by default) in the test split, one
    model per entry of ``errors`` with about that error rate; ``per_model[name]`` overrides write_model's
    keywords for one model."""
    styles = pd.read_csv(catalog / "styles.csv", dtype=str, on_bad_lines="skip")
    styles = styles.dropna(subset=["articleType"]).drop_duplicates("id")
    styles = styles.sample(frac=1, random_state=seed).reset_index(drop=True)  # every class in a small test split
    test = styles.iloc[: n_test or len(styles)].reset_index(drop=True)
    root.mkdir(parents=True, exist_ok=True)
    split = pd.DataFrame({"id": styles["id"], "split": ["test"] * len(test) + ["train"] * (len(styles) - len(test))})
    split.to_csv(root / "split.csv", index=False)
    (root / "split.json").write_text(json.dumps({"seed": 42, "sizes": {"train": len(styles) - len(test), "val": 0,
                                                                       "test": len(test)},
                                                 "catalog": f"{len(styles)} products (test fixture)"}))
    rng = np.random.default_rng(seed)
    for name, error in errors.items():
        pred, conf = noisy_predictions(test["articleType"].to_numpy(dtype=object), error, rng)
        write_model(root / name, test, pred, conf, name=name, **per_model.get(name, {}))
    return root


@pytest.fixture
def small_catalog(tmp_path: Path) -> Path:
    return make_catalog(tmp_path / "catalog", n_per_class=15)


def page_of(run: Path, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    path = write_report(run, n_resamples=300, **kwargs)
    return path.read_text(encoding="utf-8"), json.loads((run / "comparison.json").read_text())


def text_of(page: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


# ------------------------------------------------------------------------------------------------- tests


def test_every_figure_has_an_interval_around_it(small_catalog: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", small_catalog, errors={"metadata": 0.3, "image": 0.15, "fusion": 0.05})
    page, comparison = page_of(run)
    for name, model in comparison["models"].items():
        iv = model["intervals"]
        assert iv["n_resamples"] == 300 and iv["level"] == 0.95
        for key in ("accuracy", "macro_f1"):
            assert iv[key]["low"] <= model[key] <= iv[key]["high"], (name, key)
            assert iv[key]["value"] == pytest.approx(model[key])
        impact = comparison["business_impact"][name]
        low, high = impact["correct_per_100k_interval"]
        assert low <= impact["correct_per_100k"] <= high
        for approval in impact["auto_approval"]:
            c_low, c_high = approval["coverage_interval"]
            assert c_low <= approval["coverage"] <= c_high
            r_low, r_high = approval["manual_reviews_per_100k_interval"]
            assert r_low <= approval["manual_reviews_per_100k"] <= r_high
    extra = comparison["business_impact"]["fusion"]
    e_low, e_high = extra["extra_correct_vs_metadata_per_100k_interval"]
    assert e_low <= extra["extra_correct_vs_metadata_per_100k"] <= e_high
    acc = comparison["models"]["fusion"]["intervals"]["accuracy"]
    assert f"[{100 * acc['low']:.2f}% – {100 * acc['high']:.2f}%]" in page
    # Seeded: the same folder gives the same intervals.
    assert page_of(run)[1]["models"] == comparison["models"]


def test_small_test_split_is_flagged_with_its_intervals(small_catalog: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", small_catalog, n_test=50, errors={"metadata": 0.3, "image": 0.0, "fusion": 0.0})
    page, comparison = page_of(run)
    text = text_of(page)
    assert "Small test split: 50 products (under 2,000)" in text
    assert any("Small test split" in w for w in comparison["warnings"])
    assert "⚠ scaled from 50 test products" in text
    # 100% auto-approvable with no review: never without its interval, which a flawless set cannot shrink to
    # a point (exact binomial lower bound for 50 of 50).
    approval = comparison["business_impact"]["fusion"]["auto_approval"][1]
    assert approval["coverage"] == 1.0 and approval["manual_reviews_per_100k"] == 0
    low, high = approval["coverage_interval"]
    assert low == pytest.approx(0.025 ** (1 / 50)) and high == 1.0
    assert approval["interval_method"] == "exact binomial"
    card = re.search(r'<div class="v">100\.00%[^<]*<span[^>]*>⚠</span></div>(.*?)<div class="l">auto-approvable',
                     page, re.S)
    assert card, "the auto-approvable card lost its small-split mark"
    assert f"[{100 * low:.2f}% – 100.00%]*" in card.group(1) and "0 reviews per 100k" in card.group(1)
    assert "No test product was misclassified by the image, fusion models" in text


def test_no_small_split_warning_on_a_large_test_split(tmp_path: Path) -> None:
    catalog = make_catalog(tmp_path / "big", n_per_class=520, messy=False)
    run = make_run(tmp_path / "run", catalog, errors={"metadata": 0.3, "fusion": 0.05})
    page, comparison = page_of(run)
    assert comparison["models"]["fusion"]["n"] >= 2000
    assert "Small test split" not in page and "⚠" not in page
    # More products, narrower intervals than on the 60-product split of the same models.
    small = make_run(tmp_path / "small", catalog, n_test=60, errors={"metadata": 0.3, "fusion": 0.05})
    _, few = page_of(small)
    for name in ("metadata", "fusion"):
        wide, narrow = few["models"][name]["intervals"]["accuracy"], comparison["models"][name]["intervals"]["accuracy"]
        assert narrow["high"] - narrow["low"] < (wide["high"] - wide["low"]) / 2


def test_calibration_that_did_not_help_is_flagged(small_catalog: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", small_catalog, errors={"metadata": 0.3, "fusion": 0.1},
                   fusion={"ece_before": 0.001})
    page, comparison = page_of(run)
    assert comparison["models"]["fusion"]["calibration_helped"] is False
    assert comparison["models"]["metadata"]["calibration_helped"] is True
    text = text_of(page)
    assert "Calibration did not help the fusion model" in text
    assert "Calibration did not help the metadata model" not in text
    assert "(did not help)" in text
    summary = (run / "fusion" / "summary.md").read_text()
    assert "calibration did not help" in summary
    assert "calibration did not help" not in (run / "metadata" / "summary.md").read_text()


def test_models_trained_differently_are_warned_about(small_catalog: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", small_catalog, errors={"metadata": 0.3, "image": 0.2, "fusion": 0.1},
                   fusion={"preset": "regularized"})
    page, comparison = page_of(run)
    assert any("different presets (metadata: small, image: small, fusion: regularized)" in w
               for w in comparison["warnings"])
    assert comparison["models"]["fusion"]["options"]["preset"] == "regularized"
    # One model tested on other products: another split.
    other = make_run(tmp_path / "other", small_catalog, n_test=30, errors={"image": 0.2})
    shutil.rmtree(run / "image")
    shutil.copytree(other / "image", run / "image")
    _, comparison = page_of(run)
    assert any("tested on different products" in w for w in comparison["warnings"])
    # Alike: no such warning.
    same = make_run(tmp_path / "same", small_catalog, errors={"metadata": 0.3, "fusion": 0.1})
    _, comparison = page_of(same)
    assert not any("different" in w for w in comparison["warnings"])


def test_options_and_training_curves_are_shown(small_catalog: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", small_catalog, errors={"metadata": 0.3, "image": 0.2, "fusion": 0.1})
    page, comparison = page_of(run)
    options = comparison["models"]["fusion"]["options"]
    assert options["preset"] == "small" and options["modalities"] == ["metadata", "title", "image"]
    assert options["field_blanking"] == 1.0 and options["members"] == 1
    assert options["title fallback"] == ["metadata", "image"]
    text = text_of(page)
    assert "What made each model" in text and "field_blanking" in text and "64x48" in text
    assert re.search(r"<img alt='training curves' src='data:image/png;base64,", page)
    # The ablation's random-blanking row is still there.
    assert "each metadata field with chance 0.3" in text


def test_confusions_come_with_the_products_images(tmp_path: Path) -> None:
    catalog = make_catalog(tmp_path / "catalog", n_per_class=15)  # messy: 5003 has no image file
    run = make_run(tmp_path / "run", catalog, errors={"metadata": 0.4, "fusion": 0.2})
    preds = pd.read_csv(run / "fusion" / "test_predictions.csv", dtype={"id": str})
    # Make sure one mistake is a product without an image.
    row = preds.index[preds["id"] == "5003"][0]
    preds.loc[row, "predicted"] = "Tshirts"
    preds.loc[row, "confidence"] = 0.99
    preds.to_csv(run / "fusion" / "test_predictions.csv", index=False)
    metrics = json.loads((run / "fusion" / "metrics.json").read_text())
    pairs = preds[preds["true"] != preds["predicted"]].value_counts(["true", "predicted"]).reset_index(name="count")
    metrics["confused_pairs"] = pairs.to_dict(orient="records")
    (run / "fusion" / "metrics.json").write_text(json.dumps(metrics))

    page, _ = page_of(run, data=catalog)
    section = page.split("What the models still confuse", 1)[1].split("<section", 1)[0]
    q = "['\"]"  # either quote
    thumbs = re.findall(rf"<span class={q}mini[^>]*><img src={q}(data:image/[a-z]+);base64,[^'\"]+{q} "
                        rf"alt={q}product (\w+){q}", section)
    assert thumbs, "no thumbnails beside the confused pairs"
    kinds = dict((pid, kind) for kind, pid in thumbs)
    assert kinds["5003"] == "data:image/png"  # the placeholder of a missing image
    assert sum(k == "data:image/jpeg" for k in kinds.values()) >= 3  # real photos
    # Without the catalog's location: ids and confidences, and a note saying why.
    page, _ = page_of(run)
    section = page.split("What the models still confuse", 1)[1].split("<section", 1)[0]
    assert "No example images" in section and "<img" not in section and "5003 · 0.99" in section


# --------------------------------------------------------------------------------------------- rendering


def find_chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def test_report_renders_in_headless_chromium(small_catalog: Path, tmp_path: Path) -> None:
    exe = find_chromium()
    if exe is None:
        pytest.skip("Chromium not installed: run `apt-get update && apt-get install -y chromium` (Debian) to run "
                    "the headless render test of the run report")
    run = make_run(tmp_path / "run", small_catalog, n_test=50, errors={"metadata": 0.3, "image": 0.1, "fusion": 0.05},
                   fusion={"ece_before": 0.001})
    page_path = write_report(run, data=small_catalog, n_resamples=200)
    shot = tmp_path / "report.png"
    subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1280,5000", page_path.resolve().as_uri()], capture_output=True, timeout=180)
    assert shot.is_file(), "Chromium wrote no screenshot"
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        colours = {c: n for n, c in rgb.getcolors(maxcolors=1 << 22) or []}
        assert len(colours) > 1000, "the screenshot looks blank"
        # The fusion model's colour (#e45756) covers a large area only when its charts are drawn.
        assert colours.get((0xE4, 0x57, 0x56), 0) > 5000, "charts not visible in the screenshot"
        # The warnings box (#fff4e5) is at the top, above the figures.
        top = {c for _, c in rgb.crop((0, 0, 1280, 400)).getcolors(maxcolors=1 << 22) or []}
        assert (0xFF, 0xF4, 0xE5) in top, "the warnings are not at the top of the page"
    page = page_path.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page, "the page must open offline"
    sources = re.findall(r"src=['\"](data:image/[^'\"]+)['\"]", page)
    assert len(sources) >= 8
    for src in sources:
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.load()
