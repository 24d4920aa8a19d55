"""Checks a saved model folder before anything is built from it.

A model folder is ``config.json`` + ``preprocessing.json`` + safetensors files. ``Predictor.load`` builds
encoders and networks straight from them, so a tampered, damaged or foreign folder used to fail deep inside
scikit-learn or torch with a raw traceback (or, for a temperature of 0, load fine and answer NaN).
``validate_model_folder`` reads every file once, checks its shape, types and values and that the files agree with
each other (input widths, label count, tensor shapes), and raises ``ModelLoadError`` naming the file, what is
wrong and what to do. Safetensors files are only opened through ``safetensors.safe_open`` (no pickle), and
the expected tensor shapes come from building the network on torch's ``meta`` device, which allocates nothing,
so absurd sizes in a hostile config cannot exhaust memory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

FORMAT_VERSION = 2  # the saved-model format this version writes; format 1 is read through ``migrate``
READ_VERSIONS = (1, 2)
MODALITIES = ("metadata", "title", "image")
DERIVED_INPUTS = ("text_scores",)  # network inputs computed from the modalities (the stacked SVM's scores)
REQUIRED_FILES = ("config.json", "preprocessing.json", "model.safetensors")
MAX_JSON_BYTES = 512 * 2**20  # far above any real preprocessing.json (the title vocabularies); refuses a bomb
MAX_IMAGE_SIDE = 4096  # the backbone input size: training accepts 32-1024, so larger is not a saved model
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")

RESTORE = (
    "The folder was changed or damaged after training, or was not written by DeepFusion: restore the folder "
    "that `deepfusion train` wrote, or train the model again."
)
RETRAIN = "Train the model again with this version of DeepFusion (`deepfusion train`)."


class ModelLoadError(Exception):
    """A model folder that cannot be loaded; the message names the file, what is wrong and what to do."""


def validate_model_folder(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check a model folder written by ``Predictor.save``; returns the parsed ``config.json`` (in format 2, a
    format-1 file migrated) and ``preprocessing.json``. Raises ``ModelLoadError`` on the first problem found."""
    return _Checker(Path(path)).run()


def read_config(folder: Path) -> dict[str, Any]:
    """A model folder's ``config.json`` in format 2 (``migrate``d if older), without the full check: for pages
    and logs that describe a model (reports, tracking, the service's /v1/model)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    prep_file = folder / "preprocessing.json"
    needs_prep = config.get("format_version") == 1 and prep_file.is_file()
    return migrate(config, json.loads(prep_file.read_text()) if needs_prep else {})


def migrate(config: dict[str, Any], prep: dict[str, Any]) -> dict[str, Any]:
    """A format-1 ``config.json`` as format 2: the model's settings, kept flat at the top level in format 1, move
    into ``"config"`` (config.ModelConfig's JSON); what fitting found stays where it was. What format 1 did not
    record is what its code did: stacking when preprocessing.json has text scores, a fallback network when its
    entry is there, no fine-tuning record (the fine-tuned weights are the folder's backbone file). Other versions
    are returned as they are, for the checks to judge. Nothing is validated here."""
    if config.get("format_version") != 1:
        return config
    from .config import DEFAULT_BACKBONE, FORMAT1_MIN_CLASS_SIZE

    old = dict(config)
    taxonomy = old.get("taxonomy") if isinstance(old.get("taxonomy"), dict) else {}
    settings = {
        "modalities": old.pop("modalities", None),
        "head": old.pop("head", None),
        "seed": old.pop("seed", None),
        "image": {
            "backbone": old.pop("backbone", None) or DEFAULT_BACKBONE,
            "weights": old.pop("backbone_weights", None),
            "size": old.pop("image_size", None),
            "views": old.pop("augment_views", 0),
            "finetune_blocks": 0,
            "finetune_epochs": 3,
        },
        "tree": {
            "depth": taxonomy.get("depth"),
            "min_class_size": taxonomy.get("min_count", FORMAT1_MIN_CLASS_SIZE),
            "decode": old.pop("decode", "path"),
        },
        "stacking": "text_scores" in prep,
        "title_fallback": "fallback" in old,
        "metadata_fallback": "no_metadata" in old,
        "refit": old.get("refit") is not None,
        "field_blanking": old.pop("field_blanking", 0.0),
        "review_precision": old.pop("review_precision", 0.98),
    }
    for key in ("modalities", "head", "seed"):
        if settings[key] is None:
            settings.pop(key)  # the checks then name the missing entry
    head = settings.get("head")
    if isinstance(head, dict):
        head = settings["head"] = dict(head)
        head.setdefault("members", 1)  # before ensembles: one network
        if isinstance(head.get("wide"), bool):  # before dense inputs could have a wide path: the title's, or none
            head["wide"] = ["title"] if head["wide"] else []
    # Older format-1 folders, before these were recorded, predicted with the calibrated networks alone, flagged
    # every prediction for review and read the fashion catalog's columns.
    _network_alone_if_missing(old, "main_mix_weights", old.get("temperature"))
    if isinstance(old.get("no_metadata"), dict):
        old["no_metadata"] = dict(old["no_metadata"])
        _network_alone_if_missing(old["no_metadata"], "mix_weights", old["no_metadata"].get("temperature"))
    old.setdefault("review_threshold", 1.0)
    if old.get("schema") is None:
        from .schema import FASHION

        old["schema"] = FASHION.to_json()
    return {**old, "format_version": FORMAT_VERSION, "migrated_from": 1, "config": settings}


def _network_alone_if_missing(entry: dict[str, Any], key: str, temperature: Any) -> None:
    """Mix weights (mixing.py) that give the calibrated network alone, for a folder saved before its mix; left
    missing when the temperature is unusable (the checks then name the temperature)."""
    if key not in entry and _is_finite(temperature) and temperature > 0:
        entry[key] = [[1.0 / temperature, 0.0, 0.0]] * 2


# ---------------------------------------------------------------------------------------------- helpers
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def _show(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str)  # JSON spelling, as in the file: null, true, NaN, Infinity
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    if _is_number(value):
        return "a number"
    return names.get(type(value), type(value).__name__)


class _Checker:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    # ------------------------------------------------------------------ reporting
    def fail(self, file: str, problem: str, todo: str = RESTORE) -> NoReturn:
        raise ModelLoadError(f"{self.folder / file}: {problem}. {todo}")

    def need(self, ok: bool, file: str, problem: str, todo: str = RESTORE) -> None:
        if not ok:
            self.fail(file, problem, todo)

    def get(self, obj: dict[str, Any], key: str, where: str, file: str) -> Any:
        if key not in obj:
            self.fail(file, f"{where + ' ' if where else ''}has no '{key}' entry")
        return obj[key]

    def obj(self, value: Any, where: str, file: str) -> dict[str, Any]:
        self.need(isinstance(value, dict), file, f"{where} must be a JSON object, not {_kind(value)}")
        return value

    def int_at(self, value: Any, where: str, file: str, *, low: int = 0, high: int | None = None) -> int:
        ok = _is_int(value) and value >= low and (high is None or value <= high)
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        self.need(ok, file, f"{where} must be an integer {bounds}, got {_show(value)}")
        return value

    def positive_finite(self, value: Any, where: str, file: str) -> float:
        self.need(_is_finite(value) and value > 0, file,
                  f"{where} must be a positive finite number, got {_show(value)}")
        return float(value)

    def str_list(self, value: Any, where: str, file: str, *, unique: bool = False) -> list[str]:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        self.need(ok, file, f"{where} must be a list of strings, got {_show(value)}")
        if unique:
            self.need(len(set(value)) == len(value), file, f"{where} lists a name twice: {_show(value)}")
        return value

    def numbers(self, value: Any, where: str, file: str, *, length: int | None = None,
                positive: bool = False) -> list[float]:
        ok = isinstance(value, list) and all(_is_finite(v) and (not positive or v > 0) for v in value)
        what = "positive finite numbers" if positive else "finite numbers"
        self.need(ok, file, f"{where} must be a list of {what}")
        if length is not None:
            self.need(len(value) == length, file, f"{where} has {len(value)} values, expected {length}")
        return value

    # ------------------------------------------------------------------ files
    def read_json(self, name: str) -> dict[str, Any]:
        file = self.folder / name
        try:
            size = file.stat().st_size
            if size > MAX_JSON_BYTES:
                self.fail(name, f"is {size:,} bytes, far more than a model's {name} ever is")
            data = json.loads(file.read_bytes())
        except ModelLoadError:
            raise
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8; RecursionError: nesting
            self.fail(name, f"is not readable JSON ({type(exc).__name__}: {exc})")
        return self.obj(data, "the file", name)

    def inside(self, key: str, value: Any) -> Path:
        """A file named in config.json: a relative path that stays inside the folder (no '..', no absolute
        path, no symlink out), and exists."""
        self.need(isinstance(value, str) and value.strip() != "", "config.json",
                  f"'{key}' must name a file in the model folder, got {_show(value)}")
        relative = Path(value)
        self.need(not relative.is_absolute() and not relative.drive, "config.json",
                  f"'{key}' is the absolute path {value!r}; a model folder only names its own files, by relative "
                  "path, so that it can be moved")
        root = self.folder.resolve()
        target = (self.folder / relative).resolve()
        self.need(target.is_relative_to(root), "config.json",
                  f"'{key}' ({value!r}) points outside the model folder (to {target}); a model folder only reads "
                  "its own files")
        self.need(target.is_file(), "config.json", f"'{key}' names {value!r}, which is not a file in the folder")
        return target

    def sentence_folder(self, named: Any) -> None:
        """The model's copy of its sentence model (sentence.py): inside the folder, weights as safetensors, no file
        that loading could unpickle, and only sentence-transformers' own modules named in modules.json."""
        modules_file = self.inside("config.sentence_model", f"{named}/modules.json")
        folder = modules_file.parent
        self.inside("config.sentence_model", f"{named}/model.safetensors")
        pickled = sorted(p.name for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
        self.need(not pickled, str(named), f"holds {', '.join(pickled)}: a model folder never holds pickled files")
        try:
            modules = json.loads(modules_file.read_text())
        except (OSError, ValueError) as exc:
            self.fail(f"{named}/modules.json", f"cannot be read as JSON ({exc})")
        self.need(isinstance(modules, list) and all(isinstance(m, dict) for m in modules), f"{named}/modules.json",
                  "must be a list of modules")
        kinds = [m.get("type") for m in modules]
        self.need(all(isinstance(k, str) and k.startswith("sentence_transformers.") for k in kinds),
                  f"{named}/modules.json", f"names modules other than sentence-transformers' own: {kinds}")

    def tensor_header(self, name: str, file: Path | None = None) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Name -> (dtype, shape) from a safetensors header; the tensors themselves are not read."""
        from safetensors import SafetensorError, safe_open

        file = file or self.folder / name
        try:
            with safe_open(str(file), framework="numpy") as f:
                return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            self.fail(name, f"is not a readable safetensors file, it is damaged or truncated ({exc})")

    def finite_tensors(self, name: str, keys: list[str]) -> None:
        """NaN or infinite weights make every prediction NaN; reading them costs about one load of the file."""
        from safetensors import safe_open

        with safe_open(str(self.folder / name), framework="numpy") as f:
            for key in keys:
                if not np.isfinite(f.get_tensor(key)).all():
                    self.fail(name, f"tensor '{key}' has NaN or infinite values")

    # ------------------------------------------------------------------ the checks
    def run(self) -> tuple[dict[str, Any], dict[str, Any]]:
        if not self.folder.is_dir():
            raise ModelLoadError(
                f"{self.folder} is not a folder. Pass the model folder that `deepfusion train` wrote, e.g. "
                "RUN_DIR/metadata, RUN_DIR/image or RUN_DIR/fusion."
            )
        missing = [n for n in REQUIRED_FILES if not (self.folder / n).is_file()]
        if missing:
            raise ModelLoadError(
                f"{self.folder} is not a DeepFusion model folder (missing {', '.join(missing)}). Pass the folder "
                "that `deepfusion train` wrote, e.g. RUN_DIR/metadata, RUN_DIR/image or RUN_DIR/fusion."
            )
        config = self.read_json("config.json")
        version = config.get("format_version")
        self.need(version in READ_VERSIONS, "config.json",
                  f"model format {_show(version)}; this DeepFusion reads formats "
                  f"{' and '.join(map(str, READ_VERSIONS))}", RETRAIN)
        prep = self.read_json("preprocessing.json")
        config = migrate(config, prep)
        settings = self.obj(self.get(config, "config", "", "config.json"), "'config'", "config.json")
        modalities = self.modalities(settings)
        self.schema(config)
        head = self.head(settings)
        self.scalars(config, settings, modalities)
        self.networks_present(self.settings(settings), config, prep)
        classes = self.labels(prep)
        widths = self.encoder_widths(prep, modalities, config)
        text_scores = "text_scores" in prep and "title" in modalities
        if text_scores:
            widths["text_scores"] = len(classes)
        self.inputs(config, "config.json", "", list(widths), widths)
        self.network("model.safetensors", config, len(classes), head, "")
        self.mix_weights(self.get(config, "main_mix_weights", "", "config.json"), "config.json", "main_mix_weights")
        threshold = self.get(config, "review_threshold", "", "config.json")
        self.need(_is_finite(threshold) and 0 <= threshold <= 1, "config.json",
                  f"'review_threshold' must be a number between 0 and 1, got {_show(threshold)}")
        if "fallback" in config:
            self.fallback(config, modalities, widths, len(classes), head)
        if "no_metadata" in config:
            self.no_metadata(config, modalities, widths, len(classes), head)
        if text_scores:
            self.text_scores(prep, len(classes), widths)
        self.taxonomy(config, classes)  # after the shapes: a label count that disagrees is named there first
        weights = settings["image"].get("weights")
        if weights is not None:
            key = "config.image.weights"
            target = self.inside(key, weights)
            if target.suffix == ".safetensors":
                tensors = self.tensor_header(f"{weights} (named by '{key}' in config.json)", target)
                self.need("_conv_stem.weight" in tensors, str(weights),
                          f"does not hold {settings['image'].get('backbone')} backbone weights (no "
                          "'_conv_stem.weight')")
        return config, prep

    def settings(self, settings: dict[str, Any]) -> Any:
        """The whole of ``"config"`` as config.ModelConfig reads it, after the checks above named the usual
        problems one by one: unknown settings, wrong types and values are refused here."""
        from .config import ConfigError, ModelConfig

        try:
            return ModelConfig.from_json(settings)
        except (ConfigError, TypeError, ValueError, KeyError) as exc:
            self.fail("config.json", f"'config' is not a model configuration this version reads ({exc})",
                      "The model was saved by another DeepFusion; load it with that version, or train it again.")

    def networks_present(self, model: Any, config: dict[str, Any], prep: dict[str, Any]) -> None:
        """Every network and stacked SVM the configuration says the model has is in the folder."""
        self.need(not model.uses_stacking or "text_scores" in prep, "preprocessing.json",
                  "has no 'text_scores' (the stacked SVM), which the model's configuration says it has")
        for key, used in (("fallback", model.uses_title_fallback), ("no_metadata", model.uses_metadata_fallback)):
            self.need(not used or key in config, "config.json",
                      f"has no '{key}' entry (a network the model's configuration says it has)")

    def mix_weights(self, w: Any, file: str, name: str) -> None:
        """mixing.py's weights: (with or without an image) x (network, text scores, image expert)."""
        ok = (isinstance(w, list) and len(w) == 2
              and all(isinstance(r, list) and len(r) == 3 and all(_is_finite(v) for v in r) for r in w))
        self.need(ok, file, f"{name} must be 2 rows of 3 finite numbers, got {_show(w)}")

    def schema(self, config: dict[str, Any]) -> None:
        """The catalog schema the model reads (``migrate`` gives a format-1 folder saved before schemas the fashion
        columns)."""
        self.get(config, "schema", "", "config.json")
        from .schema import CatalogSchema, SchemaError

        self.need(isinstance(config["schema"], dict), "config.json", "'schema' must be an object")
        try:
            CatalogSchema.from_json(config["schema"])
        except SchemaError as exc:
            self.fail("config.json", f"'schema' is not a valid catalog schema ({exc})")

    def taxonomy(self, config: dict[str, Any], classes: list[str]) -> None:
        """A tree label's taxonomy (absent or null: a flat label) and decoding: the predicted path and every
        per-level answer are read from them, so each value must fit the classes and the schema's label columns."""
        from .taxonomy import DISPLAY_CHOICES, JOIN, Taxonomy

        tree = (config.get("config") or {}).get("tree") or {}
        decode = tree.get("decode", "path") if isinstance(tree, dict) else None
        self.need(decode in ("path", "top_down"), "config.json",
                  f"'decode' (config.tree.decode) must be \"path\" or \"top_down\", got {_show(decode)}")
        saved = config.get("taxonomy")
        if saved is None:
            return
        saved = self.obj(saved, "'taxonomy'", "config.json")
        columns = self.str_list(saved.get("columns", []), "taxonomy.columns", "config.json", unique=True)
        paths = self.str_list(self.get(saved, "paths", "'taxonomy'", "config.json"), "taxonomy.paths",
                              "config.json", unique=True)
        self.need(set(paths) == set(classes), "config.json",
                  "the taxonomy's paths are not the model's classes (labels.classes in preprocessing.json)")
        sep, display = saved.get("sep"), saved.get("display")
        self.need(sep is None or (isinstance(sep, str) and sep != ""), "config.json",
                  f"taxonomy.sep must be null or a separator, got {_show(sep)}")
        # The joiners Taxonomy.fit writes: one of DISPLAY_CHOICES (or JOIN) for label columns, the separator as
        # the labels spell it (with or without spaces) for a path label.
        joiners = (*DISPLAY_CHOICES, JOIN) if columns else (" > ",) if sep is None else (sep, f" {sep} ")
        self.need(display in joiners, "config.json",
                  f"taxonomy.display must be one of {_show(list(joiners))}, got {_show(display)}")
        if saved.get("depth") is not None:
            self.int_at(saved["depth"], "taxonomy.depth", "config.json", low=1)
        self.int_at(saved.get("min_count", 1), "taxonomy.min_count", "config.json", low=1)
        self.obj(saved.get("merged", {}), "taxonomy.merged", "config.json")
        levels = list((config.get("schema") or {}).get("levels") or [])
        if columns or levels:
            self.need(columns == levels, "config.json",
                      f"taxonomy.columns {_show(columns)} are not the schema's label columns {_show(levels)}")
        tax = Taxonomy.from_json(saved)
        if tax.is_tree:
            parts = [tax.split(c) for c in classes]
            self.need(all(all(p) and len(p) <= tax.n_levels for p in parts), "config.json",
                      f"a class is not a path of at most {tax.n_levels} levels joined by {_show(tax.display)}")

    def modalities(self, config: dict[str, Any]) -> list[str]:
        value = self.get(config, "modalities", "", "config.json")
        names = self.str_list(value, "'modalities'", "config.json", unique=True)
        unknown = [m for m in names if m not in MODALITIES]
        self.need(bool(names) and not unknown, "config.json",
                  f"'modalities' must be a non-empty list of {', '.join(MODALITIES)}; got {_show(value)}")
        return names

    def head(self, config: dict[str, Any]) -> Any:
        from .config import COMBINERS, PRESETS, HeadConfig

        head = self.obj(self.get(config, "head", "", "config.json"), "'head'", "config.json")
        known = {f.name for f in dataclasses.fields(HeadConfig)}
        extra = sorted(set(head) - known)
        self.need(not extra, "config.json", f"'head' has settings this version does not know: {', '.join(extra)}",
                  "The model was saved by a newer DeepFusion; load it with that version, or train it again.")
        for key in ("preset", "encoder_dim", "hidden", "batch_norm", "combiner"):
            self.get(head, key, "'head'", "config.json")
        self.need(head["preset"] in PRESETS, "config.json",
                  f"head.preset must be one of {', '.join(PRESETS)}, got {_show(head['preset'])}")
        self.int_at(head["encoder_dim"], "head.encoder_dim", "config.json", low=1)
        hidden = head["hidden"]
        self.need(isinstance(hidden, list) and all(_is_int(h) and h > 0 for h in hidden), "config.json",
                  f"head.hidden must be a list of positive integers (layer widths), got {_show(hidden)}")
        self.need(head["combiner"] in COMBINERS, "config.json",
                  f"head.combiner must be one of {', '.join(COMBINERS)}, got {_show(head['combiner'])}")
        self.need(isinstance(head["batch_norm"], bool), "config.json",
                  f"head.batch_norm must be true or false, got {_show(head['batch_norm'])}")
        wide = head.get("wide", [])
        self.need(isinstance(wide, bool) or (isinstance(wide, list) and all(isinstance(w, str) for w in wide)),
                  "config.json", f"head.wide must be a list of input names, got {_show(wide)}")
        if "members" in head:
            self.int_at(head["members"], "head.members", "config.json", low=1, high=1000)
        for key in ("dropout", "input_dropout", "label_smoothing", "modality_dropout"):
            if key in head:
                self.need(_is_finite(head[key]) and 0 <= head[key] < 1, "config.json",
                          f"head.{key} must be a number in [0, 1), got {_show(head[key])}")
        for key in ("epochs", "batch_size", "min_epochs"):
            if key in head:
                self.int_at(head[key], f"head.{key}", "config.json", low=0)
        if head.get("patience") is not None:
            self.int_at(head["patience"], "head.patience", "config.json", low=0)
        for key in ("lr", "weight_decay"):
            if key in head:
                self.need(_is_finite(head[key]) and head[key] >= 0, "config.json",
                          f"head.{key} must be a non-negative number, got {_show(head[key])}")
        if "balance" in head:
            self.need(isinstance(head["balance"], str), "config.json",
                      f"head.balance must be a string, got {_show(head['balance'])}")
        try:
            return HeadConfig.from_json(head)
        except (TypeError, ValueError) as exc:  # a combination the checks above did not foresee
            self.fail("config.json", f"'head' does not describe a network ({exc})")

    def scalars(self, config: dict[str, Any], settings: dict[str, Any], modalities: list[str]) -> None:
        from .backbones import BackboneError, get_backbone

        self.int_at(self.get(settings, "seed", "'config'", "config.json"), "'seed'", "config.json")
        self.positive_finite(self.get(config, "temperature", "", "config.json"), "'temperature'",
                             "config.json")
        counts = self.obj(self.get(config, "train_counts", "", "config.json"), "'train_counts'",
                          "config.json")
        self.need(all(_is_int(v) and v >= 0 for v in counts.values()), "config.json",
                  "'train_counts' must map each class to its number of training products")
        image = self.obj(self.get(settings, "image", "'config'", "config.json"), "config.image", "config.json")
        if "views" in image:
            self.int_at(image["views"], "'config.image.views'", "config.json", low=0)
        if "field_blanking" in settings:
            self.need(_is_finite(settings["field_blanking"]) and settings["field_blanking"] >= 0, "config.json",
                      f"'field_blanking' must be a non-negative number, got {_show(settings['field_blanking'])}")
        for key in ("history", "member_best_epochs"):
            if key in config:
                self.need(isinstance(config[key], list), "config.json", f"'{key}' must be a list")
        size = image.get("size")
        if size is not None:
            ok = (isinstance(size, list) and len(size) == 2
                  and all(_is_int(v) and 1 <= v <= MAX_IMAGE_SIDE for v in size))
            self.need(ok, "config.json", f"'image_size' (config.image.size) must be null or [height, width] in "
                                         f"pixels (each 1 to {MAX_IMAGE_SIDE}), got {_show(size)}")
        if "image" in modalities:
            name = self.get(image, "backbone", "config.image", "config.json")
            self.need(isinstance(name, str), "config.json", f"'backbone' must be a backbone name, got {_show(name)}")
            try:
                get_backbone(name)
            except BackboneError as exc:
                self.fail("config.json", f"{exc}", "The model needs a backbone this version of DeepFusion does not "
                          "have; load it with the version that trained it, or train it again.")

    def labels(self, prep: dict[str, Any]) -> list[str]:
        labels = self.obj(self.get(prep, "labels", "", "preprocessing.json"), "'labels'",
                          "preprocessing.json")
        classes = self.str_list(self.get(labels, "classes", "'labels'", "preprocessing.json"), "labels.classes",
                                "preprocessing.json", unique=True)
        self.need(bool(classes), "preprocessing.json", "labels.classes is empty")
        return classes

    def encoder_widths(self, prep: dict[str, Any], modalities: list[str], config: dict[str, Any]) -> dict[str, int]:
        """Each modality's encoder state, checked, and the number of features it produces."""
        file = "preprocessing.json"
        widths: dict[str, int] = {}
        for name in modalities:
            if name not in prep:
                self.fail(file, f"has no '{name}' encoder, but config.json lists the {name} modality")
            self.obj(prep[name], f"'{name}'", file)
        if "metadata" in modalities:
            m = prep["metadata"]
            categorical = self.str_list(self.get(m, "categorical", "'metadata'", file), "metadata.categorical", file)
            self.str_list(self.get(m, "numeric", "'metadata'", file), "metadata.numeric", file)
            categories = self.get(m, "categories", "'metadata'", file)
            ok = (isinstance(categories, list) and len(categories) == len(categorical)
                  and all(isinstance(c, list) and c and all(isinstance(v, str) for v in c) for c in categories))
            self.need(ok, file, "metadata.categories must hold one non-empty list of category names per "
                                "categorical field")
            medians = self.obj(self.get(m, "medians", "'metadata'", file), "metadata.medians", file)
            self.need(all(_is_finite(v) for v in medians.values()), file, "metadata.medians must be finite numbers")
            missing = [c for c in m["numeric"] if c not in medians]
            self.need(not missing, file, f"metadata.medians has no median for {', '.join(missing)}")
            mean = self.numbers(self.get(m, "scaler_mean", "'metadata'", file), "metadata.scaler_mean", file)
            self.numbers(self.get(m, "scaler_scale", "'metadata'", file), "metadata.scaler_scale", file,
                         length=len(mean), positive=True)
            self.numbers(self.get(m, "scaler_var", "'metadata'", file), "metadata.scaler_var", file, length=len(mean))
            if "missing_indicators" in m:
                self.need(isinstance(m["missing_indicators"], bool), file,
                          "metadata.missing_indicators must be true or false")
            from .features import MetadataEncoder

            try:  # cheap (it fits a one-hot encoder on the category lists), and knows the encoder's own layout
                encoder = MetadataEncoder.from_json(m)
            except (KeyError, TypeError, ValueError) as exc:
                self.fail(file, f"the metadata encoder cannot be rebuilt ({type(exc).__name__}: {exc})")
            self.need(len(encoder.numeric_features) == len(mean), file,
                      f"metadata.scaler_mean has {len(mean)} values, but the encoder has "
                      f"{len(encoder.numeric_features)} numeric features ({', '.join(encoder.numeric_features)})")
            widths["metadata"] = encoder.n_features
        if "title" in modalities:
            t = prep["title"]
            for key in ("max_word_features", "max_char_features"):
                self.int_at(self.get(t, key, "'title'", file), f"title.{key}", file, low=1)
            vocabularies = self.get(t, "vocabularies", "'title'", file)
            idfs = self.get(t, "idfs", "'title'", file)
            self.need(isinstance(vocabularies, list) and len(vocabularies) == 2
                      and all(isinstance(v, dict) for v in vocabularies), file,
                      "title.vocabularies must be two objects (word and character n-grams -> column)")
            self.need(isinstance(idfs, list) and len(idfs) == 2, file, "title.idfs must be two lists of weights")
            for i, (vocab, idf) in enumerate(zip(vocabularies, idfs, strict=True)):
                columns = sorted(vocab.values()) if all(_is_int(v) for v in vocab.values()) else None
                self.need(columns == list(range(len(vocab))), file,
                          f"title.vocabularies[{i}] must number its n-grams 0, 1, 2, ... without gaps")
                self.numbers(idf, f"title.idfs[{i}]", file, length=len(vocab), positive=True)
            widths["title"] = sum(len(v) for v in vocabularies)
            sentence = t.get("sentence")
            named = config["config"].get("sentence_model")
            self.need((sentence is None) == (named is None), file,
                      "title.sentence and config.sentence_model must be given together (the title's sentence model)")
            if sentence is not None:
                self.obj(sentence, "title.sentence", file)
                dim = self.int_at(self.get(sentence, "dim", "title.sentence", file), "title.sentence.dim", file,
                                  low=1)
                self.need(_is_finite(sentence.get("weight")) and sentence["weight"] > 0, file,
                          f"title.sentence.weight must be a positive number, got {_show(sentence.get('weight'))}")
                self.sentence_folder(named)
                widths["title"] += dim
        if "image" in modalities:
            from .backbones import get_backbone

            dim = get_backbone(config["config"]["image"]["backbone"]).feature_dim
            image = prep["image"]
            self.numbers(self.get(image, "mean", "'image'", file), "image.mean", file, length=dim)
            self.numbers(self.get(image, "std", "'image'", file), "image.std", file, length=dim, positive=True)
            widths["image"] = dim
        return widths

    def inputs(self, saved: dict[str, Any], file: str, where: str, names: list[str], widths: dict[str, int]) -> None:
        """``input_dims`` (name -> width) and ``sparse_inputs`` of one network, against the encoders."""
        dims = self.obj(self.get(saved, "input_dims", where.rstrip("."), file), f"{where}input_dims", file)
        self.need(sorted(dims) == sorted(names), file,
                  f"{where}input_dims lists the inputs {sorted(dims)}, but the modalities and preprocessing.json "
                  f"give {sorted(names)}")
        for name, dim in dims.items():
            self.int_at(dim, f"{where}input_dims.{name}", file, low=1)
            source = (f"preprocessing.json lists {widths[name]} labels (the stacked text model scores each)"
                      if name == "text_scores" else
                      f"the {name} encoder in preprocessing.json produces {widths[name]} features")
            self.need(dim == widths[name], file, f"{where}input_dims.{name} is {dim}, but {source}")
        sparse = self.str_list(self.get(saved, "sparse_inputs", where.rstrip("."), file),
                               f"{where}sparse_inputs", file)
        self.need(set(sparse) <= set(dims), file, f"{where}sparse_inputs names inputs the network does not have")

    def fallback(self, config: dict[str, Any], modalities: list[str], widths: dict[str, int], n_classes: int,
                 head: Any) -> None:
        fallback = self.obj(config["fallback"], "'fallback'", "config.json")
        names = self.str_list(self.get(fallback, "modalities", "'fallback'", "config.json"), "fallback.modalities",
                              "config.json", unique=True)
        ok = bool(names) and set(names) <= set(modalities) and "title" not in names
        self.need(ok, "config.json", "fallback.modalities must be the model's modalities other than the title, "
                                     f"got {_show(names)}")
        self.positive_finite(self.get(fallback, "temperature", "'fallback'", "config.json"),
                             "fallback.temperature", "config.json")
        self.inputs(fallback, "config.json", "fallback.", names, widths)
        if not (self.folder / "fallback.safetensors").is_file():
            self.fail("fallback.safetensors", "is missing (the network for products without a title)")
        self.network("fallback.safetensors", fallback, n_classes, head, "fallback.")

    def network(self, name: str, saved: dict[str, Any], n_classes: int, head: Any, where: str) -> None:
        """The tensors in ``name`` are exactly those of the network that config.json describes."""
        import torch

        from .models import ModalitySpec, build_network

        specs = [ModalitySpec(n, d, n in saved["sparse_inputs"]) for n, d in saved["input_dims"].items()]
        with torch.device("meta"):  # shapes only: nothing is allocated, whatever sizes the config claims
            expected = {k: tuple(v.shape) for k, v in build_network(specs, n_classes, head).state_dict().items()}
        found = self.tensor_header(name)
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        if missing or extra:
            parts = ([f"lacks {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"] if missing else []) + (
                [f"has {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''} that it does not describe"]
                if extra else [])
            self.fail(name, f"does not hold the network config.json describes ({where}input_dims, "
                            f"{where}sparse_inputs, head): it {' and '.join(parts)}")
        for key, shape in expected.items():
            dtype, got = found[key]
            # Batch norm counts its updates in an integer buffer; every other tensor is a float.
            integer_ok = key.endswith("num_batches_tracked") and dtype in ("I64", "I32")
            self.need(dtype in FLOAT_DTYPES or integer_ok, name, f"tensor '{key}' is {dtype}, not floating point")
            if got != shape:
                self.fail(name, self._explain(key, got, shape, n_classes, specs, where))
        self.finite_tensors(name, list(expected))

    @staticmethod
    def _explain(key: str, got: tuple[int, ...], want: tuple[int, ...], n_classes: int, specs: list[Any],
                 where: str) -> str:
        """Which setting a shape mismatch points at: an input width, the label count, or the head."""
        base = f"tensor '{key}' has shape {list(got)}, but config.json and preprocessing.json describe {list(want)}"
        input_axis = class_axis = None
        match = re.fullmatch(r"(?:members\.\d+\.)?(encoders|wide)\.(\w+)\.(?:project\.)?weight", key)
        if match:
            spec = next((s for s in specs if s.name == match.group(2)), None)
            if spec is not None:
                # EmbeddingBag weights are (inputs, outputs), Linear weights (outputs, inputs).
                input_axis = 0 if spec.sparse else 1
                class_axis = 1 - input_axis if match.group(1) == "wide" else None
        elif re.fullmatch(r"(?:members\.\d+\.)?classifier\.\d+\.(weight|bias)", key) and want[0] == n_classes:
            class_axis = 0
        if len(got) == len(want):
            if input_axis is not None and got[input_axis] != want[input_axis]:
                name = match.group(2) if match else ""
                return (f"{base}: the weights were trained on {got[input_axis]} {name} features, but "
                        f"{where}input_dims.{name} is {want[input_axis]}")
            if class_axis is not None and got[class_axis] != want[class_axis]:
                return (f"{base}: the network scores {got[class_axis]} classes, but preprocessing.json lists "
                        f"{n_classes} labels")
        return f"{base}: the head settings in config.json (encoder_dim, hidden, combiner, members) do not match"

    def no_metadata(self, config: dict[str, Any], modalities: list[str], widths: dict[str, int], n_classes: int,
                    head: Any) -> None:
        """The route for products with a title but no attribute, as ``Predictor.save`` writes it under config.json
        'no_metadata': its title-only SVM (title_scores.safetensors), title + image model and calibration, and in
        models saved by earlier versions a network (no_metadata.safetensors) and an image expert."""
        file = "config.json"
        saved = self.obj(config["no_metadata"], "'no_metadata'", file)
        self.need("metadata" in modalities and "title" in modalities, file,
                  "'no_metadata' describes the route for titled products without metadata, but the model's "
                  f"modalities are {_show(modalities)}")
        names = self.str_list(self.get(saved, "modalities", "'no_metadata'", file), "no_metadata.modalities", file,
                              unique=True)
        ok = "title" in names and "metadata" not in names and set(names) <= set(modalities)
        self.need(ok, file, "no_metadata.modalities must be the model's modalities other than the metadata, got "
                            f"{_show(names)}")
        weights = self.get(saved, "mix_weights", "'no_metadata'", file)
        self.mix_weights(weights, file, "no_metadata.mix_weights")
        has_network = "input_dims" in saved
        if has_network:
            self.positive_finite(self.get(saved, "temperature", "'no_metadata'", file), "no_metadata.temperature",
                                 file)
            if "member_best_epochs" in saved:
                self.need(isinstance(saved["member_best_epochs"], list), file,
                          "no_metadata.member_best_epochs must be a list")
            # Its text scores are the title-only SVM's: one per label, whether or not the main network stacks one.
            self.inputs(saved, file, "no_metadata.", [*names, "text_scores"], {**widths, "text_scores": n_classes})
            if not (self.folder / "no_metadata.safetensors").is_file():
                self.fail("no_metadata.safetensors", "is missing (the network for products with a title but no "
                                                     "metadata, named by config.json 'no_metadata')")
            self.network("no_metadata.safetensors", saved, n_classes, head, "no_metadata.")
        for column, name, present in ((0, "a network", has_network), (2, "an image expert", "image_expert" in saved)):
            self.need(present or not any(row[column] for row in weights), file,
                      f"no_metadata.mix_weights weigh {name} that config.json 'no_metadata' does not describe")
        if "image_expert" in saved:
            expert = self.obj(saved["image_expert"], "'no_metadata.image_expert'", file)
            self.need("image" in modalities, file, "no_metadata.image_expert is an image network, but the model "
                                                   f"reads no image (modalities {_show(modalities)})")
            self.positive_finite(self.get(expert, "temperature", "'no_metadata.image_expert'", file),
                                 "no_metadata.image_expert.temperature", file)
            self.inputs(expert, file, "no_metadata.image_expert.", ["image"], widths)
            if not (self.folder / "image_expert.safetensors").is_file():
                self.fail("image_expert.safetensors", "is missing (the image-only network that config.json "
                                                      "'no_metadata.image_expert' names)")
            self.network("image_expert.safetensors", expert, n_classes, head, "no_metadata.image_expert.")
        if "title_image_scores" in saved:
            self.need("image" in modalities, file, "no_metadata.title_image_scores reads the image, but the model "
                                                   f"reads no image (modalities {_show(modalities)})")
            state = self.obj(saved["title_image_scores"], "no_metadata.title_image_scores", file)
            self.score_model(state, file, "no_metadata.title_image_scores", "title_image_scores.safetensors",
                             "the title + image linear model that config.json 'no_metadata' names", n_classes,
                             widths["title"] + widths.get("image", 0), "title + image")
        state = self.obj(self.get(saved, "text_scores", "'no_metadata'", file), "no_metadata.text_scores", file)
        self.score_model(state, file, "no_metadata.text_scores", "title_scores.safetensors",
                         "the title-only text model that config.json 'no_metadata' names", n_classes,
                         widths["title"], "title")

    def text_scores(self, prep: dict[str, Any], n_classes: int, widths: dict[str, int]) -> None:
        file = "preprocessing.json"
        state = self.obj(prep["text_scores"], "'text_scores'", file)
        self.score_model(state, file, "text_scores", "text_scores.safetensors",
                         "the stacked text model that preprocessing.json names", n_classes,
                         widths["title"] + widths.get("metadata", 0), "title + metadata")

    def score_model(self, state: dict[str, Any], file: str, where: str, name: str, what: str, n_classes: int,
                    width: int, features: str) -> None:
        """A ``TextScoreModel``: its settings ``state`` (at ``where`` in ``file``) and its tensors in ``name``."""
        for key in ("C", "floor"):
            self.need(_is_finite(self.get(state, key, f"'{where}'", file)), file,
                      f"{where}.{key} must be a finite number")
        for key in ("folds", "seed"):
            self.int_at(self.get(state, key, f"'{where}'", file), f"{where}.{key}", file)
        self.positive_finite(self.get(state, "scale", f"'{where}'", file), f"{where}.scale", file)
        if not (self.folder / name).is_file():
            self.fail(name, f"is missing ({what})")
        expected = {"coef": (n_classes, width), "intercept": (n_classes,)}
        found = self.tensor_header(name)
        for key, shape in expected.items():
            self.need(key in found, name, f"has no '{key}' tensor")
            dtype, got = found[key]
            self.need(dtype in FLOAT_DTYPES, name, f"tensor '{key}' is {dtype}, not floating point")
            self.need(got == shape, name, f"tensor '{key}' has shape {list(got)}, but {n_classes} labels and "
                                          f"{width} {features} features give {list(shape)}")
        self.finite_tensors(name, list(expected))
