"""Experiment tracking: a finished ``deepfusion train`` run logged to MLflow (``train --track``).

Each trained model becomes one MLflow run under the experiment (default "deepfusion"): the training options and
the network settings as parameters, every epoch's training and validation metrics (step = epoch), the test
metrics and the input ablation as final metrics, and ``report.html`` and the model folder as artifacts. The run
is logged after training from the files ``train`` wrote (config.json, metrics.json), so what MLflow shows is
exactly what the model folder holds.

The store is ``./mlruns`` (MLflow's local file store) unless a tracking URI is given (``--tracking-uri``, or
MLFLOW_TRACKING_URI): a tracking server (``http://host:5000``), a ``file:`` folder, or any store MLflow reads.
MLflow is an optional dependency: ``pip install 'deepfusion[track]'`` (mlflow-skinny).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_STORE = "mlruns"
DEFAULT_EXPERIMENT = "deepfusion"


class TrackingError(RuntimeError):
    """Tracking was asked for but cannot be done (MLflow missing, a store that cannot be reached)."""


def _mlflow():  # noqa: ANN202 - optional dependency, imported only when tracking is asked for
    try:
        import mlflow
    except ImportError:
        raise TrackingError(
            "train --track needs MLflow: pip install 'deepfusion[track]' (mlflow-skinny), or leave out --track."
        ) from None
    return mlflow


def resolve_uri(uri: str | None) -> str:
    """The tracking URI to log to: ``uri``, else MLFLOW_TRACKING_URI, else the local store ./mlruns (absolute
    ``file:`` URI, so the run folder's location does not matter)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", uri) or uri.startswith(("file:", "databricks")):
        return uri
    return Path(uri).resolve().as_uri()  # a plain folder


def open_store(uri: str | None, experiment: str = DEFAULT_EXPERIMENT):  # noqa: ANN201 - the mlflow module
    """Point MLflow at the store and experiment (created if new); raises TrackingError when that fails, so
    ``train --track`` can find out before training."""
    mlflow = _mlflow()
    uri = resolve_uri(uri)
    if uri.startswith("file:"):
        # MLflow 3 refuses its file store unless told that it is meant (the store is deprecated for servers).
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(experiment)
    except Exception as exc:  # MlflowException, OSError, connection errors: all mean the store is not usable
        raise TrackingError(f"cannot use the MLflow tracking store {uri} ({type(exc).__name__}: {exc})") from None
    return mlflow


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, list | tuple):
        out[prefix] = ",".join(map(str, value))
    elif value is not None:
        out[prefix] = value


def _metric_name(text: str) -> str:
    """MLflow metric names allow letters, digits, _ - . / and spaces."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text)


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {
        _metric_name(k): float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def model_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Final metrics of one model from its metrics.json: the numeric test metrics and, per ablation row,
    ``ablation.<inputs>[.without_<withheld>].accuracy`` (and its baseline)."""
    final = _numbers(metrics)
    for row in metrics.get("ablation") or []:
        name = "+".join(row["modalities"])
        if row["withheld"]:
            name += ".without_" + "+".join(w.replace(" ", "_") for w in row["withheld"])
        for key in ("accuracy", "macro_f1", "baseline_accuracy"):
            if isinstance(row.get(key), int | float):
                final[_metric_name(f"ablation.{name}.{key}")] = float(row[key])
    return final


def track_run(
    run_dir: str | Path,
    models: Iterable[str],
    *,
    uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    options: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Log the models ``models`` (sub-folders of ``run_dir``, as ``train`` wrote them) to MLflow; returns
    model name -> MLflow run id. ``options``: the training options, logged as parameters."""
    from .model_files import read_config

    mlflow = open_store(uri, experiment)
    uri = resolve_uri(uri)
    run_dir = Path(run_dir)
    report = run_dir / "report.html"
    ids: dict[str, str] = {}
    for name in models:
        folder = run_dir / name
        config = read_config(folder)
        metrics = json.loads((folder / "metrics.json").read_text())
        params: dict[str, Any] = {"model": name, "run_dir": str(run_dir.resolve())}
        _flat("", options or {}, params)
        settings = config["config"]
        _flat("head", settings["head"], params)
        _flat("image", settings["image"], params)
        _flat("tree", settings["tree"], params)
        for key in ("modalities", "seed", "stacking", "title_fallback", "metadata_fallback", "refit",
                    "field_blanking", "review_precision"):
            _flat(key, settings.get(key), params)
        with mlflow.start_run(run_name=f"{run_dir.name}/{name}") as run:
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
            mlflow.set_tags({"deepfusion.model": name, "deepfusion.run_dir": str(run_dir.resolve())})
            for row in config.get("history") or []:
                step = int(row.get("epoch", 0))
                mlflow.log_metrics({f"epoch.{k}": v for k, v in _numbers(row).items() if k != "epoch"}, step=step)
            mlflow.log_metrics(model_metrics(metrics))
            if report.is_file():
                mlflow.log_artifact(str(report))
            mlflow.log_artifacts(str(folder), artifact_path=f"model/{name}")
            ids[name] = run.info.run_id
        log.info("tracked %s in MLflow (%s, experiment %s, run %s)", name, uri, experiment, ids[name])
    return ids
