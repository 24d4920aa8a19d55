"""``Predictor``: the one object a user needs, in the scikit-learn / AutoGluon shape.

    predictor = Predictor(modalities=["metadata", "title", "image"]).fit(train_df, val_df)
    predictor.predict(df); predictor.predict_proba(df); predictor.evaluate(df)
    predictor.save("model/"); Predictor.load("model/")

A DataFrame holds the catalog columns (``gender``, ``productDisplayName``, ...) and, for the image modality, an
``image_path`` column. Saved models are ``model.safetensors`` + JSON; nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from .catalog import ID, TARGET, TITLE, catalog_from_frame
from .evaluation import evaluate_predictions, expected_calibration_error
from .features import LabelEncoder, MetadataEncoder, TitleEncoder, clean_title
from .missing import FieldBlanking, blanked_copies, without_modalities
from .mixing import ExpertMix, fit_mix_weights
from .model_files import FORMAT_VERSION, ModelLoadError, validate_model_folder
from .models import FusionEnsemble, FusionNet, HeadConfig, ModalitySpec, build_network, make_config
from .schema import FASHION, CatalogSchema, SchemaError, resolve_schema
from .split import duplicate_groups
from .taxonomy import DEFAULT_MIN_CLASS_SIZE, Taxonomy, level_metrics, level_probabilities, top_down
from .text_scores import TextScoreModel
from .training import (
    ModalityData,
    TrainResult,
    fit_temperature,
    one_version_each,
    predict_logits,
    softmax,
    train_network,
)

log = logging.getLogger(__name__)

MODALITIES = ("metadata", "title", "image")
MODEL_KINDS: dict[str, tuple[str, ...]] = {
    "metadata": ("metadata",),
    "image": ("image",),
    "fusion": ("metadata", "title", "image"),
}


# What a refit keeps from the first pass (fitted with validation data): calibration, early stopping, its curve.
_FIRST_PASS = (
    "temperature_",
    "fallback_temperature_",
    "history_",
    "best_epoch_",
    "member_best_epochs_",
    "fallback_best_epochs_",
    "no_metadata_temperature_",
    "no_metadata_best_epochs_",
    "no_metadata_mix_weights_",
    "main_mix_weights_",
    "image_expert_temperature_",
    "image_expert_best_epochs_",
    "train_seconds_",
)

DECODERS = ("path", "top_down")
IMAGE_CLIP = 8.0  # standardised image features are clipped, so one odd image cannot blow up the head


def image_scaling(train_embeddings: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of training embeddings. Pooled ReLU6 features are often (almost) constant
    on a small catalog; their std is floored at a tenth of the median std so they are not blown up."""
    if len(train_embeddings) == 0:
        return np.zeros(dim, np.float32), np.ones(dim, np.float32)
    if hasattr(train_embeddings, "mean_std"):  # embeddings.EmbeddingRows: the same figures, read chunk by chunk
        mean, std = train_embeddings.mean_std()
    else:
        mean, std = train_embeddings.mean(axis=0), train_embeddings.std(axis=0)
    floor = max(float(np.median(std)) * 0.1, 1e-3)
    return mean.astype(np.float32), np.maximum(std, floor).astype(np.float32)


def parse_modalities(text: str | Sequence[str]) -> tuple[str, ...]:
    items = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    unknown = [m for m in items if m not in MODALITIES]
    if unknown or not items:
        raise ValueError(f"Unknown modalities {unknown or items}. Choose from: {', '.join(MODALITIES)}")
    return tuple(m for m in MODALITIES if m in items)  # canonical order


class Predictor:
    """Categorize products from any subset of {metadata, title, image}.

    Parameters:
        modalities: the inputs, a subset of ``("metadata", "title", "image")`` (or "metadata,title").
        preset: network settings, ``"regularized"`` (the model to use), ``"small"`` or ``"overfit"`` (models.PRESETS).
        seed: seed of the networks, the blanked copies and the out-of-fold SVMs.
        backbone: image backbone name (backbones.BACKBONES); weights: your own state-dict file for it (None: the
            packaged ImageNet weights); image_size: its input (height, width) (None: the backbone's default).
        augment_views: augmented views of each training image added as training rows.
        finetune_blocks, finetune_epochs: fine-tune the backbone's last blocks for that many epochs first (0: frozen).
        text_scores: stack a linear SVM's class scores on title + metadata as a network input (text_scores.py).
        title_fallback: also train a network without the title, for products that have none.
        metadata_fallback: also train a network (and its title SVM and image expert, mixing.py) for products with a
            title and no attribute.
        refit: after early stopping and calibration on validation, train again on train + validation.
        field_blanking: blanked training copies per product (missing.py); 0 turns them off.
        review_precision: ``needs_review`` marks predictions below the confidence at which validation products
            were right this often.
        cache_dir: the embedding cache and the backbone's ONNX file (None: ~/.cache/deepfusion or
            $DEEPFUSION_CACHE); progress: progress bars.
        schema: the roles of the DataFrame's columns (schema.CatalogSchema; None: ``fit``'s ``label`` and inference,
            or the fashion catalog's columns); the fitted one is ``schema_``, saved with the model.
        embedder: an ``embeddings.ImageEmbedder`` to embed with (e.g. one shared by several models, so they share
            its cache reads); None builds one from backbone, weights, image_size and cache_dir.
        depth, min_class_size, decode: a label that is a category path (taxonomy.py): train on its first ``depth``
            levels (None: all); a path with fewer training products than ``min_class_size`` backs off to its
            parent; ``decode`` "path" predicts the most probable whole path, "top_down" the most probable node
            level by level. Every predicted path is one of the training taxonomy's.
        **head_overrides: fields of models.HeadConfig that replace the preset's (e.g. ``members=1``).
    """

    def __init__(
        self,
        modalities: Sequence[str] = ("metadata",),
        *,
        preset: str = "regularized",
        seed: int = 42,
        backbone: str = "efficientnet_lite0",
        weights: str | Path | None = None,
        image_size: tuple[int, int] | None = None,
        augment_views: int = 0,
        finetune_blocks: int = 0,
        finetune_epochs: int = 3,
        text_scores: bool = True,
        title_fallback: bool = True,
        metadata_fallback: bool = True,
        refit: bool = False,
        field_blanking: float = 0.5,
        review_precision: float = 0.98,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        embedder: Any | None = None,
        schema: CatalogSchema | None = None,
        depth: int | None = None,
        min_class_size: int = DEFAULT_MIN_CLASS_SIZE,
        decode: str = "path",
        **head_overrides: Any,
    ) -> None:
        self.modalities = parse_modalities(modalities)
        self.schema = schema
        if decode not in DECODERS:
            raise ValueError(f"decode must be one of {', '.join(DECODERS)}, not {decode!r}")
        if depth is not None and depth < 1:
            raise ValueError(f"depth must be at least 1, not {depth}")
        self.depth = depth
        self.min_class_size = min_class_size
        self.decode = decode
        # Stacking (text_scores.py): a linear SVM's class scores on metadata + title as one more network input.
        self.text_scores = text_scores and "title" in self.modalities
        # A second network on the other modalities answers for products without a title (a network that always had
        # the title leans on it; the fallback learns to do without).
        self.fallback_modalities = tuple(m for m in self.modalities if m != "title")
        self.title_fallback = title_fallback and "title" in self.modalities and bool(self.fallback_modalities)
        # A third network for products that have a title but no attributes at all (a product whose attributes are
        # not filled in yet): title (+ image) and a title-only SVM's scores. The main network then only has to
        # cope with attributes missing one by one.
        self.no_metadata_modalities = tuple(m for m in self.modalities if m != "metadata")
        self.metadata_fallback = metadata_fallback and "metadata" in self.modalities and "title" in self.modalities
        self.config = make_config(preset, **head_overrides)
        # Refit: once validation has calibrated the model, train it again on train + validation for the full
        # schedule (the calibration is kept), so the final model learns from every labelled product.
        self.refit = refit
        # Blanked copies (missing.py): this many copies per training product with metadata fields emptied, so the
        # model has seen products whose attributes are partly or wholly missing, as new products arrive.
        self.field_blanking = field_blanking
        # needs_review: the confidence above which validation products were right at least this often.
        self.review_precision = review_precision
        self.seed = seed
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.augment_views = augment_views
        self.finetune_blocks = finetune_blocks
        self.finetune_epochs = finetune_epochs
        self.cache_dir = cache_dir
        self.progress = progress
        self.embedder = embedder

    # ----------------------------------------------------------------- features
    def _embedder(self):  # noqa: ANN202 - imported lazily: metadata-only use never loads the backbone
        from .embeddings import ImageEmbedder

        if getattr(self, "_embedder_obj", None) is None:
            # A given embedder is used until fine-tuning changes the backbone's weights.
            if self.embedder is not None and not getattr(self, "finetuned_", False):
                self._embedder_obj = self.embedder
                return self._embedder_obj
            self._embedder_obj = ImageEmbedder(
                self.backbone,
                weights=self._backbone_weights(),
                image_size=self.image_size,
                cache_dir=self.cache_dir,
                progress=self.progress,
            )
        return self._embedder_obj

    def image_embedder(self):  # noqa: ANN201 - embeddings.ImageEmbedder, imported lazily
        """The ``ImageEmbedder`` this model embeds images with (its backbone, weights, input size and cache), e.g.
        to fill the embedding cache ahead of ``fit`` (``distributed.embed_images_ray``)."""
        return self._embedder()

    def _backbone_weights(self) -> str | Path | None:
        """The weights the backbone embeds with: fine-tuned by ``fit``, else the ones given (None: the stock
        ImageNet weights)."""
        return getattr(self, "finetuned_weights_", None) or self.weights

    def _image_features(self, products: pd.DataFrame, view: int = 0) -> tuple[np.ndarray, np.ndarray]:
        # Read from the memory-mapped cache a batch at a time (embeddings.EmbeddingRows), standardised as read.
        rows = self._embedder().rows(list(products["image_path"]), view=view)
        return rows.transformed(self._scale_image), rows.ok

    def _scale_image(self, emb: np.ndarray) -> np.ndarray:
        return np.clip((emb - self.image_mean_) / self.image_std_, -IMAGE_CLIP, IMAGE_CLIP).astype(np.float32)

    @staticmethod
    def _text_features(title: sp.csr_matrix, metadata: np.ndarray | None) -> sp.csr_matrix:
        """What the stacked SVM reads: the title's TF-IDF and, when the model has it, the metadata encoding."""
        parts = [title] if metadata is None else [title, sp.csr_matrix(metadata, dtype=np.float32)]
        return sp.hstack(parts, format="csr", dtype=np.float32)

    def _encode(
        self,
        products: pd.DataFrame,
        image: tuple[np.ndarray, np.ndarray] | None = None,
        absent: Sequence[str] = (),
        text_scores: Callable[[sp.csr_matrix], np.ndarray] | None = None,
    ) -> ModalityData:
        """Model inputs for ``products``; the fields of modalities named in ``absent`` are emptied first, so a
        withheld modality is exactly a product that arrives without it. ``text_scores`` maps the stacked SVM's
        input features to its scores (default: the fitted SVM's scores; training passes the fit, which returns
        out-of-fold ones)."""
        if absent:
            products = without_modalities(products, absent, self.metadata_fields)
        features: dict[str, Any] = {}
        present: dict[str, np.ndarray] = {}
        if "metadata" in self.modalities:
            features["metadata"] = self.metadata_encoder_.transform(products)
            attrs = products[list(self.metadata_fields)]
            present["metadata"] = attrs.notna().any(axis=1).to_numpy()
        if "title" in self.modalities:
            features["title"] = self.title_encoder_.transform(products)
            present["title"] = np.array([bool(clean_title(t)) for t in products[TITLE]])
        if "image" in self.modalities:
            if "image" in absent:
                emb, ok = np.zeros((len(products), self.image_mean_.shape[0])), np.zeros(len(products), bool)
            else:
                emb, ok = image if image is not None else self._image_features(products)
            features["image"] = emb.astype(np.float32)
            present["image"] = ok
        follows = {}
        if self.text_scores:
            score = text_scores or self.text_model_.scores
            features["text_scores"] = score(self._text_features(features["title"], features.get("metadata")))
            present["text_scores"] = present["title"].copy()  # without a title the scores are not trusted
            follows["text_scores"] = "title"
        return ModalityData(features, present, follows)

    # ----------------------------------------------------------------- fit
    def fit(
        self,
        train: pd.DataFrame,
        val: pd.DataFrame | None = None,
        *,
        label: str | None = None,
        image_column: str | None = None,
    ) -> Predictor:
        """Fit encoders on ``train`` only, train the network (early stopping on ``val``), calibrate on ``val``.
        ``label``: the column to learn (the other columns' roles are inferred, schema.infer_schema, unless the
        Predictor was given a ``schema``). With ``refit=True`` the encoders and networks are then fitted again on
        ``train`` + ``val`` for the configuration's full number of epochs, keeping the temperatures calibrated on
        ``val``."""
        self.schema_ = self._fit_schema(train, label)
        if "metadata" in self.modalities and not self.schema_.metadata:
            raise ValueError(
                "The model reads metadata, but the catalog schema has no categorical or numeric column. Name them "
                "(--categorical / --numeric) or train without metadata (--modalities title,image)."
            )
        train = catalog_from_frame(train, schema=self.schema_, require_target=True, image_column=image_column)
        train = train[train[TARGET].notna()].reset_index(drop=True)
        val = (
            catalog_from_frame(val, schema=self.schema_, require_target=True, image_column=image_column)
            if val is not None
            else None
        )
        # The classes are the taxonomy's paths (truncated to depth, rare ones backed off to their parent): a flat
        # label is a one-level taxonomy and stays as it was.
        self.taxonomy_ = Taxonomy.fit(
            list(train[TARGET]),
            columns=self.schema_.levels,
            label_sep=self.schema_.label_sep,
            depth=self.depth,
            min_count=self.min_class_size,
        )
        if self.taxonomy_.is_tree:
            train = train.assign(**{TARGET: self.taxonomy_.to_known(train[TARGET])})
            train = train[train[TARGET].notna()].reset_index(drop=True)
            if val is not None:
                val = val.assign(**{TARGET: self.taxonomy_.to_known(val[TARGET])})
                val = val[val[TARGET].notna()].reset_index(drop=True)
        val = self._fit_pass(train, val, self.config, finetune=self.finetune_blocks > 0)
        self.review_threshold_ = self._review_threshold(val)
        self.refit_: dict[str, Any] | None = None
        if self.refit and val is not None and len(val):
            # Calibration, early stopping and the validation curve belong to the first pass: the refit has no
            # validation data, so they are kept.
            kept = {name: getattr(self, name) for name in _FIRST_PASS if hasattr(self, name)}
            full = pd.concat([train, val], ignore_index=True)
            cfg = replace(self.config, patience=None)
            log.info("refit on train + validation (%d products, %d epochs)", len(full), cfg.epochs)
            self._fit_pass(full, None, cfg, finetune=False)
            self.refit_ = {"products": len(full), "epochs": cfg.epochs, "train_seconds": self.train_seconds_}
            self.train_seconds_ += kept.pop("train_seconds_")
            self.__dict__.update(kept)
            self._build_main_mix()
            if self.metadata_fallback:
                self._build_no_metadata_mix()
        return self

    def _fit_schema(self, train: pd.DataFrame, label: str | None) -> CatalogSchema:
        if self.schema is not None:
            return self.schema if label is None else self.schema.with_roles(label=label)
        if label is None:
            return FASHION
        try:
            return resolve_schema(train, label=label)
        except SchemaError as exc:
            raise ValueError(str(exc)) from None

    @property
    def metadata_fields(self) -> tuple[str, ...]:
        """The attribute columns the metadata modality reads."""
        encoder = getattr(self, "metadata_encoder_", None)
        if encoder is not None:
            return (*encoder.categorical, *encoder.numeric)
        return self._schema().metadata

    def _schema(self) -> CatalogSchema:
        return getattr(self, "schema_", None) or self.schema or FASHION

    def _review_threshold(self, val: pd.DataFrame | None) -> float:
        """The lowest confidence t such that validation products predicted with confidence >= t are right at
        least ``review_precision`` of the time; predictions below it need a person's review. Without validation
        data every prediction needs review (t = 1)."""
        if val is None or not len(val):
            return 1.0
        proba, _ = self._proba(val)
        confidence = proba.max(axis=1)
        right = self.labels_.inverse_transform(proba.argmax(axis=1)) == val[TARGET].to_numpy()
        order = np.argsort(-confidence, kind="stable")
        precision = np.cumsum(right[order]) / np.arange(1, len(order) + 1)
        ok = np.flatnonzero(precision >= self.review_precision)
        return float(confidence[order][ok[-1]]) if len(ok) else 1.0

    def _fit_pass(
        self, train: pd.DataFrame, val: pd.DataFrame | None, cfg: HeadConfig, *, finetune: bool
    ) -> pd.DataFrame | None:
        """Fit every encoder and network on ``train`` (early stopping and calibration on ``val``, if given).
        Returns the validation rows used: those whose class occurs in ``train``."""
        self.labels_ = LabelEncoder().fit(train[TARGET])
        self.train_counts_ = {str(k): int(v) for k, v in train[TARGET].value_counts().items()}
        if "metadata" in self.modalities:
            schema = self._schema()
            self.metadata_encoder_ = MetadataEncoder(
                list(schema.categorical), list(schema.numeric), title_length=schema.is_fashion
            ).fit(train)
        if "title" in self.modalities:
            self.title_encoder_ = TitleEncoder().fit(train)
        train_image = None
        if "image" in self.modalities and finetune:
            self._finetune(train)
        # Encoders and image scaling are fitted on the products as they are; the blanked copies only add rows.
        source, products = self._with_blanked_copies(train)
        if "image" in self.modalities:
            # The vectors stay in the memory-mapped cache (embeddings.EmbeddingRows); a batch is read and standardised
            # when training reads it, so no copy of the image features grows with the training set.
            raw = self._embedder().rows(list(train["image_path"]))
            ok = raw.ok
            self.image_mean_, self.image_std_ = image_scaling(raw[ok] if ok.any() else raw[:0], raw.shape[1])
            train_image = (raw.transformed(self._scale_image)[source], ok[source])
        y_train = self.labels_.transform(products[TARGET])
        n_classes = len(self.labels_.classes_)
        fit_text_scores = None
        if self.text_scores:
            self.text_model_ = TextScoreModel(seed=self.seed)
            groups = duplicate_groups(train)[source]  # a copy stays in its product's fold
            # The SVMs learn from one version of each product (itself or a blanked copy), so they see missing
            # fields without fitting on more rows; every version is scored out-of-fold.
            fit_rows = np.zeros(len(source), dtype=bool)
            fit_rows[one_version_each(np.random.default_rng(self.seed), source)] = True

            def fit_text_scores(features: sp.csr_matrix) -> np.ndarray:
                return self.text_model_.fit(
                    features, y_train, n_classes, groups=groups, fit_rows=fit_rows, progress=self.progress
                )

        train_data = self._encode(products, train_image, text_scores=fit_text_scores)
        if "image" in self.modalities and self.augment_views > 0:
            train_data, y_train = self._with_augmented_views(train, source, train_data, y_train)

        val_data = y_val = None
        val_products = None
        if val is not None and len(val):
            y_all = self.labels_.transform(val[TARGET])
            known = y_all >= 0
            if (~known).any():
                log.info(
                    "%d validation products have a class unseen in training; left out of early stopping",
                    int((~known).sum()),
                )
            val = val[known].reset_index(drop=True)
            # Validation gets blanked copies too: early stopping and calibration then serve partial products.
            val_source, val_products = self._with_blanked_copies(val, seed=self.seed + 1)
            y_val = y_all[known][val_source]
            val_data = self._encode(val_products)

        result, self.temperature_ = self._train_head(
            train_data, y_train, val_data, y_val, n_classes, "+".join(self.modalities), cfg
        )
        self.net_ = result.net
        if self.text_scores and val_data is not None and y_val is not None and len(y_val):
            self._fit_main_mix(val_data, y_val)
        elif not hasattr(self, "main_mix_weights_"):  # a refit keeps the first pass's weights
            self.main_mix_weights_ = _network_alone(self.temperature_)
        self._build_main_mix()
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.member_best_epochs_ = [m.best_epoch for m in result.members] or [result.best_epoch]
        self.train_seconds_ = result.seconds
        if self.metadata_fallback:
            self._fit_no_metadata(train, train_data, y_train, val, val_data, y_val, n_classes, cfg)
            if "image" in self.modalities:
                self._fit_image_expert(len(train), train_data, y_train, len(val) if val is not None else 0,
                                       val_data, y_val, n_classes, cfg)
            if val is not None and len(val):
                self._fit_no_metadata_mix(val)
            elif not hasattr(self, "no_metadata_mix_weights_"):
                self.no_metadata_mix_weights_ = _network_alone(self.no_metadata_temperature_)
            self._build_no_metadata_mix()
        if self.title_fallback:
            fallback, self.fallback_temperature_ = self._train_head(
                self._fallback_inputs(train_data, products),
                y_train,
                self._fallback_inputs(val_data, val_products) if val_data is not None else None,
                y_val,
                n_classes,
                f"the no-title fallback ({'+'.join(self.fallback_modalities)})",
                cfg,
            )
            self.fallback_net_ = fallback.net
            self.fallback_best_epochs_ = [m.best_epoch for m in fallback.members] or [fallback.best_epoch]
            self.train_seconds_ += fallback.seconds
        return val

    def _train_head(
        self,
        train_data: ModalityData,
        y_train: np.ndarray,
        val_data: ModalityData | None,
        y_val: np.ndarray | None,
        n_classes: int,
        what: str,
        cfg: HeadConfig,
    ) -> tuple[TrainResult, float]:
        """Train a network (early stopping on validation) and its calibration temperature (1.0 without validation
        data, or when calibration fails, as it can on a tiny validation set)."""
        result = train_network(
            train_data, y_train, val_data, y_val, n_classes, cfg, seed=self.seed, progress=self.progress
        )
        temperature = 1.0
        if val_data is not None and y_val is not None and len(y_val):
            temperature = fit_temperature(predict_logits(result.net, val_data), y_val)
            if not np.isfinite(temperature):
                log.warning("%s: temperature calibration failed; using uncalibrated probabilities", what)
                temperature = 1.0
        best = [m.best_epoch for m in result.members] or [result.best_epoch]
        log.info(
            "trained %s in %.1fs (best epoch of each network: %s; temperature %.3f)",
            what,
            result.seconds,
            ", ".join(map(str, best)),
            temperature,
        )
        return result, temperature

    def _fit_no_metadata(
        self,
        train: pd.DataFrame,
        train_data: ModalityData,
        y_train: np.ndarray,
        val: pd.DataFrame | None,
        val_data: ModalityData | None,
        y_val: np.ndarray | None,
        n_classes: int,
        cfg: HeadConfig,
    ) -> None:
        """Train the network for products without attributes on the training products as they are (the first
        ``len(train)`` rows: no blanked copies), with a title-only SVM's out-of-fold scores."""
        rows = np.arange(len(train))
        self.title_text_model_ = TextScoreModel(seed=self.seed)
        scores = self.title_text_model_.fit(
            train_data.features["title"][rows], y_train[rows], n_classes, groups=duplicate_groups(train),
            progress=self.progress,
        )
        val_inputs = None
        if val_data is not None and val is not None:
            val_rows = np.arange(len(val))
            val_inputs = self._no_metadata_inputs(val_data, val_rows)
        result, self.no_metadata_temperature_ = self._train_head(
            self._no_metadata_inputs(train_data, rows, scores),
            y_train[rows],
            val_inputs,
            y_val[: len(val)] if val_inputs is not None else None,
            n_classes,
            f"the no-metadata network ({'+'.join(self.no_metadata_modalities)})",
            cfg,
        )
        self.no_metadata_net_ = result.net
        self.no_metadata_best_epochs_ = [m.best_epoch for m in result.members] or [result.best_epoch]
        self.train_seconds_ += result.seconds

    def _fit_image_expert(
        self,
        n_train: int,
        train_data: ModalityData,
        y_train: np.ndarray,
        n_val: int,
        val_data: ModalityData | None,
        y_val: np.ndarray | None,
        n_classes: int,
        cfg: HeadConfig,
    ) -> None:
        """An image-only network, one of the experts mixed into the no-metadata network's answer (mixing.py),
        trained on the training products that have an image (no blanked copies: they share the image)."""

        def image_only(data: ModalityData, n: int) -> tuple[ModalityData, np.ndarray]:
            rows = np.flatnonzero(data.present["image"][:n])
            return ModalityData({"image": data.features["image"][rows]}, {"image": data.present["image"][rows]}), rows

        train_inputs, rows = image_only(train_data, n_train)
        val_inputs = y = None
        if val_data is not None and y_val is not None and n_val:
            val_inputs, val_rows = image_only(val_data, n_val)
            y = y_val[val_rows]
        result, self.image_expert_temperature_ = self._train_head(
            train_inputs, y_train[rows], val_inputs, y, n_classes, "the image expert (image only)", cfg
        )
        self.image_expert_ = result.net
        self.image_expert_best_epochs_ = [m.best_epoch for m in result.members] or [result.best_epoch]
        self.train_seconds_ += result.seconds

    def _fit_main_mix(self, val_data: ModalityData, y_val: np.ndarray) -> None:
        """The main network's mix with the stacked SVM's scores (mixing.py), chosen on the validation products
        (and their blanked copies). Where the SVM reads a catalog's text better than the network, validation says
        so and the answer leans on it; where not, the network stays alone (ties go to it)."""
        has_image = val_data.present.get("image", np.zeros(len(y_val), dtype=bool))
        self.main_mix_weights_ = fit_mix_weights(
            predict_logits(self.net_, val_data), self.temperature_, val_data.features["text_scores"], None, 1.0,
            np.asarray(has_image, dtype=bool), y_val, "main mix",
        )

    def _build_main_mix(self) -> None:
        self.main_mix_ = ExpertMix(self.net_, None, self.main_mix_weights_)

    def _fit_no_metadata_mix(self, val: pd.DataFrame) -> None:
        """The no-metadata network's mix weights (mixing.py), chosen on the validation products as they would
        arrive without attributes: with their image, and once more without it (title only)."""
        titled = val[[bool(clean_title(t)) for t in val[TITLE]]].reset_index(drop=True)
        y = self.labels_.transform(titled[TARGET])
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]] = []
        cases = [("metadata",), ("metadata", "image")] if "image" in self.modalities else [("metadata",)]
        for absent in cases:
            data = self._encode(titled, absent=absent)
            inputs = self._no_metadata_inputs(data, np.arange(len(titled)))
            image = predict_logits(self.image_expert_, inputs) if "image" in self.modalities else None
            has = inputs.present["image"] if "image" in inputs.present else np.zeros(len(titled), dtype=bool)
            parts.append((predict_logits(self.no_metadata_net_, inputs), inputs.features["text_scores"], image, has))
        net, text, image, has = (np.concatenate([p[i] for p in parts]) if parts[0][i] is not None else None
                                 for i in range(4))
        self.no_metadata_mix_weights_ = fit_mix_weights(
            net, self.no_metadata_temperature_, text, image, getattr(self, "image_expert_temperature_", 1.0),
            has, np.tile(y, len(parts)), "no-metadata mix",
        )

    def _build_no_metadata_mix(self) -> None:
        self.no_metadata_mix_ = ExpertMix(
            self.no_metadata_net_, getattr(self, "image_expert_", None), self.no_metadata_mix_weights_
        ).eval()

    def _no_metadata_inputs(
        self, data: ModalityData, rows: np.ndarray, scores: np.ndarray | None = None
    ) -> ModalityData:
        """The no-metadata network's inputs for ``rows`` of ``data``: the title, the image if the model has one,
        and the title-only SVM's scores (``scores``; default: the fitted SVM's)."""
        names = [m for m in self.no_metadata_modalities if m in data.features]
        # The first rows in order (training: the products before their blanked copies) are a slice: views of the
        # image features instead of a copy of them.
        pick: np.ndarray | slice = slice(0, len(rows)) if np.array_equal(rows, np.arange(len(rows))) else rows
        features = {m: data.features[m][pick] for m in names}
        present = {m: data.present[m][pick] for m in names}
        features["text_scores"] = scores if scores is not None else self.title_text_model_.scores(features["title"])
        present["text_scores"] = present["title"].copy()
        return ModalityData(features, present, {"text_scores": "title"})

    def _with_blanked_copies(self, products: pd.DataFrame, seed: int | None = None) -> tuple[np.ndarray, pd.DataFrame]:
        """``products`` followed by their blanked copies, and for every row the position of the product it is."""
        rows = np.zeros(0, dtype=np.int64)
        copies = products.iloc[:0]
        if "metadata" in self.modalities and self.field_blanking > 0:
            blanking = FieldBlanking(share=self.field_blanking)
            # Products without any attribute go to the no-metadata network when the model has one.
            allow_all = len(self.modalities) > 1 and not self.metadata_fallback
            rows, copies = blanked_copies(
                products,
                blanking,
                self.seed if seed is None else seed,
                allow_all=allow_all,
                fields=self.metadata_fields,
            )
        source = np.concatenate([np.arange(len(products)), rows])
        return source, pd.concat([products, copies], ignore_index=True)

    def _fallback_inputs(self, data: ModalityData, products: pd.DataFrame) -> ModalityData:
        """The no-title network's inputs for ``data`` (encoded from ``products``, possibly tiled for augmented
        views): everything but the title, with the metadata encoded as if the title were missing (name_length
        imputed, not the true count), as it is at prediction time."""
        inputs = _without_title(data)
        if "metadata" in inputs.features:
            untitled = self.metadata_encoder_.transform(products.assign(**{TITLE: None}))
            inputs.features["metadata"] = np.tile(untitled, (len(data) // len(products), 1))
        return inputs

    def _finetune(self, train: pd.DataFrame) -> None:
        """Fine-tune the backbone's last blocks on the training images; later steps embed with those weights."""
        import tempfile

        from .backbones import default_cache_dir
        from .finetune import finetune_backbone

        has_image = train["image_path"].notna().to_numpy()
        folder = Path(self.cache_dir or default_cache_dir()) / "finetuned"
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(suffix=".safetensors", dir=folder)
        os.close(fd)  # finetune_backbone writes the file by name
        # Always tuned from the weights given, so a second fit does not tune an already tuned backbone.
        self.finetuned_weights_ = finetune_backbone(
            self.backbone,
            list(train.loc[has_image, "image_path"]),
            self.labels_.transform(train.loc[has_image, TARGET]),
            Path(name),
            weights=self.weights,
            image_size=self.image_size,
            blocks=self.finetune_blocks,
            epochs=self.finetune_epochs,
            seed=self.seed,
            progress=self.progress,
        )
        self._embedder_obj = None
        self.finetuned_ = True

    def _with_augmented_views(
        self, train: pd.DataFrame, source: np.ndarray, data: ModalityData, y: np.ndarray
    ) -> tuple[ModalityData, np.ndarray]:
        """Add one extra copy of the training set per augmented image view (the backbone is frozen, so
        augmentation happens on cached embeddings of augmented images); row i of ``data`` is ``train``'s
        ``source[i]``."""
        feats = {k: [v] for k, v in data.features.items()}
        present = {k: [v] for k, v in data.present.items()}
        for view in range(1, self.augment_views + 1):
            emb, ok = self._image_features(train, view=view)
            emb, ok = emb[source], ok[source]
            for k in feats:
                feats[k].append(emb.astype(np.float32) if k == "image" else data.features[k])
                present[k].append(ok & data.present["image"] if k == "image" else data.present[k])
        stacked = {k: sp.vstack(v, format="csr") if sp.issparse(v[0]) else np.concatenate(v) for k, v in feats.items()}
        # Each view is a product of its own (as before blanked copies existed): the epoch grows by one set per view.
        product = np.concatenate([source + view * len(train) for view in range(self.augment_views + 1)])
        data = ModalityData(stacked, {k: np.concatenate(v) for k, v in present.items()}, data.follows, product)
        return data, np.tile(y, self.augment_views + 1)

    # ----------------------------------------------------------------- predict
    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise RuntimeError("This Predictor is not fitted yet: call fit(...) or Predictor.load(path).")

    def predict_proba(
        self,
        frame: pd.DataFrame,
        *,
        image_column: str | None = None,
        absent: Sequence[str] = (),
        as_pandas: bool = True,
    ) -> pd.DataFrame | np.ndarray:
        """Calibrated class probabilities: a DataFrame with one column per class (``self.classes_`` order) and the
        products' ids as index, or the bare array with ``as_pandas=False``. ``absent`` empties the fields of those
        modalities (e.g. ``["image"]``) to see how the model does on products that arrive without them."""
        self._check_fitted()
        products = catalog_from_frame(frame, schema=self._schema(), image_column=image_column)
        proba = self._proba(products, absent)[0]
        if not as_pandas:
            return proba
        return pd.DataFrame(proba, columns=self.classes_, index=pd.Index(products[ID].to_numpy(), name=ID))

    def _logits(
        self,
        products: pd.DataFrame,
        absent: Sequence[str] = (),
        image_embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Uncalibrated logits, the temperature that calibrates each row, and which modality each product had:
        products without a title are scored by the fallback network when the model has one.
        ``image_embeddings``: the backbone's (unscaled) embeddings of the products' images and which decoded, for
        callers that embed images themselves (the service)."""
        image = None
        if image_embeddings is not None and "image" in self.modalities:
            image = (self._scale_image(image_embeddings[0]), image_embeddings[1])
        data = self._encode(products, image=image, absent=absent)
        # The main mix's weights hold its calibration (mixing.py).
        logits = predict_logits(self.main_mix_, data)
        temperature = np.ones(len(logits), dtype=np.float64)
        if self.title_fallback and len(logits):
            rows = np.flatnonzero(~data.present["title"])
            if len(rows):
                logits[rows] = predict_logits(self.fallback_net_, _without_title(data, rows))
                temperature[rows] = self.fallback_temperature_
        if self.metadata_fallback and len(logits):
            rows = np.flatnonzero(data.present["title"] & ~data.present["metadata"])
            if len(rows):
                # The mix's weights hold its calibration (mixing.py).
                logits[rows] = predict_logits(self.no_metadata_mix_, self._no_metadata_inputs(data, rows))
                temperature[rows] = 1.0
        return logits, temperature, {m: data.present[m] for m in self.modalities}

    def _proba(
        self,
        products: pd.DataFrame,
        absent: Sequence[str] = (),
        image_embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        logits, temperature, present = self._logits(products, absent, image_embeddings)
        return softmax(logits / temperature[:, None]), present

    def predict(self, frame: pd.DataFrame, *, image_column: str | None = None) -> np.ndarray:
        proba = self.predict_proba(frame, image_column=image_column, as_pandas=False)
        return self.labels_.inverse_transform(self._decode(proba))

    @property
    def taxonomy(self) -> Taxonomy:
        """The label's taxonomy (a one-level one for a flat label, and for models saved before taxonomies)."""
        self._check_fitted()
        tax = getattr(self, "taxonomy_", None)
        return tax if tax is not None else Taxonomy(paths=list(self.labels_.classes_))

    def _decode(self, proba: np.ndarray) -> np.ndarray:
        """The predicted class of each row: the most probable class (a whole path), or with ``decode="top_down"``
        the path chosen level by level. Either is a class, hence a path of the training taxonomy."""
        if self.decode == "top_down" and self.taxonomy.is_tree and len(proba):
            return top_down(proba, self.classes_, self.taxonomy)
        return proba.argmax(axis=1)

    def level_columns(self, proba: np.ndarray, chosen: np.ndarray) -> dict[str, list[Any]]:
        """Per level of a tree label: ``prediction_<level>`` (the predicted path's node at that level, None below
        a shorter path) and ``confidence_<level>`` (the probability of that node: the sum over every path under
        it). Levels are named by the label columns, or ``level_<k>`` for a path label."""
        tax = self.taxonomy
        if not tax.is_tree:
            return {}
        predicted = [tax.split(c) for c in self.labels_.inverse_transform(chosen)]
        out: dict[str, list[Any]] = {}
        for k, (name, (nodes, marginal)) in enumerate(
            zip(tax.level_names, level_probabilities(proba, self.classes_, tax), strict=True)
        ):
            index = {n: i for i, n in enumerate(nodes)}
            values = [p[k] if len(p) > k else None for p in predicted]
            prefixes = [tax.format(p[: k + 1]) if len(p) > k else None for p in predicted]
            out[f"prediction_{name}"] = values
            out[f"confidence_{name}"] = [
                float(marginal[i, index[q]]) if q is not None else float("nan") for i, q in enumerate(prefixes)
            ]
        return out

    def predict_frame(
        self,
        frame: pd.DataFrame,
        *,
        top_k: int = 3,
        image_column: str | None = None,
        image_embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> pd.DataFrame:
        """``id, prediction, confidence, inputs`` plus the top-k labels and probabilities, one row per product.
        ``inputs`` names the inputs the prediction used ("title+image"; "none" for an empty product). A tree
        label adds ``prediction_<level>`` and ``confidence_<level>`` per level (``level_columns``) after
        ``confidence``; ``prediction`` is then the whole path in the catalog's spelling."""
        self._check_fitted()
        products = catalog_from_frame(frame, schema=self._schema(), image_column=image_column)
        proba, present = self._proba(products, image_embeddings=image_embeddings)
        top_k = max(1, min(top_k, proba.shape[1]))
        top = np.argsort(-proba, axis=1, kind="stable")[:, :top_k]
        chosen = self._decode(proba)
        ids = products[ID].to_numpy()
        confidence = proba[np.arange(len(proba)), chosen]
        out = pd.DataFrame(
            {
                ID: ids,
                "prediction": self.labels_.inverse_transform(chosen),
                "confidence": confidence,
                **self.level_columns(proba, chosen),
                "needs_review": confidence < self.review_threshold_,
                "inputs": inputs_used(present, len(products)),
            }
        )
        for k in range(1, top_k + 1):
            out[f"top{k}_label"] = self.labels_.inverse_transform(top[:, k - 1])
            out[f"top{k}_confidence"] = proba[np.arange(len(proba)), top[:, k - 1]]
        return out

    def evaluate(
        self,
        frame: pd.DataFrame,
        *,
        image_column: str | None = None,
        absent: Sequence[str] = (),
        return_predictions: bool = False,
    ) -> dict[str, Any]:
        """Metrics against the ``articleType`` column. Products of a class the model never learned count as
        errors (the model cannot predict them). With ``return_predictions`` the per-product predictions are
        added under ``"predictions"`` (a DataFrame: id, true, predicted, confidence)."""
        products = catalog_from_frame(frame, schema=self._schema(), require_target=True, image_column=image_column)
        products = products[products[TARGET].notna()].reset_index(drop=True)
        tax = self.taxonomy
        raw = list(products[TARGET])
        if tax.is_tree:
            # Measured against the paths as the model learned them (truncated, rare ones backed off); the
            # per-level figures below use the catalog's own paths.
            products = products.assign(**{TARGET: tax.to_known(raw)})
        logits, temperature, _ = self._logits(products, absent)
        proba = softmax(logits / temperature[:, None])
        chosen = self._decode(proba)
        pred = self.labels_.inverse_transform(chosen)
        confidence = proba[np.arange(len(proba)), chosen]
        raw_conf = softmax(logits).max(axis=1)  # before temperature scaling, for the ECE comparison
        metrics = evaluate_predictions(products[TARGET].to_numpy(), pred, confidence, self.train_counts_)
        correct = (pred == products[TARGET].to_numpy()).astype(float)
        metrics["ece_uncalibrated"] = expected_calibration_error(raw_conf, correct)
        metrics["temperature"] = self.temperature_
        metrics["unknown_classes"] = sorted(set(products[TARGET]) - set(self.labels_.classes_))
        if tax.is_tree:
            metrics["levels"] = level_metrics(tax.canonical(raw), list(pred), tax)
            metrics["taxonomy"] = {
                "level_names": tax.level_names,
                "decode": self.decode,
                "depth": tax.depth,
                "min_class_size": tax.min_count,
                "paths": len(tax.paths),
                "merged": tax.merged,
            }
        if return_predictions:
            metrics["predictions"] = pd.DataFrame(
                {ID: products[ID], "true": products[TARGET], "predicted": pred, "confidence": confidence}
            )
        return metrics

    @property
    def classes_(self) -> list[str]:
        self._check_fitted()
        return list(self.labels_.classes_)

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        network = _save_network(self.net_, path / "model.safetensors")
        config = {
            "format_version": FORMAT_VERSION,
            "modalities": list(self.modalities),
            "head": self.config.to_json(),
            "seed": self.seed,
            "temperature": self.temperature_,
            # mixing.py: (with or without an image) x (network, stacked SVM scores, unused), calibration included.
            "main_mix_weights": np.asarray(self.main_mix_weights_).tolist(),
            "best_epoch": self.best_epoch_,
            "member_best_epochs": self.member_best_epochs_,
            "train_seconds": self.train_seconds_,
            "train_counts": self.train_counts_,
            "history": self.history_,
            "refit": getattr(self, "refit_", None),
            "backbone": self.backbone if "image" in self.modalities else None,
            "image_size": list(self.image_size) if self.image_size else None,
            "augment_views": self.augment_views,
            "field_blanking": self.field_blanking,
            "review_precision": self.review_precision,
            "review_threshold": self.review_threshold_,
            "schema": self._schema().to_json(),
            "taxonomy": self.taxonomy.to_json(),
            "decode": self.decode,
            **network,
        }
        prep: dict[str, Any] = {"labels": self.labels_.to_json()}
        if "metadata" in self.modalities:
            prep["metadata"] = self.metadata_encoder_.to_json()
        if "title" in self.modalities:
            prep["title"] = self.title_encoder_.to_json()
        if "image" in self.modalities:
            prep["image"] = {"mean": self.image_mean_.tolist(), "std": self.image_std_.tolist()}
        if self.text_scores:
            save_numpy(self.text_model_.tensors(), str(path / "text_scores.safetensors"))
            prep["text_scores"] = self.text_model_.to_json()
        if self.metadata_fallback:
            save_numpy(self.title_text_model_.tensors(), str(path / "title_scores.safetensors"))
            config["no_metadata"] = {
                "modalities": list(self.no_metadata_modalities),
                **_save_network(self.no_metadata_net_, path / "no_metadata.safetensors"),
                "temperature": self.no_metadata_temperature_,
                "member_best_epochs": self.no_metadata_best_epochs_,
                "text_scores": self.title_text_model_.to_json(),
                "mix_weights": np.asarray(self.no_metadata_mix_weights_).tolist(),
            }
            if getattr(self, "image_expert_", None) is not None:
                config["no_metadata"]["image_expert"] = {
                    **_save_network(self.image_expert_, path / "image_expert.safetensors"),
                    "temperature": self.image_expert_temperature_,
                    "member_best_epochs": self.image_expert_best_epochs_,
                }
        if self.title_fallback:
            config["fallback"] = {
                "modalities": list(self.fallback_modalities),
                **_save_network(self.fallback_net_, path / "fallback.safetensors"),
                "temperature": self.fallback_temperature_,
                "member_best_epochs": self.fallback_best_epochs_,
            }
        weights = self._backbone_weights() if "image" in self.modalities else None
        if weights is not None:
            # Fine-tuned or given with --weights: the model keeps its own copy, so it reloads with the same backbone.
            _save_backbone_weights(Path(weights), path / "backbone.safetensors")
            config["backbone_weights"] = "backbone.safetensors"
        (path / "config.json").write_text(json.dumps(config, indent=2))
        (path / "preprocessing.json").write_text(json.dumps(prep))
        return path

    def _load_no_metadata(self, path: Path, saved: dict[str, Any], head: HeadConfig) -> None:
        """The no-metadata network and its title-only SVM (model_files does not check these two files yet, so a
        damaged one is turned into a ModelLoadError here)."""
        try:
            self.title_text_model_ = TextScoreModel.from_state(
                saved["text_scores"], load_numpy(str(path / "title_scores.safetensors"))
            )
            self.no_metadata_net_ = _load_network(
                path / "no_metadata.safetensors", saved, len(self.labels_.classes_), head
            )
            self.no_metadata_temperature_ = float(saved["temperature"])
            if "image_expert" in saved:
                self.image_expert_ = _load_network(
                    path / "image_expert.safetensors", saved["image_expert"], len(self.labels_.classes_), head
                )
                self.image_expert_temperature_ = float(saved["image_expert"]["temperature"])
                self.image_expert_best_epochs_ = saved["image_expert"].get("member_best_epochs", [])
            # Models saved before the mix: the network alone, as they predicted then.
            self.no_metadata_mix_weights_ = np.asarray(
                saved.get("mix_weights", _network_alone(self.no_metadata_temperature_)), dtype=np.float64
            )
        except Exception as exc:  # safetensors, torch and KeyError all mean the same thing to a user here
            raise ModelLoadError(
                f"{path}: the no-metadata network (no_metadata.safetensors, title_scores.safetensors, config.json "
                f"'no_metadata') cannot be loaded ({type(exc).__name__}: {exc}). Restore the folder or train the "
                "model again."
            ) from None
        if not (np.isfinite(self.no_metadata_temperature_) and self.no_metadata_temperature_ > 0):
            raise ModelLoadError(f"{path}/config.json: no_metadata temperature must be positive and finite.")
        self.no_metadata_best_epochs_ = saved.get("member_best_epochs", [])
        self._build_no_metadata_mix()

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        cache_dir: str | Path | None = None,
        weights: str | Path | None = None,
        progress: bool = True,
    ) -> Predictor:
        path = Path(path)
        # Every file is checked (types, shapes, files inside the folder) before anything is built from it.
        config, prep = validate_model_folder(path)
        head = HeadConfig.from_json(config["head"])
        self = cls(
            config["modalities"],
            preset=head.preset,
            seed=config["seed"],
            backbone=config.get("backbone") or "efficientnet_lite0",
            weights=path / config["backbone_weights"] if config.get("backbone_weights") else weights,
            image_size=tuple(config["image_size"]) if config.get("image_size") else None,
            augment_views=config.get("augment_views", 0),
            field_blanking=config.get("field_blanking", 0.0),
            review_precision=config.get("review_precision", 0.98),
            text_scores="text_scores" in prep,
            title_fallback="fallback" in config,
            metadata_fallback="no_metadata" in config,
            cache_dir=cache_dir,
            progress=progress,
        )
        self.config = head
        # Format-1 models before the schema read the fashion catalog's columns.
        self.schema_ = CatalogSchema.from_json(config["schema"]) if config.get("schema") else FASHION
        self.labels_ = LabelEncoder.from_json(prep["labels"])
        # Models saved before taxonomies: a flat label.
        try:
            self.taxonomy_ = Taxonomy.from_json(config["taxonomy"]) if config.get("taxonomy") else None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"{path}/config.json: 'taxonomy' is not a valid category tree ({exc}).") from None
        if self.taxonomy_ is not None and set(self.taxonomy_.paths) != set(self.labels_.classes_):
            raise ModelLoadError(
                f"{path}/config.json: the taxonomy's paths are not the model's classes (preprocessing.json); "
                "restore the folder or train the model again."
            )
        self.decode = config.get("decode", "path") if config.get("decode") in DECODERS else "path"
        if self.taxonomy_ is not None:
            self.depth, self.min_class_size = self.taxonomy_.depth, self.taxonomy_.min_count
        if "metadata" in prep:
            self.metadata_encoder_ = MetadataEncoder.from_json(prep["metadata"])
        if "title" in prep:
            self.title_encoder_ = TitleEncoder.from_json(prep["title"])
        if "image" in prep:
            self.image_mean_ = np.array(prep["image"]["mean"], dtype=np.float32)
            self.image_std_ = np.array(prep["image"]["std"], dtype=np.float32)
        if "text_scores" in prep:
            if not (path / "text_scores.safetensors").is_file():
                raise ModelLoadError(f"{path} is missing text_scores.safetensors (the stacked text model).")
            self.text_model_ = TextScoreModel.from_state(
                prep["text_scores"], load_numpy(str(path / "text_scores.safetensors"))
            )
        self.net_ = _load_network(path / "model.safetensors", config, len(self.labels_.classes_), head)
        self.temperature_ = float(config["temperature"])
        # Models saved before the main mix answer with the calibrated network alone, as they did.
        self.main_mix_weights_ = np.asarray(
            config.get("main_mix_weights", _network_alone(self.temperature_)), dtype=np.float64
        )
        self._build_main_mix()
        if "fallback" in config:
            fallback = config["fallback"]
            if not (path / "fallback.safetensors").is_file():
                raise ModelLoadError(f"{path} is missing fallback.safetensors (the network for untitled products).")
            self.fallback_net_ = _load_network(
                path / "fallback.safetensors", fallback, len(self.labels_.classes_), head
            )
            self.fallback_temperature_ = float(fallback["temperature"])
            self.fallback_best_epochs_ = fallback.get("member_best_epochs", [])
        if "no_metadata" in config:
            self._load_no_metadata(path, config["no_metadata"], head)
        self.best_epoch_ = config.get("best_epoch", 0)
        self.member_best_epochs_ = config.get("member_best_epochs", [self.best_epoch_])
        self.train_seconds_ = config.get("train_seconds", 0.0)
        self.train_counts_ = config["train_counts"]
        self.history_ = config.get("history", [])
        self.refit_ = config.get("refit")
        # Format-1 models have no review threshold: every prediction is flagged for review.
        self.review_threshold_ = float(config.get("review_threshold", 1.0))
        self.refit = self.refit_ is not None
        return self


def _save_backbone_weights(source: Path, target: Path) -> None:
    """Copy a backbone state dict into a model folder as safetensors (a torch file is converted, loaded with
    ``weights_only`` so no pickled code runs)."""
    if target.exists() and source.resolve() == target.resolve():
        return
    if source.suffix == ".safetensors":
        shutil.copyfile(source, target)
        return
    import torch

    state = torch.load(source, map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}, str(target))


def inputs_used(present: dict[str, np.ndarray], n: int) -> list[str]:
    """Per product, the inputs it had, joined by '+' in modality order ("none" when it had none)."""
    names = list(present)
    return ["+".join(m for m in names if present[m][i]) or "none" for i in range(n)]


def _network_alone(temperature: float) -> np.ndarray:
    """Mix weights (mixing.py) that give the calibrated network alone, with or without an image."""
    return np.array([[1.0 / temperature, 0.0, 0.0]] * 2)


def _without_title(data: ModalityData, rows: np.ndarray | None = None) -> ModalityData:
    """The fallback network's inputs: everything but the title and what follows it (the stacked SVM scores),
    optionally only ``rows``."""
    keep = [k for k in data.features if k != "title" and data.follows.get(k) != "title"]
    pick = (lambda a: a) if rows is None else (lambda a: a[rows])
    product = None if data.product is None else pick(data.product)
    features, present = {k: pick(data.features[k]) for k in keep}, {k: pick(data.present[k]) for k in keep}
    return ModalityData(features, present, {}, product)


def _save_network(net: FusionNet | FusionEnsemble, file: Path) -> dict[str, Any]:
    """Write ``net``'s weights to ``file``; returns what ``_load_network`` needs to rebuild it."""
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(file))
    return {
        "input_dims": {s.name: s.dim for s in net.input_specs},
        "sparse_inputs": [s.name for s in net.input_specs if s.sparse],
    }


def _load_network(file: Path, saved: dict[str, Any], n_classes: int, head: HeadConfig) -> FusionNet | FusionEnsemble:
    """Rebuild a network from ``_save_network``'s description and its weights. Inputs keep their saved order: the
    modalities, then derived inputs such as text_scores."""
    specs = [ModalitySpec(n, dim, n in saved["sparse_inputs"]) for n, dim in saved["input_dims"].items()]
    net = build_network(specs, n_classes, head)
    net.load_state_dict(load_file(str(file)))
    net.eval()
    return net
