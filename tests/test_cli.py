"""The CLI contract on tiny generated catalogs: train, evaluate, predict, and clean errors."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import HEADER
from typer.testing import CliRunner

from deepfusion.cli import _foreign_entries, app

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
    # Everything train wrote is known to --overwrite, which refuses to delete anything else.
    assert _foreign_entries(out) == []

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
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--preset", "small", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "lacks required column" in result.output


def test_bad_option_values(catalog_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(catalog_dir), "--preset", "huge", "--out", str(out)])
    assert result.exit_code == 2
    assert "'huge' is not one of: small, overfit, regularized" in result.output
    result = runner.invoke(
        app, ["train", "--data", str(catalog_dir), "--model", "fusion", "--modalities", "smell", "--out", str(out)]
    )
    assert result.exit_code == 2 and "Unknown modalities" in result.output
    assert not out.exists()  # refused by the parser: nothing was read or written


# ------------------------------------------------------------------------------------------------ run folders


@pytest.fixture
def fake_train_run(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace the training job with one that writes a tiny run, so these tests check the CLI alone, in a second."""
    import deepfusion.runs

    calls: list[dict[str, Any]] = []

    def train_run(data: str, out: Path, **kwargs: Any) -> dict[str, dict[str, Any]]:
        calls.append({"data": data, "out": out, **kwargs})
        (out / "metadata").mkdir(parents=True)
        (out / "metadata" / "metrics.json").write_text("{}")
        (out / "split.csv").write_text("id,split\n")
        return {"metadata": {"accuracy": 1.0, "macro_f1": 1.0, "weighted_f1": 1.0}}

    monkeypatch.setattr(deepfusion.runs, "train_run", train_run)
    return calls


def _old_run(out: Path) -> Path:
    """A folder as an earlier `train --model all` leaves it."""
    for name in ("metadata", "image", "fusion"):
        (out / name).mkdir(parents=True)
        for file in ("model.safetensors", "config.json", "metrics.json", "summary.md", "test_predictions.csv"):
            (out / name / file).write_text("old")
    for file in ("split.csv", "split.json", "rejects.csv", "comparison.json", "report.html"):
        (out / file).write_text("old")
    return out


def test_train_defaults_to_all_models(fake_train_run: list[dict[str, Any]], tmp_path: Path) -> None:
    run("train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--quiet")
    assert fake_train_run[0]["model"] == "all"


def test_existing_run_folder_needs_overwrite(fake_train_run: list[dict[str, Any]], tmp_path: Path) -> None:
    out = _old_run(tmp_path / "run")
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(out), "--model", "metadata"])
    assert result.exit_code == 2, result.output
    assert f"{out} exists; pass --overwrite to replace it, or choose a new folder" in " ".join(result.output.split())
    assert not fake_train_run and (out / "fusion" / "config.json").read_text() == "old"

    # --overwrite: the old models and report go first, so the new run is not mixed with the old one.
    run("train", "--data", str(tmp_path), "--out", str(out), "--model", "metadata", "--overwrite", "--quiet")
    assert sorted(p.name for p in out.iterdir()) == ["metadata", "split.csv"]
    assert sorted(p.name for p in (out / "metadata").iterdir()) == ["metrics.json"]

    # An empty folder is as good as a new one.
    (tmp_path / "empty").mkdir()
    run("train", "--data", str(tmp_path), "--out", str(tmp_path / "empty"), "--quiet")


@pytest.mark.parametrize("foreign", ["notes.txt", "fusion/notes.txt", "mine/", "fusion/sub/"])
def test_overwrite_never_deletes_other_files(
    fake_train_run: list[dict[str, Any]], tmp_path: Path, foreign: str
) -> None:
    out = _old_run(tmp_path / "run")
    path = out / foreign
    path.mkdir(parents=True) if foreign.endswith("/") else path.write_text("mine")
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(out), "--overwrite"])
    assert result.exit_code == 2, result.output
    assert "did not write" in result.output and foreign in result.output
    assert path.exists() and (out / "report.html").exists() and (out / "image" / "config.json").exists()
    assert not fake_train_run


def test_overwrite_does_not_follow_links(fake_train_run: list[dict[str, Any]], tmp_path: Path) -> None:
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "model.safetensors").write_text("mine")
    out = tmp_path / "run"
    out.mkdir()
    (out / "fusion").symlink_to(elsewhere, target_is_directory=True)
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(out), "--overwrite"])
    assert result.exit_code == 2 and "fusion" in result.output
    assert (elsewhere / "model.safetensors").read_text() == "mine"


def test_out_that_is_a_file(fake_train_run: list[dict[str, Any]], tmp_path: Path) -> None:
    (tmp_path / "run").write_text("mine")
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--overwrite"])
    assert result.exit_code == 2 and "is not a folder" in result.output
    assert (tmp_path / "run").read_text() == "mine"


# ------------------------------------------------------------------------------------------------ errors, logs


def test_unusable_catalog_still_leaves_its_rejects(tmp_path: Path) -> None:
    """Every row rejected: the load fails, and the user still gets the report of what was wrong with each row."""
    from deepfusion.catalog import CatalogError

    if not hasattr(CatalogError, "write_rejects"):
        pytest.skip("this catalog.py's CatalogError carries no rejected rows")
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = ["7001,Men,Apparel,Topwear,,Red,Summer,2011,Casual,No target", "7002,Men,Apparel"]
    (data / "styles.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), "--preset", "small", "--quiet"])
    assert result.exit_code == 2, result.output
    assert "No usable product" in result.output and "Traceback" not in result.output
    rejects = pd.read_csv(out / "rejects.csv", dtype=str)
    assert set(rejects["id"]) == {"7001", "7002"}
    assert str(out / "rejects.csv") in result.output


def test_least_populated_class_warning_is_silenced(tmp_path: Path) -> None:
    """scikit-learn warns about every rare class when splitting a real catalog; the CLI keeps it off the console,
    and only that warning."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run("train", "--help")  # the app's callback configures logging and warnings before any command runs
        list(StratifiedKFold(n_splits=3).split(np.zeros((7, 1)), [0, 0, 0, 0, 0, 0, 1]))
        warnings.warn("some other warning", UserWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert messages == ["some other warning"], messages


def test_serve_on_a_port_in_use_says_so(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["serve", str(tmp_path), "--port", str(port)])
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert f"Cannot listen on 127.0.0.1:{port}" in result.output and "--port" in result.output
