"""The two real catalogs in other schemas than the fashion one (../shared/data/amazon-*), through the CLI with only
the label flag: the schema is inferred, and every verb reads the catalog the way train did."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from deepfusion.cli import app

pytestmark = pytest.mark.realdata
SHARED = Path(os.environ.get("DEEPFUSION_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TOYS = SHARED / "amazon-toys-uk" / "products.csv"
US = SHARED / "amazon-us-2020-sample" / "products.csv"
runner = CliRunner()
SLICE = 3000  # products of the toys catalog a test trains on (CI's time); the benchmark takes them all


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} not found: set DEEPFUSION_SHARED_DATA to the folder holding amazon-toys-uk/ and "
                    "amazon-us-2020-sample/ to run this test")
    return path


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_toys_catalog_with_only_the_label_flag(tmp_path: Path) -> None:
    label = "amazon_category_and_sub_category"
    run("eda", "--data", str(_need(TOYS)), "--label", label, "--out", str(tmp_path / "eda"), "--quiet")
    eda = json.loads((tmp_path / "eda" / "eda.json").read_text())
    assert eda["meta"]["schema"]["id"] == "uniq_id" and eda["target"]["column"] == label
    assert "price" in eda["quality"]["numeric"] and "number_available_in_stock" in eda["metadata"]
    # 690 products have no category: they are the only rows left out (a catalog without images is no problem).
    rejects = pd.read_csv(tmp_path / "eda" / "rejects.csv")
    assert len(rejects) == 690 and rejects["reason"].str.startswith("empty target").all()

    # The first rows of the file as they are, in a temporary folder.
    data = tmp_path / "toys.csv"
    data.write_text("\n".join(TOYS.read_text(encoding="utf-8").splitlines()[: SLICE + 1]) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    run("train", "--data", str(data), "--label", label, "--model", "fusion", "--preset", "small", "--out", str(out),
        "--quiet")
    schema = json.loads((out / "schema.json").read_text())
    # 2,444 manufacturers: read as words (text) beside the title, not as 2,444 categories.
    assert schema["text"] == ["product_name", "manufacturer"]
    assert "price" in schema["numeric"] and schema["image"] is None
    metrics = json.loads((out / "fusion" / "metrics.json").read_text())
    # Whole paths, many of them rare: a guess of the largest class is right about 10% of the time.
    assert metrics["accuracy"] >= 0.5, metrics["accuracy"]

    preds_path = tmp_path / "preds.csv"
    run("predict", str(out / "fusion"), "--data", str(data), "--out", str(preds_path), "--quiet")
    preds = pd.read_csv(preds_path, dtype=str, keep_default_na=False)
    table = pd.read_csv(data, sep=";", dtype=str, keep_default_na=False)
    assert preds.columns[0] == "uniq_id" and len(preds) == len(table)
    # Whole paths as written, or (a path too rare to learn, backed off to its parent) one of their prefixes.
    prefixes = {" > ".join(p.split(" > ")[:k]) for p in table[label] if p for k in range(1, p.count(" > ") + 2)}
    assert set(preds["prediction"]) <= prefixes and (preds["prediction"].isin(set(table[label]))).mean() > 0.5
    assert "prediction_level_1" in preds.columns


def test_us_catalog_with_long_text_and_unreachable_image_links(tmp_path: Path) -> None:
    data = _need(US)
    out = tmp_path / "run"
    run("train", "--data", str(data), "--label", "Category", "--model", "fusion", "--preset", "small", "--out",
        str(out), "--quiet")
    schema = json.loads((out / "schema.json").read_text())
    assert schema["id"] == "Uniq Id" and schema["text"][0] == "Product Name"
    assert schema["image"] == "Image"
    # "10.7 pounds", "12.8 ounces": a number on one scale, not a category of a few hundred strings.
    assert "Shipping Weight" in schema["numeric"] and "Selling Price" in schema["numeric"]
    config = json.loads((out / "fusion" / "config.json").read_text())
    assert "image" not in config["config"]["modalities"]  # no link can be reached here: the model reads the text
    preds_path = tmp_path / "preds.csv"
    run("predict", str(out / "fusion"), "--data", str(data), "--out", str(preds_path), "--quiet")
    preds = pd.read_csv(preds_path, dtype=str, keep_default_na=False)
    assert preds.columns[0] == "Uniq Id" and (preds["prediction"] != "").all()
    assert preds["inputs"].str.contains("title").mean() > 0.99
