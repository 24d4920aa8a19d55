"""train --track: the run in MLflow's store, read back through MLflow's own client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepfusion.cli import app

mlflow = pytest.importorskip("mlflow", reason="deepfusion[track] (mlflow-skinny) is not installed")
runner = CliRunner()


def test_train_track_logs_params_epochs_metrics_and_artifacts(
    catalog_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "store"
    out = tmp_path / "run"
    args = ["train", "--data", str(catalog_dir), "--out", str(out), "--model", "metadata", "--preset", "small"]
    result = runner.invoke(app, [*args, "--quiet", "--tracking-uri", str(store), "--experiment", "tiny"])
    assert result.exit_code == 0, result.output
    assert "tracked in MLflow" in result.output

    client = mlflow.tracking.MlflowClient(tracking_uri=store.resolve().as_uri())
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id])
    metrics = json.loads((out / "metadata" / "metrics.json").read_text())
    config = json.loads((out / "metadata" / "config.json").read_text())
    assert run.data.params["model"] == "metadata" and run.data.params["preset"] == "small"
    assert run.data.params["head.epochs"] == str(config["config"]["head"]["epochs"])
    assert run.data.metrics["accuracy"] == pytest.approx(metrics["accuracy"])
    epochs = client.get_metric_history(run.info.run_id, "epoch.train_loss")
    assert [m.step for m in epochs] == [row["epoch"] for row in config["history"]]
    assert len(client.get_metric_history(run.info.run_id, "epoch.val_accuracy")) == len(config["history"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "report.html" in artifacts
    model_files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model/metadata")}
    assert {"config.json", "model.safetensors", "metrics.json"} <= model_files


def test_track_to_an_unusable_store_is_a_user_error(catalog_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    args = ["train", "--data", str(catalog_dir), "--out", str(tmp_path / "run"), "--model", "metadata"]
    result = runner.invoke(app, [*args, "--preset", "small", "--quiet", "--tracking-uri", str(blocker / "store")])
    assert result.exit_code == 2, result.output
    assert "MLflow tracking store" in result.output
