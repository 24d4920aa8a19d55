"""One typed, frozen description of a model: what it reads, its networks, its image pipeline and how it is fitted.

    config = ModelConfig.create(["metadata", "title", "image"], preset="regularized", head={"members": 1})
    Predictor.from_config(config).fit(train, val)

A ``ModelConfig`` is built once (``ModelConfig.create`` checks every value, ``Predictor.fit`` builds it from the
Predictor's parameters, the CLI from its options), passed whole, and written verbatim under ``"config"`` in the
model folder's ``config.json`` (format 2, model_files.py); ``Predictor.load`` reads it back with ``from_json``.

It holds the user's choices, not what fitting found (temperatures, epochs, encoders: those are the Predictor's
``*_`` attributes). A choice that does not apply to the modalities (stacking for a model without a title) is kept
as given and reads as off through the ``uses_*`` properties, so one template serves the metadata, image and fusion
models of a run (``with_modalities``).

This module imports nothing heavy: the CLI builds its defaults from it before any data is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

MODALITIES = ("metadata", "title", "image")
DECODERS = ("path", "top_down")  # taxonomy.py: the most probable whole path, or the best node level by level
COMBINERS = ("concat", "gated")
BALANCES = ("none", "sqrt", "inverse", "sampler")
DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_MIN_CLASS_SIZE = 2  # a category path with fewer training products backs off to its parent
# (2, not 5, since 2026-12-05: benchmarks/category_tree.md "min class size 2"; models saved before record theirs)
FORMAT1_MIN_CLASS_SIZE = 5  # what format-1 code backed off below, for a format-1 folder that does not say


class ConfigError(ValueError):
    """A model configuration value that cannot be used; the message says which and what is allowed."""


@dataclass(frozen=True)
class HeadConfig:
    """Architecture and training hyperparameters of a network. Presets follow the reference study's diagnostic
    trio (small / overfit / regularized)."""

    preset: str = "regularized"
    encoder_dim: int = 256
    hidden: tuple[int, ...] = (512,)
    dropout: float = 0.3
    input_dropout: float = 0.2  # on image embeddings only (dropout on one-hot metadata hurt accuracy)
    batch_norm: bool = True
    weight_decay: float = 1e-4
    lr: float = 2e-3
    epochs: int = 40
    batch_size: int = 256
    patience: int | None = 8
    # Early stopping may only end training after this many epochs: with the one-cycle schedule the validation
    # score is noisy while the learning rate is high (docs/experiments.md).
    min_epochs: int = 30
    label_smoothing: float = 0.0
    modality_dropout: float = 0.15
    combiner: str = "concat"
    # Wide & Deep: these inputs also get a direct linear path to the logits, so the network keeps a linear
    # classifier's strength. Not the image: a linear map of the image features overfits (docs/experiments.md).
    wide: tuple[str, ...] = ("title", "metadata", "text_scores")
    # Ensemble: this many networks trained from seeds seed, seed + 1, ... in parallel threads, one per CPU core;
    # the prediction is the mean of their logits.
    members: int = 2
    # Class imbalance: none | sqrt | inverse (loss weights ~ count^-1/2 or ^-1) | sampler (sqrt-weighted sampling).
    # None of them beat plain cross-entropy beyond run-to-run noise (benchmarks/RESULTS.md), so the default is none.
    balance: str = "none"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden), "wide": list(self.wide)}

    @classmethod
    def from_json(cls, state: Mapping[str, Any]) -> HeadConfig:
        return cls(**{**state, "hidden": tuple(state["hidden"]), "wide": tuple(state.get("wide", ()))})


PRESETS: dict[str, HeadConfig] = {
    # End-to-end check: a narrow network trained briefly.
    "small": HeadConfig(
        preset="small", encoder_dim=32, hidden=(64,), dropout=0.0, input_dropout=0.0, batch_norm=False,
        weight_decay=0.0, epochs=8, patience=None, label_smoothing=0.0, modality_dropout=0.0, wide=("title",),
        members=1,
    ),
    # Diagnostic: large and unregularized; it should (nearly) memorise the training set.
    "overfit": HeadConfig(
        preset="overfit", encoder_dim=512, hidden=(1024, 512), dropout=0.0, input_dropout=0.0, batch_norm=False,
        weight_decay=0.0, lr=1e-3, epochs=80, patience=None, label_smoothing=0.0, modality_dropout=0.0,
        balance="none", wide=("title",), members=1,
    ),
    # The model to use: dropout, batch norm, weight decay, early stopping on validation, two networks averaged.
    "regularized": HeadConfig(),
}


def make_config(preset: str, **overrides: Any) -> HeadConfig:
    """The preset's HeadConfig with ``overrides`` replacing its fields (every given value is used: pass only what
    you mean to change; ``patience=None`` turns early stopping off)."""
    if preset not in PRESETS:
        raise ConfigError(f"Unknown preset '{preset}'. Choose one of: {', '.join(PRESETS)}")
    known = {f.name for f in fields(HeadConfig)} - {"preset"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"Unknown network settings {unknown}. Known: {', '.join(sorted(known))}")
    if overrides.get("combiner", "concat") not in COMBINERS:
        raise ConfigError(f"Unknown combiner '{overrides['combiner']}'. Choose one of: {', '.join(COMBINERS)}")
    if overrides.get("balance", "none") not in BALANCES:
        raise ConfigError(f"Unknown balance '{overrides['balance']}'. Choose one of: {', '.join(BALANCES)}")
    if "hidden" in overrides:
        overrides["hidden"] = tuple(overrides["hidden"])
    if "wide" in overrides:
        overrides["wide"] = tuple(overrides["wide"])
    return replace(PRESETS[preset], **overrides)


def parse_modalities(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"metadata,title"`` or a sequence, as a tuple in canonical order; unknown names are a ConfigError."""
    items = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    unknown = [m for m in items if m not in MODALITIES]
    if unknown or not items:
        raise ConfigError(f"Unknown modalities {unknown or items}. Choose from: {', '.join(MODALITIES)}")
    return tuple(m for m in MODALITIES if m in items)


@dataclass(frozen=True)
class ImageConfig:
    """How images become network inputs: the backbone, its weights and input size, augmented views, fine-tuning.
    ``weights``: a state-dict file for the backbone (None: the packaged ImageNet weights); in a saved model it is
    the folder's own copy, ``backbone.safetensors``."""

    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    size: tuple[int, int] | None = None  # (height, width); None: the backbone's default
    views: int = 0  # augmented views of each training image, added as training rows
    finetune_blocks: int = 0  # the backbone's last blocks fine-tuned before training (0: frozen)
    finetune_epochs: int = 3


@dataclass(frozen=True)
class TreeConfig:
    """A label that is a category path (taxonomy.py): train on its first ``depth`` levels (None: all), back paths
    with fewer than ``min_class_size`` training products off to their parent, decode by ``decode``."""

    depth: int | None = None
    min_class_size: int = DEFAULT_MIN_CLASS_SIZE
    decode: str = "path"


@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides what a model is; see the module docstring and ``Predictor``'s parameters."""

    modalities: tuple[str, ...] = ("metadata",)
    head: HeadConfig = field(default_factory=HeadConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    tree: TreeConfig = field(default_factory=TreeConfig)
    stacking: bool = True  # a linear SVM's class scores on title + metadata as one more network input
    title_fallback: bool = True  # a second network for products without a title
    metadata_fallback: bool = True  # linear models (title SVM, title + image SVM) for products without attributes
    refit: bool = False  # after early stopping and calibration, train again on train + validation
    field_blanking: float = 0.5  # blanked training copies per product (missing.py); 0 turns them off
    review_precision: float = 0.98  # needs_review below the confidence validation products were right this often
    # A pretrained sentence model whose embedding of the title joins its TF-IDF (sentence.py): a folder, or a name
    # (all-MiniLM-L6-v2 from the `sentence` extra); None: TF-IDF only; "auto": the packaged one for a model that
    # reads text and no image, where installed. A fitted model's config holds the choice made (sentence.choose),
    # and a saved one names its own copy.
    sentence_model: str | None = "auto"
    seed: int = 42

    def __post_init__(self) -> None:
        _check(self)

    # ------------------------------------------------------------------ what applies to these modalities
    @property
    def uses_stacking(self) -> bool:
        return self.stacking and "title" in self.modalities

    @property
    def fallback_modalities(self) -> tuple[str, ...]:
        """The no-title network's inputs."""
        return tuple(m for m in self.modalities if m != "title")

    @property
    def uses_title_fallback(self) -> bool:
        return self.title_fallback and "title" in self.modalities and bool(self.fallback_modalities)

    @property
    def no_metadata_modalities(self) -> tuple[str, ...]:
        """The no-metadata route's inputs."""
        return tuple(m for m in self.modalities if m != "metadata")

    @property
    def uses_metadata_fallback(self) -> bool:
        return self.metadata_fallback and "metadata" in self.modalities and "title" in self.modalities

    def with_modalities(self, modalities: str | Sequence[str]) -> ModelConfig:
        return replace(self, modalities=parse_modalities(modalities))

    # ------------------------------------------------------------------ building and saving
    @classmethod
    def create(
        cls,
        modalities: str | Sequence[str] = ("metadata",),
        *,
        preset: str = "regularized",
        head: Mapping[str, Any] | HeadConfig | None = None,
        backbone: str = DEFAULT_BACKBONE,
        weights: str | None = None,
        image_size: Sequence[int] | None = None,
        augment_views: int = 0,
        finetune_blocks: int = 0,
        finetune_epochs: int = 3,
        depth: int | None = None,
        min_class_size: int = DEFAULT_MIN_CLASS_SIZE,
        decode: str = "path",
        **choices: Any,
    ) -> ModelConfig:
        """A checked configuration from flat settings (the Predictor's parameters): ``head`` replaces fields of
        the preset's network settings; ``choices`` are ModelConfig's own fields (stacking, refit, seed, ...)."""
        unknown = sorted(set(choices) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"Unknown model settings {unknown}.")
        head_config = head if isinstance(head, HeadConfig) else make_config(preset, **dict(head or {}))
        if isinstance(choices.get("sentence_model"), str) and choices["sentence_model"].lower() == "none":
            choices["sentence_model"] = None  # the CLI's word for TF-IDF alone
        return cls(
            modalities=parse_modalities(modalities),
            head=head_config,
            image=ImageConfig(
                backbone=backbone,
                weights=None if weights is None else str(weights),
                size=None if image_size is None else (int(image_size[0]), int(image_size[1])),
                views=augment_views,
                finetune_blocks=finetune_blocks,
                finetune_epochs=finetune_epochs,
            ),
            tree=TreeConfig(depth=depth, min_class_size=min_class_size, decode=decode),
            **choices,
        )

    def to_json(self) -> dict[str, Any]:
        image = asdict(self.image)
        image["size"] = list(self.image.size) if self.image.size else None
        return {
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("head", "image", "tree")},
            "modalities": list(self.modalities),
            "head": self.head.to_json(),
            "image": image,
            "tree": asdict(self.tree),
        }

    @classmethod
    def from_json(cls, state: Mapping[str, Any]) -> ModelConfig:
        """The configuration ``to_json`` wrote; unknown keys are an error (a newer DeepFusion wrote them)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(state) - known)
        if unknown:
            raise ConfigError(f"settings this version does not know: {', '.join(unknown)}")
        image, tree = dict(state.get("image") or {}), dict(state.get("tree") or {})
        for part, cls_ in ((image, ImageConfig), (tree, TreeConfig)):
            extra = sorted(set(part) - {f.name for f in fields(cls_)})
            if extra:
                raise ConfigError(f"settings this version does not know: {', '.join(extra)}")
        if image.get("size") is not None:
            image["size"] = tuple(image["size"])
        rest = {k: v for k, v in state.items() if k not in ("modalities", "head", "image", "tree")}
        rest.setdefault("sentence_model", None)  # written before the sentence model existed: TF-IDF alone
        return cls(
            modalities=tuple(state["modalities"]),
            head=HeadConfig.from_json(state["head"]),
            image=ImageConfig(**image),
            tree=TreeConfig(**tree),
            **rest,
        )


def _check(config: ModelConfig) -> None:
    """Every value of a ModelConfig usable, else a ConfigError naming it."""
    mods = config.modalities
    if not isinstance(mods, tuple) or not mods or any(m not in MODALITIES for m in mods) or len(set(mods)) != len(
        mods
    ):
        raise ConfigError(f"modalities must be a non-empty subset of {', '.join(MODALITIES)}, got {mods!r}")
    if config.head.preset not in PRESETS:
        raise ConfigError(f"Unknown preset '{config.head.preset}'. Choose one of: {', '.join(PRESETS)}")
    if config.head.combiner not in COMBINERS:
        raise ConfigError(f"Unknown combiner '{config.head.combiner}'. Choose one of: {', '.join(COMBINERS)}")
    for name in ("stacking", "title_fallback", "metadata_fallback", "refit"):
        if not isinstance(getattr(config, name), bool):
            raise ConfigError(f"{name} must be true or false, got {getattr(config, name)!r}")
    if not isinstance(config.seed, int) or isinstance(config.seed, bool) or config.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {config.seed!r}")
    if not 0 <= config.field_blanking <= 4:
        raise ConfigError(f"field_blanking must be between 0 and 4 copies per product, got {config.field_blanking}")
    if not 0 <= config.review_precision <= 1:
        raise ConfigError(f"review_precision must be between 0 and 1, got {config.review_precision}")
    if config.sentence_model is not None and (not isinstance(config.sentence_model, str) or not config.sentence_model):
        raise ConfigError(f"sentence_model must be a model name or folder, got {config.sentence_model!r}")
    image = config.image
    if image.size is not None and (len(image.size) != 2 or not all(1 <= int(s) <= 4096 for s in image.size)):
        raise ConfigError(f"image size must be (height, width) in pixels, got {image.size!r}")
    if image.views < 0 or image.finetune_blocks < 0 or image.finetune_epochs < 1:
        raise ConfigError("augmented views and fine-tuned blocks must be >= 0 and fine-tuning epochs >= 1")
    tree = config.tree
    if tree.decode not in DECODERS:
        raise ConfigError(f"decode must be one of {', '.join(DECODERS)}, not {tree.decode!r}")
    if tree.depth is not None and tree.depth < 1:
        raise ConfigError(f"depth must be at least 1, not {tree.depth}")
    if tree.min_class_size < 1:
        raise ConfigError(f"min_class_size must be at least 1, not {tree.min_class_size}")


RUNTIME_OPTIONS = ("schema", "embedder", "cache_dir", "progress")  # Predictor parameters that are not the model's


def config_from_options(
    modalities: str | Sequence[str], *, preset: str = "regularized", seed: int = 42, **options: Any
) -> tuple[ModelConfig, dict[str, Any]]:
    """Flat keyword options, as ``audit.audit_catalog`` takes them (Predictor parameters and HeadConfig fields
    mixed, e.g. ``image_size=(64, 48), epochs=20, cache_dir=...``), as one ModelConfig and the options that are
    not the model's (``RUNTIME_OPTIONS``)."""
    head_fields = {f.name for f in fields(HeadConfig)} - {"preset"}
    runtime = {k: options.pop(k) for k in RUNTIME_OPTIONS if k in options}
    head = {k: options.pop(k) for k in list(options) if k in head_fields}
    return ModelConfig.create(modalities, preset=preset, seed=seed, head=head, **options), runtime
