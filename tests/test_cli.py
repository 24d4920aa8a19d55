"""The CLI contract on tiny generated catalogs: train, evaluate, predict, and clean errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from deepfusion.cli import app

runner = CliRunner()


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_train_evaluate_predict_metadata(catalog_dir: Path, clean_catalog_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    text = run(
        "train", "--data", str(catalog_dir), "--model", "metadata", "--preset", "small", "--out", str(out), "--quiet"
    )
    assert "metadata  test accuracy" in text
    model = out / "metadata"
    for name in ("model.safetensors", "config.json", "preprocessing.json", "metrics.json", "summary.md"):
        assert (model / name).is_file(), name
    assert not list(model.glob("*.pkl")) and not list(model.glob("*.pt"))
    metrics = json.loads((model / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "weighted_f1", "per_class", "frequent", "rare", "confused_pairs", "ece"):
        assert key in metrics
    rejects = pd.read_csv(out / "rejects.csv", dtype=str)
    assert {"5006", "5008", "1001"} <= set(rejects["id"])
    split = pd.read_csv(out / "split.csv", dtype=str)
    assert set(split["split"]) == {"train", "val", "test"}

    # A catalog the model never saw, without labels: predict still works.
    unseen = tmp_path / "unseen"
    shutil.copytree(clean_catalog_dir, unseen)
    table = pd.read_csv(unseen / "styles.csv", dtype=str)
    table.drop(columns=["articleType"]).to_csv(unseen / "styles.csv", index=False)
    preds_path = tmp_path / "preds.csv"
    run("predict", str(model), "--data", str(unseen), "--out", str(preds_path), "--quiet")
    preds = pd.read_csv(preds_path, dtype={"id": str})
    assert list(preds.columns[:3]) == ["id", "prediction", "confidence"]
    assert len(preds) == len(table)
    assert preds["confidence"].between(0, 1).all()

    # A labelled unseen catalog: evaluate; the metadata model still predicts products whose image is missing.
    run("evaluate", str(model), "--data", str(catalog_dir), "--out", str(tmp_path / "eval"), "--quiet")
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["n"] == len(table) + 6  # 5001-5005 and 5007 carry a label and a usable id
    preds_path = tmp_path / "preds2.parquet"
    run("predict", str(model), "--data", str(catalog_dir), "--out", str(preds_path), "--quiet")
    assert "5003" in set(pd.read_parquet(preds_path)["id"])  # image missing, still predicted


def test_user_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "error: Data folder" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["predict", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 2 and "not a DeepFusion model folder" in result.output
    (tmp_path / "styles.csv").write_text("id,articleType\n1,Tshirts\n")
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--preset", "huge", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "lacks required column" in result.output


def test_bad_option_values(catalog_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--data", str(catalog_dir), "--preset", "huge", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Unknown preset 'huge'" in result.output
    result = runner.invoke(
        app, ["train", "--data", str(catalog_dir), "--model", "fusion", "--modalities", "smell", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "Unknown modalities" in result.output
