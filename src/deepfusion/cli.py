"""``deepfusion`` command line: a thin layer over ``deepfusion.runs`` and the other job modules.

User errors (a bad folder, a missing column, an unknown option value) print one clear message and exit 2;
they never show a traceback. Option values are checked by the parser, before any data is read.

Importing this module must stay cheap (``deepfusion --help`` answers in a fraction of a second): the job modules
pull in pandas, scikit-learn and torch, so every command imports them inside its body, and nothing here imports
them at module level (tests/test_cli_help.py checks that in a fresh interpreter).
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import warnings
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from . import config

# The choices of the options below. config.py imports nothing heavy; the others mirror a registry in a module that
# imports torch or pandas, spelled out here so that building the parser stays cheap (tests/test_cli_help.py checks
# they are equal).
MODELS = ("metadata", "image", "fusion", "all")  # predictor.MODEL_KINDS + "all" (runs.model_specs)
PRESETS = tuple(config.PRESETS)
COMBINERS = config.COMBINERS
BALANCES = config.BALANCES  # the modes training.class_weights / train_network know
BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")  # backbones.list_backbones()
MODALITIES = config.MODALITIES
DECODE_CHOICES = config.DECODERS
DEFAULT_MIN_CLASS_SIZE = config.DEFAULT_MIN_CLASS_SIZE
# predict: this process (runs.predict_catalog) or Ray (distributed.predict_catalog_ray); audit: the fold models in
# this process (audit.out_of_fold_probabilities) or as Ray tasks (distributed.run_folds_ray).
ENGINES = ("local", "ray")

# What `deepfusion train` writes into a run folder: the only entries --overwrite may delete. Anything else in
# the folder is the user's, so the folder is refused rather than cleaned.
RUN_FILES = frozenset(
    {
        "split.csv", "split.json", "rejects.csv", "comparison.json", "report.html", "summary.md", "summary.json",
        "schema.json", "links.csv",
    }
)
MODEL_FOLDERS = frozenset(MODELS) - {"all"}
# Inside a model folder: what Predictor.save, runs.train_model and the report write.
MODEL_FILES = frozenset(
    {
        "model.safetensors",
        "fallback.safetensors",
        "text_scores.safetensors",
        "no_metadata.safetensors",
        "title_scores.safetensors",
        "title_image_scores.safetensors",
        "image_expert.safetensors",
        "backbone.safetensors",
        "config.json",
        "preprocessing.json",
        "metrics.json",
        "summary.md",
        "test_predictions.csv",
    }
)

# The scikit-learn warning that stratified splitting emits for a class with fewer products than folds: expected
# for a catalog's rare classes (the split and the audit handle them), so it is noise on the console.
LEAST_POPULATED_WARNING = r"The least populated class in y has only \d+ members"

# The exceptions whose message is written for the user. They are looked up by module and name when one is
# raised, instead of imported here: importing deepfusion.catalog or deepfusion.predictor costs seconds. If such
# an exception was raised, its module has been imported, so sys.modules holds it.
USER_ERROR_CLASSES = (
    ("deepfusion.catalog", "CatalogError"),
    ("deepfusion.model_files", "ModelLoadError"),
    ("deepfusion.predictor", "ModelLoadError"),
    ("deepfusion.backbones", "BackboneError"),
    ("deepfusion.export", "ExportError"),
    ("deepfusion.runtime", "ExportLoadError"),
    ("deepfusion.distributed", "DistributedError"),
    ("deepfusion.tracking", "TrackingError"),
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    # Plain click help: never truncates option names or defaults at 80 columns, and does not import rich.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    help="DeepFusion: categorize catalog products from image, metadata and title.",
)


def _one_of(choices: tuple[str, ...]) -> Callable[[str | None], str | None]:
    """A parser callback that refuses a value outside ``choices`` (a typo is caught before any data is read)."""

    def check(value: str | None) -> str | None:
        if value is None or value in choices:
            return value
        import difflib  # only on the error path

        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise typer.BadParameter(f"'{value}' is not one of: {', '.join(choices)}.{hint}")

    return check


def _choices(choices: tuple[str, ...]) -> str:
    return "[" + "|".join(choices) + "]"


def _check_modalities(value: str | None) -> str | None:
    if value is None:
        return value
    items = [m.strip() for m in value.split(",") if m.strip()]
    unknown = [m for m in items if m not in MODALITIES]
    if unknown or not items:
        raise typer.BadParameter(f"Unknown modalities {unknown or items}. Choose from: {', '.join(MODALITIES)}")
    return value


def _parse_size(text: str) -> tuple[int, int]:
    """HEIGHTxWIDTH -> (height, width); ValueError with the reason."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"must look like 224x168 (height x width), got '{text}'") from None
    if not (32 <= h <= 1024 and 32 <= w <= 1024):
        raise ValueError(f"each side must be between 32 and 1024 pixels, got '{text}'")
    return h, w


def _check_size(value: str | None) -> str | None:
    if value is not None:
        try:
            _parse_size(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        help="The product table (CSV with any separator, TSV, Parquet or JSON Lines) or a folder holding it (and "
        "images/), or kaggle:OWNER/NAME to download through kagglehub.",
    ),
]


def _columns(value: str | None) -> str | None:
    if value is not None and not [c for c in value.split(",") if c.strip()]:
        raise typer.BadParameter("give one or more column names, comma-separated")
    return value


def _check_sep(value: str | None) -> str | None:
    if value is None:
        return None
    sep = SEP_NAMES.get(value.lower(), value)
    if len(sep) != 1:
        raise typer.BadParameter(f"a separator is one character (or tab), not {value!r}")
    return sep


SEP_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
LabelOpt = Annotated[
    str | None,
    typer.Option("--label", callback=_columns, help="The column holding each product's category, or several "
                 "comma-separated that are the levels of a category tree, top first [default: articleType for "
                 "the fashion catalog's columns; required for any other catalog]."),
]
LabelSepOpt = Annotated[
    str | None,
    typer.Option("--label-sep", metavar="SEP", help="The separator between the levels of a label that is a path, "
                 "such as '>' [default: detected among >, >>, | and /; none: the label is one flat class]."),
]
IdOpt = Annotated[
    str | None,
    typer.Option("--id", help="The column holding each product's id [default: inferred from names such as id, sku "
                 "or uniq_id; none found: the row number]."),
]
TextOpt = Annotated[
    str | None,
    typer.Option("--text", callback=_columns, help="Text columns, comma-separated, the title first (a long "
                 "description adds only its first words) [default: inferred]."),
]
CategoricalOpt = Annotated[
    str | None,
    typer.Option("--categorical", callback=_columns, help="Attribute columns with a few repeated values such as "
                 "brand or colour, comma-separated [default: inferred]."),
]
NumericOpt = Annotated[
    str | None,
    typer.Option("--numeric", callback=_columns, help="Number columns such as price, weight or year (currency signs "
                 "and units such as 4.8 ounces are fine), comma-separated [default: inferred]."),
]
ImageOpt = Annotated[
    str | None,
    typer.Option("--image", help="The column holding each product's image file name or path, inside --images-dir, "
                 "or its http(s) link [default: inferred; none: IMAGES_DIR/<id>.jpg]."),
]
ImageSepOpt = Annotated[
    str | None,
    typer.Option("--image-sep", callback=_check_sep, help="The character separating several images in the image "
                 "column (the first that exists or downloads is used)."),
]
LinkTimeoutOpt = Annotated[
    float | None,
    typer.Option("--link-timeout", min=0.01, help="Image links: seconds to wait for a connection or a read "
                 "(4 times over for a whole image) [default: 5 to connect, 15 to read]."),
]
LinkWorkersOpt = Annotated[
    int | None,
    typer.Option("--link-workers", min=1, help="Image links: downloads at once [default: 16]."),
]
ImagesDirOpt = Annotated[
    Path | None,
    typer.Option("--images-dir", help="The folder holding the images [default: images/ beside the table; with an "
                 "image column, also the table's folder]."),
]
SchemaOpt = Annotated[
    Path | None,
    typer.Option("--schema", help="A JSON file naming the columns' roles (keys id, label, text, categorical, "
                 "numeric, image, image_sep), such as the schema.json train writes; flags override it."),
]
SepOpt = Annotated[
    str | None,
    typer.Option("--sep", callback=_check_sep, help="Field separator of a delimited table (',', ';', tab, '|') "
                 "[default: sniffed from the header; tab for .tsv]."),
]


def _catalog_options(
    *,
    schema: Path | None = None,
    label: str | None = None,
    label_sep: str | None = None,
    id: str | None = None,  # noqa: A002 - the role's name, as the flag's
    text: str | None = None,
    categorical: str | None = None,
    numeric: str | None = None,
    image: str | None = None,
    image_sep: str | None = None,
    images_dir: Path | None = None,
    sep: str | None = None,
    link_timeout: float | None = None,
    link_workers: int | None = None,
) -> dict[str, Any]:
    """The flags that say where a catalog's columns and images are, as load_catalog's options."""
    def split(value: str | None) -> list[str] | None:
        return None if value is None else [c.strip() for c in value.split(",") if c.strip()]

    labels = split(label)
    options: dict[str, Any] = {
        "label": labels if labels is None or len(labels) > 1 else labels[0], "label_sep": label_sep,
        "id": id, "text": split(text), "categorical": split(categorical),
        "numeric": split(numeric), "image": image, "image_sep": image_sep, "images_dir": images_dir, "sep": sep,
    }
    if link_timeout is not None or link_workers is not None:
        from .image_links import LinkOptions

        options["links"] = LinkOptions.with_timeout(link_timeout, link_workers)
    if schema is not None:
        from .catalog import CatalogError
        from .schema import SchemaError, read_schema_file

        try:
            options["schema"] = read_schema_file(schema)
        except SchemaError as exc:
            raise CatalogError(str(exc)) from None
    return {k: v for k, v in options.items() if v is not None}
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="With --engine ray: the cluster to join (HOST:6379, ray://HOST:10001 or auto) [default: "
        "RAY_ADDRESS, else a Ray started on this machine for the command].",
    ),
]


def _check_address(engine: str, address: str | None) -> None:
    if engine == "local" and address is not None:
        raise typer.BadParameter("--address needs --engine ray.", param_hint="'--address'")


def _is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, ValueError | FileNotFoundError):
        return True
    for module_name, class_name in USER_ERROR_CLASSES:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def _write_error_rejects(exc: BaseException, path: Path | None) -> Path | None:
    """A CatalogError may carry the rows rejected before the catalog was found unusable: save them for the user."""
    write = getattr(exc, "write_rejects", None)
    if path is None or not callable(write) or getattr(exc, "rejects", None) is None:
        return None
    try:
        return write(path)
    except OSError:
        return None  # the error message itself is what matters; a folder we cannot write to must not mask it


def _user_errors(
    rejects: Callable[[dict[str, Any]], Path] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn user errors into one red line and exit 2. ``rejects`` maps the command's arguments to where the rows
    rejected by a failed catalog load are written."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not _is_user_error(exc):
                    raise
                typer.secho(f"error: {exc}", fg="red", err=True)
                written = _write_error_rejects(exc, rejects(kwargs) if rejects else None)
                if written is not None:
                    typer.echo(f"rejected rows, each with its reason: {written}", err=True)
                raise typer.Exit(2) from None

        return wrapper

    return decorate


def _in_folder(name: str) -> Callable[[dict[str, Any]], Path]:
    return lambda kwargs: Path(kwargs["out"]) / name


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    warnings.filterwarnings("ignore", message=LEAST_POPULATED_WARNING, category=UserWarning)


def _echo_levels(metrics: dict[str, Any]) -> None:
    """A tree label's accuracy per level, under the model's line."""
    for level in (metrics.get("levels") or {}).get("levels", []):
        if level["accuracy"] is None or math.isnan(level["accuracy"]):  # no test product's path is that deep
            typer.echo(f"  {level['name']:20s} no test product reaches this level")
            continue
        typer.echo(f"  {level['name']:20s} accuracy {_pct(level['accuracy'])}  macro-F1 {level['macro_f1']:.4f}")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _foreign_entries(out: Path) -> list[str]:
    """Entries of a run folder that `deepfusion train` did not write (a model folder counts as a whole)."""
    foreign = []
    for entry in sorted(out.iterdir()):
        if entry.is_symlink():
            foreign.append(entry.name)  # never follow a link out of the folder
        elif entry.is_dir() and entry.name in MODEL_FOLDERS:
            foreign += [
                f"{entry.name}/{f.name}" + ("/" if f.is_dir() and not f.is_symlink() else "")
                for f in sorted(entry.iterdir())
                if f.is_symlink() or not f.is_file() or f.name not in MODEL_FILES
            ]
        elif not (entry.is_file() and entry.name in RUN_FILES):
            foreign.append(entry.name + ("/" if entry.is_dir() else ""))
    return foreign


def _prepare_run_folder(out: Path, overwrite: bool) -> None:
    """A run folder holds one run: refuse a non-empty folder unless --overwrite, then remove only what train
    wrote before, so a new run is never mixed with an older one's models or report."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a folder; choose a new folder.", param_hint="'--out'")
    entries = list(out.iterdir())
    if not entries:
        return
    if not overwrite:
        raise typer.BadParameter(
            f"{out} exists; pass --overwrite to replace it, or choose a new folder.", param_hint="'--out'"
        )
    foreign = _foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise typer.BadParameter(
            f"{out} holds files that deepfusion train did not write ({shown}); --overwrite only replaces a run "
            "folder written by train. Move them away or choose a new folder.",
            param_hint="'--out'",
        )
    for entry in entries:
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# train's options (those shared with other verbs are above).
OutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        help="Run folder to write: one sub-folder per model, split.csv, rejects.csv and report.html. It must be "
        "new or empty (see --overwrite).",
    ),
]

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        callback=_one_of(MODELS),
        metavar=_choices(MODELS),
        help="Which model to train; all trains the three and compares them in the report.",
    ),
]

PresetOpt = Annotated[
    str,
    typer.Option(
        "--preset",
        callback=_one_of(PRESETS),
        metavar=_choices(PRESETS),
        help="regularized is the model to use; small is a quick end-to-end check; overfit is a diagnostic "
        "that should nearly memorise the training set.",
    ),
]

ModalitiesOpt = Annotated[
    str | None,
    typer.Option(
        "--modalities",
        callback=_check_modalities,
        help="Inputs of the fusion model, comma-separated subset of metadata,title,image [default: all three].",
    ),
]

CombinerOpt = Annotated[
    str | None,
    typer.Option(
        "--combiner",
        callback=_one_of(COMBINERS),
        metavar=_choices(COMBINERS),
        help="How the fusion network joins its inputs: concatenation, or a learned gate per input "
        "[default: the preset's, concat].",
    ),
]

BalanceOpt = Annotated[
    str | None,
    typer.Option(
        "--balance",
        callback=_one_of(BALANCES),
        metavar=_choices(BALANCES),
        help="Class imbalance: sqrt or inverse weigh the loss by count^-1/2 or count^-1, sampler draws rare "
        "classes more often [default: the preset's, none].",
    ),
]

MembersOpt = Annotated[
    int | None,
    typer.Option(
        "--members",
        min=1,
        help="Networks per model, trained from different seeds and averaged [default: the preset's, 2 for "
        "regularized, 1 otherwise].",
    ),
]

BackboneOpt = Annotated[
    str,
    typer.Option(
        "--backbone",
        callback=_one_of(BACKBONES),
        metavar=_choices(BACKBONES),
        help="Image backbone (ImageNet weights, frozen unless --finetune).",
    ),
]

WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        exists=True,
        dir_okay=False,
        help="Your own weights file (a state dict) for --backbone, instead of the packaged ImageNet weights.",
    ),
]

ImageSizeOpt = Annotated[
    str | None,
    typer.Option(
        "--image-size",
        callback=_check_size,
        help="Backbone input HEIGHTxWIDTH, 32 to 1024 pixels a side [default: the backbone's, 224x168 for "
        "efficientnet_lite0].",
    ),
]

AugmentViewsOpt = Annotated[
    int | None,
    typer.Option("--augment-views", min=0, help="Augmented image views per training image [default: 0]."),
]

StackingOpt = Annotated[
    bool,
    typer.Option(
        "--stacking/--no-stacking",
        help="Feed a linear SVM's class scores on metadata + title to the fusion network.",
    ),
]

TitleFallbackOpt = Annotated[
    bool,
    typer.Option(
        "--title-fallback/--no-title-fallback",
        help="Also train a network without the title, which answers for products that have none.",
    ),
]

RefitOpt = Annotated[
    bool,
    typer.Option(
        "--refit",
        help="After early stopping and calibration on validation, train again on train + validation "
        "(about twice the training time; the test split stays held out).",
    ),
]

FieldBlankingOpt = Annotated[
    float,
    typer.Option(
        "--field-blanking",
        min=0.0,
        max=4.0,
        help="Blanked copies per training product (attributes emptied one by one at random), so products "
        "with some attributes missing are predicted well; 0 turns it off.",
    ),
]

MetadataFallbackOpt = Annotated[
    bool,
    typer.Option(
        "--metadata-fallback/--no-metadata-fallback",
        help="Also fit linear models on the title (a title-only SVM, and a title + image SVM when the model "
        "reads images), which answer for products that have a title but no attributes.",
    ),
]

ReviewPrecisionOpt = Annotated[
    float,
    typer.Option(
        "--review-precision",
        min=0.0,
        max=1.0,
        help="needs_review in predictions: products below the confidence at which validation products were "
        "right this often are flagged for a person.",
    ),
]

SentenceModelOpt = Annotated[
    str | None,
    typer.Option(
        "--sentence-model",
        help="Also read the title with a pretrained sentence model: all-MiniLM-L6-v2 (pip install "
        "'deepfusion[sentence]'; no download) or a sentence-transformers folder; none: TF-IDF alone; auto: "
        "all-MiniLM-L6-v2 for a model that reads text and no image, where installed. The model keeps a copy "
        "(about 90 MB).",
    ),
]

FinetuneOpt = Annotated[
    bool, typer.Option("--finetune", help="Fine-tune the backbone's last blocks first (slow without a GPU).")
]

FinetuneBlocksOpt = Annotated[
    int,
    typer.Option(
        "--finetune-blocks",
        min=0,
        help="With --finetune: how many of the backbone's last blocks are trained (0: only its head convolution).",
    ),
]

FinetuneEpochsOpt = Annotated[
    int, typer.Option("--finetune-epochs", min=1, help="With --finetune: epochs of backbone fine-tuning.")
]

SeedOpt = Annotated[
    int,
    typer.Option("--seed", help="Random seed of the train/val/test split, the networks and the blanked copies."),
]

OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace the run already in --out (only files deepfusion train writes; a folder holding "
        "anything else is refused).",
    ),
]

TrackOpt = Annotated[
    bool,
    typer.Option(
        "--track",
        help="Log the run to MLflow (parameters, per-epoch metrics, test metrics, report.html and the model "
        "folder as artifacts); needs deepfusion[track]. Store: --tracking-uri, else MLFLOW_TRACKING_URI, else "
        "./mlruns.",
    ),
]

TrackingUriOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking server or store (http://HOST:5000, file:/path, a folder); implies --track.",
    ),
]

ExperimentOpt = Annotated[
    str, typer.Option("--experiment", help="With --track: the MLflow experiment the run is logged under.")
]

EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        callback=_one_of(ENGINES),
        metavar=_choices(ENGINES),
        help="ray embeds the images on a Ray cluster first (pip install 'deepfusion[ray]'), into the embedding "
        "cache training reads; the networks train here either way.",
    ),
]

ActorsOpt = Annotated[
    int, typer.Option("--actors", min=1, help="With --engine ray: backbone replicas embedding at once.")
]

DepthOpt = Annotated[
    int | None,
    typer.Option("--depth", min=1, help="With a tree label: train on its first N levels [default: all]."),
]

MinClassSizeOpt = Annotated[
    int,
    typer.Option(
        "--min-class-size",
        min=1,
        help="With a tree label: a path with fewer training products backs off to its parent (listed in "
        "the report).",
    ),
]

DecodeOpt = Annotated[
    str,
    typer.Option(
        "--decode",
        callback=_one_of(DECODE_CHOICES),
        metavar=_choices(DECODE_CHOICES),
        help="With a tree label: predict the most probable whole path, or the best node level by level.",
    ),
]


@app.command()
@_user_errors(rejects=_in_folder("rejects.csv"))
def train(
    data: DataOpt,
    out: OutOpt,
    model: ModelOpt = "all",
    preset: PresetOpt = "regularized",
    modalities: ModalitiesOpt = None,
    combiner: CombinerOpt = None,
    balance: BalanceOpt = None,
    members: MembersOpt = None,
    backbone: BackboneOpt = config.DEFAULT_BACKBONE,
    weights: WeightsOpt = None,
    image_size: ImageSizeOpt = None,
    augment_views: AugmentViewsOpt = None,
    stacking: StackingOpt = True,
    title_fallback: TitleFallbackOpt = True,
    refit: RefitOpt = False,
    field_blanking: FieldBlankingOpt = 0.5,
    metadata_fallback: MetadataFallbackOpt = True,
    review_precision: ReviewPrecisionOpt = 0.98,
    sentence_model: SentenceModelOpt = "auto",
    finetune: FinetuneOpt = False,
    finetune_blocks: FinetuneBlocksOpt = 2,
    finetune_epochs: FinetuneEpochsOpt = 3,
    seed: SeedOpt = 42,
    overwrite: OverwriteOpt = False,
    track: TrackOpt = False,
    tracking_uri: TrackingUriOpt = None,
    experiment: ExperimentOpt = "deepfusion",
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    actors: ActorsOpt = 2,
    label: LabelOpt = None,
    label_sep: LabelSepOpt = None,
    depth: DepthOpt = None,
    min_class_size: MinClassSizeOpt = DEFAULT_MIN_CLASS_SIZE,
    decode: DecodeOpt = "path",
    id_column: IdOpt = None,
    text: TextOpt = None,
    categorical: CategoricalOpt = None,
    numeric: NumericOpt = None,
    image: ImageOpt = None,
    image_sep: ImageSepOpt = None,
    images_dir: ImagesDirOpt = None,
    schema: SchemaOpt = None,
    sep: SepOpt = None,
    link_timeout: LinkTimeoutOpt = None,
    link_workers: LinkWorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train models on a catalog and compare them.

    Each model is evaluated on the held-out test split; report.html in the run folder compares them. The columns'
    roles come from --schema and the column flags, else from the data (written to RUN/schema.json).
    """
    catalog_options = _catalog_options(
        schema=schema, label=label, label_sep=label_sep, id=id_column, text=text, categorical=categorical,
        numeric=numeric, image=image, image_sep=image_sep, images_dir=images_dir, sep=sep, link_timeout=link_timeout,
        link_workers=link_workers,
    )
    _check_address(engine, address)
    track = track or tracking_uri is not None
    if track:  # before hours of training: MLflow installed, the store usable
        from .tracking import open_store

        open_store(tracking_uri, experiment)
    _prepare_run_folder(out, overwrite)
    from .runs import train_run

    given = {"combiner": combiner, "balance": balance, "members": members}
    model_config = config.ModelConfig.create(
        modalities or "metadata,title,image",  # each model of the run takes its own modalities (runs.model_specs)
        preset=preset,
        head={k: v for k, v in given.items() if v is not None},
        backbone=backbone,
        weights=None if weights is None else str(weights),
        image_size=_parse_size(image_size) if image_size else None,
        augment_views=augment_views or 0,
        finetune_blocks=finetune_blocks if finetune else 0,
        finetune_epochs=finetune_epochs,
        depth=depth,
        min_class_size=min_class_size,
        decode=decode,
        stacking=stacking,
        title_fallback=title_fallback,
        metadata_fallback=metadata_fallback,
        refit=refit,
        field_blanking=field_blanking,
        review_precision=review_precision,
        sentence_model=sentence_model,
        seed=seed,
    )
    results = train_run(
        data,
        out,
        model=model,
        config=model_config,
        modalities=modalities,
        progress=not quiet,
        engine=engine,
        address=address,
        actors=actors,
        catalog_options=catalog_options,
    )
    if (out / "schema.json").exists():
        from .schema import CatalogSchema, read_schema_file

        used: CatalogSchema = read_schema_file(out / "schema.json")
        if not used.is_fashion:
            typer.echo(f"columns ({used.name}; saved to {out / 'schema.json'}, pass it back with --schema to change):")
            typer.echo("  " + used.describe().replace("\n", "\n  "))
    for name, m in results.items():
        typer.echo(
            f"{name:9s} test accuracy {_pct(m['accuracy'])}  macro-F1 {m['macro_f1']:.4f}  "
            f"weighted-F1 {m['weighted_f1']:.4f}  -> {out / name}"
        )
        _echo_levels(m)
    if (out / "report.html").exists():
        typer.echo(f"report: {out / 'report.html'}")
    if track:
        from .tracking import resolve_uri, track_run

        logged = {"model": model, "preset": preset, "seed": seed, "modalities": modalities}
        ids = track_run(out, list(results), uri=tracking_uri, experiment=experiment, options=logged)
        runs = ", ".join(f"{k} run {v}" for k, v in ids.items())
        typer.echo(f"tracked in MLflow ({resolve_uri(tracking_uri)}): {runs}")


@app.command()
@_user_errors(rejects=_in_folder("rejects.csv"))
def evaluate(
    model_dir: Annotated[
        Path, typer.Argument(metavar="MODEL_DIR", help="A model folder written by train, e.g. RUN/metadata.")
    ],
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json, summary.md and rejects.csv.")],
    id_column: IdOpt = None,
    image: ImageOpt = None,
    images_dir: ImagesDirOpt = None,
    sep: SepOpt = None,
    link_timeout: LinkTimeoutOpt = None,
    link_workers: LinkWorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a saved model on a labelled catalog.

    The catalog's columns are read as the model's saved schema names them; flags say where they moved.
    """
    from .runs import evaluate_model

    options = _catalog_options(id=id_column, image=image, images_dir=images_dir, sep=sep, link_timeout=link_timeout,
                               link_workers=link_workers)
    m = evaluate_model(model_dir, data, out, progress=not quiet, catalog_options=options)
    typer.echo(
        f"accuracy {_pct(m['accuracy'])}  macro-F1 {m['macro_f1']:.4f}  on {m['n']:,} products "
        f"-> {out / 'metrics.json'}"
    )
    _echo_levels(m)


def _predict_rejects(kwargs: dict[str, Any]) -> Path:
    out = Path(kwargs["out"])
    return out.with_name(out.stem + ".rejects.csv")  # where runs.predict_catalog writes them after a load


@app.command()
@_user_errors(rejects=_predict_rejects)
def predict(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL_DIR", help="A model folder written by train.")],
    data: DataOpt,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="File to write: NAME.csv or NAME.parquet (the suffix picks the format); rejected rows go to "
            "NAME.rejects.csv beside it.",
        ),
    ],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many ranked labels per product.")] = 3,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            callback=_one_of(ENGINES),
            metavar=_choices(ENGINES),
            help="local predicts in this process; ray spreads image decoding and prediction over a Ray cluster "
            "(pip install 'deepfusion[ray]'), writes shards to OUT.parts/ and merges them into OUT. MODEL_DIR may "
            "then also be a folder written by export.",
        ),
    ] = "local",
    address: AddressOpt = None,
    actors: Annotated[
        int, typer.Option("--actors", min=1, help="With --engine ray: model replicas predicting at once.")
    ] = 2,
    id_column: IdOpt = None,
    image: ImageOpt = None,
    images_dir: ImagesDirOpt = None,
    sep: SepOpt = None,
    link_timeout: LinkTimeoutOpt = None,
    link_workers: LinkWorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Predict the category of every product in a catalog.

    Labels are not needed; each prediction comes with its confidence and the next best labels. The catalog's
    columns are read as the model's saved schema names them; --id, --image and --images-dir say where they are
    in this catalog. The output keeps the id column's name.
    """
    _check_address(engine, address)
    catalog_options = _catalog_options(id=id_column, image=image, images_dir=images_dir, sep=sep,
                                       link_timeout=link_timeout, link_workers=link_workers)
    if engine == "ray" and catalog_options:
        raise typer.BadParameter("--id, --image, --images-dir, --sep and --link-* are not read by --engine ray yet.")
    if engine == "ray":
        from .distributed import predict_catalog_ray

        n, catalog = predict_catalog_ray(
            model_dir, data, out, top_k=top_k, address=address, actors=actors, progress=not quiet
        )
        typer.echo(f"{n:,} predictions -> {out}; {catalog.summary()}")
        return
    from .runs import predict_catalog

    n, catalog = predict_catalog(
        model_dir, data, out, top_k=top_k, progress=not quiet, catalog_options=catalog_options
    )
    typer.echo(f"{n:,} predictions -> {out}; {catalog.summary()}")


@app.command()
@_user_errors(rejects=_in_folder("rejects.csv"))
def eda(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for eda.html, eda.json and rejects.csv.")],
    label: LabelOpt = None,
    id_column: IdOpt = None,
    text: TextOpt = None,
    categorical: CategoricalOpt = None,
    numeric: NumericOpt = None,
    image: ImageOpt = None,
    image_sep: ImageSepOpt = None,
    images_dir: ImagesDirOpt = None,
    schema: SchemaOpt = None,
    sep: SepOpt = None,
    link_timeout: LinkTimeoutOpt = None,
    link_workers: LinkWorkersOpt = None,
    check_links: Annotated[
        int | None,
        typer.Option("--check-links", min=1, metavar="N", help="Image links: check a random sample of N links "
                     "(for a catalog too large to fetch whole) instead of fetching them all."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Explore a catalog before training.

    Writes a self-contained HTML report plus the same figures as JSON, and the rejected rows; with image links,
    links.csv (each link tried, with its status and reason). The catalog's columns are read as train reads them
    (the same flags, or a schema file).
    """
    from .eda import write_eda_report

    options = _catalog_options(
        schema=schema, label=label, id=id_column, text=text, categorical=categorical, numeric=numeric,
        image=image, image_sep=image_sep, images_dir=images_dir, sep=sep, link_timeout=link_timeout,
        link_workers=link_workers,
    )
    report = write_eda_report(data, out, progress=not quiet, catalog_options=options, check_links=check_links)
    o, t = report["overview"], report["target"]
    typer.echo(
        f"{o['rows']:,} products, {t['n_classes']} classes, {o['rejects']['dropped']:,} rows dropped, "
        f"{o['images']['without_image']:,} without a usable image -> {out / 'eda.html'}"
    )


@app.command()
@_user_errors(rejects=_in_folder("rejects.csv"))
def audit(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for audit.csv, audit.html, audit.json and rejects.csv.")],
    folds: Annotated[int, typer.Option("--folds", min=2, help="Out-of-fold predictions from this many folds.")] = 5,
    modalities: Annotated[
        str,
        typer.Option(
            "--modalities",
            callback=_check_modalities,
            help="Inputs of the auditing model, comma-separated subset of metadata,title,image.",
        ),
    ] = "metadata,title,image",
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the folds and the networks.")] = 42,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            callback=_one_of(ENGINES),
            metavar=_choices(ENGINES),
            help="local trains the fold models one after the other in this process; ray trains them as parallel "
            "Ray tasks (pip install 'deepfusion[train,ray]'), with the same folds, seeds and result.",
        ),
    ] = "local",
    address: AddressOpt = None,
    label: LabelOpt = None,
    id_column: IdOpt = None,
    text: TextOpt = None,
    categorical: CategoricalOpt = None,
    numeric: NumericOpt = None,
    image: ImageOpt = None,
    image_sep: ImageSepOpt = None,
    images_dir: ImagesDirOpt = None,
    schema: SchemaOpt = None,
    sep: SepOpt = None,
    link_timeout: LinkTimeoutOpt = None,
    link_workers: LinkWorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Find products whose category is probably wrong.

    Every product is judged by a model trained on the other folds; the suspicious ones form a ranked review queue.
    """
    _check_address(engine, address)
    from .audit import audit_catalog
    from .predictor import parse_modalities

    queue = audit_catalog(
        data,
        out,
        modalities=parse_modalities(modalities),
        folds=folds,
        seed=seed,
        progress=not quiet,
        engine=engine,
        address=address,
        catalog_options=_catalog_options(
            schema=schema, label=label, id=id_column, text=text, categorical=categorical, numeric=numeric,
            image=image, image_sep=image_sep, images_dir=images_dir, sep=sep, link_timeout=link_timeout,
            link_workers=link_workers,
        ),
    )
    typer.echo(f"{len(queue):,} products queued for review -> {out / 'audit.csv'}, {out / 'audit.html'}")


@app.command()
@_user_errors()
def export(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL_DIR", help="A model folder written by train.")],
    out: Annotated[
        Path,
        typer.Option("--out", help="Folder for the exported model (ONNX + JSON), served without torch or "
                     "scikit-learn by `deepfusion serve OUT`."),
    ],
) -> None:
    """Export a model for production: ONNX graphs and JSON preprocessing.

    The exported folder predicts with onnxruntime, numpy and Pillow alone (pip install 'deepfusion[serve]').
    """
    from .export import export_model

    typer.echo(f"exported {model_dir} -> {export_model(model_dir, out)}")


@app.command()
@_user_errors()
def serve(
    model_dir: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL_DIR",
            help="A model folder written by train, or an exported folder (written by export: served with "
            "onnxruntime, without torch, scikit-learn or pandas).",
        ),
    ],
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on; the service has no authentication, so keep it on 127.0.0.1 "
            "unless a proxy in front authenticates.",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port to listen on.")] = 8000,
    max_items: Annotated[int, typer.Option("--max-items", min=1, help="Most products per request.")] = 256,
    max_image_bytes: Annotated[
        int, typer.Option("--max-image-bytes", min=1, help="Largest image file accepted, in bytes.")
    ] = 5_000_000,
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", min=1, help="Largest request body accepted, in bytes.")
    ] = 50_000_000,
    max_image_pixels: Annotated[
        int,
        typer.Option(
            "--max-image-pixels", min=1, help="Most pixels (width x height) one image may decode to; checked "
            "from the header, before decoding."
        ),
    ] = 25_000_000,
    embedding_cache_size: Annotated[
        int,
        typer.Option(
            "--embedding-cache-size", min=0, help="Request-image embeddings kept in memory (0: none), so a "
            "repeated image is not embedded again."
        ),
    ] = 2048,
    batch_wait_ms: Annotated[
        float,
        typer.Option(
            "--batch-wait-ms", min=0, max=1000, help="Micro-batching: how long the first of several concurrent "
            "small requests waits for the others to join its model call (0: only requests arriving while the "
            "model is busy are combined)."
        ),
    ] = 2.0,
    image_url_hosts: Annotated[
        str | None,
        typer.Option(
            "--image-url-hosts", metavar="HOSTS", help="Accept the request field image_url, fetched only from these "
            "comma-separated hosts (*.example.com for subdomains); a private or loopback address only when "
            "listed itself [default: image_url refused]."
        ),
    ] = None,
) -> None:
    """Serve a model over HTTP.

    Endpoints: POST /v1/predict, POST /v1/predict/upload, GET /healthz, GET /v1/model, GET /metrics
    (Prometheus); interactive docs at /docs. See docs/http.md.
    """
    from .service import serve as run_server

    run_server(
        model_dir,
        host=host,
        port=port,
        max_items=max_items,
        max_image_bytes=max_image_bytes,
        max_body_bytes=max_body_bytes,
        max_image_pixels=max_image_pixels,
        embedding_cache_size=embedding_cache_size,
        batch_wait_ms=batch_wait_ms,
        image_url_hosts=image_url_hosts,
    )


if __name__ == "__main__":
    app()
