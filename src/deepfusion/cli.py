"""``deepfusion`` command line: a thin layer over ``deepfusion.runs`` and the other job modules.

User errors (a bad folder, a missing column, an unknown option value) print one clear message and exit 2;
they never show a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from .catalog import CatalogError
from .predictor import ModelLoadError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="DeepFusion: categorize catalog products from image, metadata and title.",
)

DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        help="Folder with styles.csv (or .parquet) and images/, or kaggle:OWNER/NAME to download through kagglehub.",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (CatalogError, ModelLoadError, ValueError, FileNotFoundError) as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from None

    return wrapper


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--image-size must look like 224x168 (height x width), got '{text}'") from None
    if not (32 <= h <= 1024 and 32 <= w <= 1024):
        raise ValueError(f"--image-size {text}: each side must be between 32 and 1024 pixels")
    return h, w


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


@app.command()
@_user_errors
def train(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Run folder to write.")],
    model: Annotated[str, typer.Option("--model", help="metadata | image | fusion | all")] = "metadata",
    preset: Annotated[str, typer.Option("--preset", help="small | overfit | regularized")] = "regularized",
    modalities: Annotated[
        str | None, typer.Option("--modalities", help="Fusion inputs, comma-separated subset of metadata,title,image.")
    ] = None,
    combiner: Annotated[str | None, typer.Option("--combiner", help="concat | gated")] = None,
    balance: Annotated[str | None, typer.Option("--balance", help="none | sqrt | inverse | sampler")] = None,
    members: Annotated[
        int | None,
        typer.Option("--members", min=1, help="Networks per model, trained from different seeds and averaged."),
    ] = None,
    backbone: Annotated[str, typer.Option("--backbone", help="Image backbone name.")] = "efficientnet_lite0",
    weights: Annotated[Path | None, typer.Option("--weights", help="Your own backbone weights file.")] = None,
    image_size: Annotated[
        str | None, typer.Option("--image-size", help="Backbone input HEIGHTxWIDTH, e.g. 224x168 (the default).")
    ] = None,
    augment_views: Annotated[
        int | None, typer.Option("--augment-views", help="Augmented image views per training image.")
    ] = None,
    text_scores: Annotated[
        bool,
        typer.Option(
            "--text-scores/--no-text-scores",
            help="Stacking: feed a linear SVM's class scores on metadata + title to the fusion network.",
        ),
    ] = True,
    title_fallback: Annotated[
        bool,
        typer.Option(
            "--title-fallback/--no-title-fallback",
            help="Also train a network without the title, which answers for products that have none.",
        ),
    ] = True,
    refit: Annotated[
        bool,
        typer.Option(
            "--refit",
            help="After early stopping and calibration on validation, train again on train + validation "
            "(about twice the training time; the test split stays held out).",
        ),
    ] = False,
    field_blanking: Annotated[
        float,
        typer.Option(
            "--field-blanking",
            min=0.0,
            max=4.0,
            help="Blanked copies per training product (metadata fields emptied at random), so products with "
            "missing attributes are predicted well; 0 turns it off.",
        ),
    ] = 1.0,
    finetune: Annotated[
        bool, typer.Option("--finetune", help="Fine-tune the backbone's last blocks first (slow without a GPU).")
    ] = False,
    finetune_blocks: Annotated[int, typer.Option("--finetune-blocks")] = 2,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs")] = 3,
    seed: Annotated[int, typer.Option("--seed")] = 42,
    quiet: QuietOpt = False,
) -> None:
    """Train a model (or all three) on a catalog; each model is evaluated on the held-out test split."""
    from .runs import train_run

    options: dict[str, Any] = {
        "backbone": backbone,
        "weights": weights,
        "combiner": combiner,
        "balance": balance,
        "members": members,
        "text_scores": text_scores,
        "title_fallback": title_fallback,
        "refit": refit,
        "field_blanking": field_blanking,
    }
    if image_size:
        options["image_size"] = _parse_size(image_size)
    if augment_views is not None:
        options["augment_views"] = augment_views
    if finetune:
        options.update(finetune_blocks=finetune_blocks, finetune_epochs=finetune_epochs)
    results = train_run(
        data,
        out,
        model=model,
        preset=preset,
        seed=seed,
        modalities=modalities,
        predictor_options=options,
        progress=not quiet,
    )
    for name, m in results.items():
        typer.echo(
            f"{name:9s} test accuracy {_pct(m['accuracy'])}  macro-F1 {m['macro_f1']:.4f}  "
            f"weighted-F1 {m['weighted_f1']:.4f}  -> {out / name}"
        )
    if (out / "report.html").exists():
        typer.echo(f"report: {out / 'report.html'}")


@app.command()
@_user_errors
def evaluate(
    model_dir: Annotated[Path, typer.Argument(help="A model folder written by train, e.g. RUN/metadata.")],
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json and summary.md.")],
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a saved model on a labelled catalog."""
    from .runs import evaluate_model

    m = evaluate_model(model_dir, data, out, progress=not quiet)
    typer.echo(
        f"accuracy {_pct(m['accuracy'])}  macro-F1 {m['macro_f1']:.4f}  on {m['n']:,} products "
        f"-> {out / 'metrics.json'}"
    )


@app.command()
@_user_errors
def predict(
    model_dir: Annotated[Path, typer.Argument(help="A model folder written by train.")],
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="predictions.csv or predictions.parquet")],
    top_k: Annotated[int, typer.Option("--top-k", help="How many ranked labels per product.")] = 3,
    quiet: QuietOpt = False,
) -> None:
    """Predict the category of every product in a catalog (labels not needed)."""
    from .runs import predict_catalog

    n, catalog = predict_catalog(model_dir, data, out, top_k=top_k, progress=not quiet)
    typer.echo(f"{n:,} predictions -> {out}; {catalog.summary()}")


@app.command()
@_user_errors
def eda(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for eda.html, eda.json and rejects.csv.")],
    quiet: QuietOpt = False,
) -> None:
    """Explore a catalog before training: a self-contained HTML report plus the same figures as JSON."""
    from .eda import write_eda_report

    report = write_eda_report(data, out, progress=not quiet)
    o, t = report["overview"], report["target"]
    typer.echo(
        f"{o['rows']:,} products, {t['n_classes']} classes, {o['rejects']['dropped']:,} rows dropped, "
        f"{o['images']['without_image']:,} without a usable image -> {out / 'eda.html'}"
    )


@app.command()
@_user_errors
def audit(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for audit.csv, audit.html and audit.json.")],
    folds: Annotated[int, typer.Option("--folds", help="Out-of-fold predictions from this many folds.")] = 5,
    modalities: Annotated[str, typer.Option("--modalities", help="Inputs of the auditing model.")] = (
        "metadata,title,image"
    ),
    seed: Annotated[int, typer.Option("--seed")] = 42,
    quiet: QuietOpt = False,
) -> None:
    """Find products whose current category is probably wrong (a ranked review queue)."""
    from .audit import audit_catalog
    from .predictor import parse_modalities

    queue = audit_catalog(data, out, modalities=parse_modalities(modalities), folds=folds, seed=seed,
                          progress=not quiet)
    typer.echo(f"{len(queue):,} products queued for review -> {out / 'audit.csv'}, {out / 'audit.html'}")


@app.command()
@_user_errors
def serve(
    model_dir: Annotated[Path, typer.Argument(help="A model folder written by train.")],
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    max_items: Annotated[int, typer.Option("--max-items", help="Most products per request.")] = 256,
) -> None:
    """Serve a model over HTTP: POST /v1/predict, GET /healthz, GET /v1/model, docs at /docs."""
    from .service import serve as run_server

    run_server(model_dir, host=host, port=port, max_items=max_items)


if __name__ == "__main__":
    app()
