"""Fusion model, the three-way run with its report, missing modalities and the Python API."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_catalog
from PIL import Image
from typer.testing import CliRunner

from deepfusion import Predictor, load_catalog
from deepfusion.cli import app

SMALL = (64, 48)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def assert_renders_with_charts(page: Path, work: Path) -> None:
    """Screenshot the report in headless Chromium and check that its charts were drawn."""
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
    if exe is None:
        pytest.skip("Chromium not installed (`apt-get install -y chromium`): report render check skipped")
    work.mkdir(parents=True, exist_ok=True)
    shot = work / "report.png"
    subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={work / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1280,3000", page.resolve().as_uri()], capture_output=True, timeout=180)
    assert shot.is_file(), "Chromium wrote no screenshot"
    with Image.open(shot) as im:
        colours = dict((c, n) for n, c in im.convert("RGB").getcolors(maxcolors=1 << 22) or [])
    assert len(colours) > 500, "the screenshot looks blank"
    # Bars and lines of the fusion model are drawn in #e45756; only rendered charts cover many pixels with it.
    assert colours.get((0xE4, 0x57, 0x56), 0) > 2000, "charts not visible in the screenshot"
    for src in re.findall(r'src="(data:image/png;base64,[^"]+)"', page.read_text()):
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.load()


@pytest.fixture(scope="module")
def run_all(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``deepfusion train --model all`` on the messy tiny catalog, shared by the tests that read its output."""
    root = tmp_path_factory.mktemp("run_all")
    catalog = make_catalog(root / "catalog")
    out = root / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(catalog), "--model", "all", "--preset", "small",
                                      "--image-size", "64x48", "--out", str(out), "--quiet"],
                                env={"DEEPFUSION_CACHE": str(root / "cache")})
    assert result.exit_code == 0, result.output
    return {"root": root, "catalog": catalog, "run": out}


def test_train_all_writes_three_models_and_a_report(run_all: dict[str, Path], tmp_path: Path) -> None:
    out, catalog_dir = run_all["run"], run_all["catalog"]
    for name in ("metadata", "image", "fusion"):
        assert (out / name / "model.safetensors").is_file()
        assert (out / name / "test_predictions.csv").is_file()
    comparison = json.loads((out / "comparison.json").read_text())
    assert set(comparison["models"]) == {"metadata", "image", "fusion"}
    for name, summary in comparison["models"].items():
        # The comparison reports each model's own test metrics, which agree with its saved test predictions.
        metrics = json.loads((out / name / "metrics.json").read_text())
        preds = pd.read_csv(out / name / "test_predictions.csv", dtype=str)
        assert summary["accuracy"] == pytest.approx(metrics["accuracy"])
        assert summary["accuracy"] == pytest.approx((preds["true"] == preds["predicted"]).mean())
        assert summary["n"] == metrics["n"] == len(preds)
    assert comparison["models"]["fusion"]["modalities"] == ["metadata", "title", "image"]
    ablation = {"+".join(r["modalities"]): r for r in comparison["ablation"]}
    assert len(ablation) == 7 and "image" in ablation and "metadata+title+image" in ablation
    impact = comparison["business_impact"]["fusion"]
    assert [a["target_precision"] for a in impact["auto_approval"]] == [0.95, 0.98, 0.99]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "reference study" in page

    # The fusion model still predicts a product whose image is missing or corrupt.
    preds_path = tmp_path / "preds.csv"
    result = CliRunner().invoke(app, ["predict", str(out / "fusion"), "--data", str(catalog_dir),
                                      "--out", str(preds_path), "--quiet"],
                                env={"DEEPFUSION_CACHE": str(run_all["root"] / "cache")})
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(preds_path, dtype={"id": str}).set_index("id")
    assert {"5003", "5004", "5005"} <= set(preds.index)
    # The image-only model cannot: those products are rejected with their reason.
    result = CliRunner().invoke(app, ["predict", str(out / "image"), "--data", str(catalog_dir),
                                      "--out", str(tmp_path / "img.csv"), "--quiet"],
                                env={"DEEPFUSION_CACHE": str(run_all["root"] / "cache")})
    assert result.exit_code == 0, result.output
    image_preds = pd.read_csv(tmp_path / "img.csv", dtype={"id": str})
    assert not {"5003", "5004", "5005"} & set(image_preds["id"])
    rejects = pd.read_csv(tmp_path / "img.rejects.csv", dtype=str).set_index("id")
    assert "missing image" in rejects.loc["5003", "reason"] and rejects.loc["5003", "action"] == "dropped"


def test_report_renders_with_charts(run_all: dict[str, Path], tmp_path: Path) -> None:
    """Needs Chromium (skipped without it); the checks above do not."""
    assert_renders_with_charts(run_all["run"] / "report.html", tmp_path / "shot")


@pytest.mark.parametrize("combiner", ["concat", "gated"])
def test_python_api_fit_predict_save_load(clean_catalog_dir: Path, cache_dir: Path, tmp_path: Path,
                                          combiner: str) -> None:
    frame = load_catalog(clean_catalog_dir, progress=False).products
    frame = frame.rename(columns={"image_path": "picture"})[
        ["id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "year", "usage",
         "productDisplayName", "picture"]]
    train, val = frame.iloc[::2], frame.iloc[1::2]
    predictor = Predictor(["metadata", "title", "image"], preset="small", image_size=SMALL, progress=False,
                          head={"combiner": combiner, "epochs": 150, "modality_dropout": 0.2})
    predictor.fit(train, val, image_column="picture")
    proba = predictor.predict_proba(val, image_column="picture")
    assert proba.shape == (len(val), 4) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert predictor.evaluate(val, image_column="picture")["accuracy"] >= 0.9  # the toy classes are easy

    predictor.save(tmp_path / "model")
    assert not list((tmp_path / "model").glob("*.pkl"))
    loaded = Predictor.load(tmp_path / "model")
    np.testing.assert_allclose(loaded.predict_proba(val, image_column="picture"), proba, atol=1e-6)

    # Missing modalities: no image and no title still give a prediction.
    bare = val.assign(picture=None, productDisplayName=None)
    labels = loaded.predict(bare, image_column="picture")
    assert len(labels) == len(val) and set(labels) <= set(loaded.classes_)
    only_image = val.drop(columns=["gender", "masterCategory", "subCategory", "productDisplayName"])
    assert (loaded.predict(only_image, image_column="picture") == val["articleType"].to_numpy()).mean() >= 0.75


def test_ensemble_predictor_saves_and_loads(clean_catalog_dir: Path, tmp_path: Path) -> None:
    frame = load_catalog(clean_catalog_dir, progress=False).products
    train, val = frame.iloc[::2], frame.iloc[1::2]
    predictor = Predictor(["metadata", "title"], preset="small", progress=False, head={"members": 2, "epochs": 60})
    predictor.fit(train, val)
    proba = predictor.predict_proba(val)
    assert predictor.evaluate(val)["accuracy"] >= 0.9
    predictor.save(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["config"]["head"]["members"] == 2 and len(config["member_best_epochs"]) == 2
    loaded = Predictor.load(tmp_path / "model")
    np.testing.assert_allclose(loaded.predict_proba(val), proba, atol=1e-6)
