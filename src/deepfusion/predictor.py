"""``Predictor``: the one object a user needs, in the scikit-learn / AutoGluon shape.

    predictor = Predictor(modalities=["metadata", "title", "image"]).fit(train_df, val_df)
    predictor.predict(df); predictor.predict_proba(df); predictor.evaluate(df)
    predictor.save("model/"); Predictor.load("model/")

``__init__`` stores its parameters as given; ``fit`` builds the typed configuration (``config_``, config.py) from
them and sets the learned state (``*_`` attributes); the rest delegates: inputs.py (products -> network inputs),
heads.py (the networks and their mixes), persistence.py (the model folder). A DataFrame holds the catalog's columns
and, for the image modality, an ``image_path`` column.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import heads, inputs
from .catalog import ID, TARGET, TITLE, catalog_from_frame
from .config import (
    DECODERS,
    DEFAULT_BACKBONE,
    DEFAULT_MIN_CLASS_SIZE,
    MODALITIES,
    ConfigError,
    HeadConfig,
    ModelConfig,
    parse_modalities,
)
from .evaluation import evaluate_predictions, expected_calibration_error
from .features import ClassIndex, MetadataEncoder, TitleEncoder, clean_title
from .missing import without_modalities
from .mixing import ExpertMix, LinearScores, linear_alone, network_alone
from .model_files import ModelLoadError
from .models import ModalitySpec
from .schema import FASHION, CatalogSchema, SchemaError, resolve_schema
from .sentence import choose as choose_sentence_model
from .split import duplicate_groups
from .taxonomy import Taxonomy, level_metrics, level_probabilities, top_down
from .text_scores import TextScoreModel, fit_title_image_model
from .training import ModalityData, one_version_each, predict_logits, return_large_blocks, softmax

log = logging.getLogger(__name__)

__all__ = ["DECODERS", "MODALITIES", "MODEL_KINDS", "ModelLoadError", "Predictor", "parse_modalities"]

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
    "no_metadata_mix_weights_",
    "main_mix_weights_",
    "train_seconds_",
)


class Predictor:
    """Categorize products from any subset of {metadata, title, image}.

    Parameters (stored as given; ``fit`` checks them and builds ``config_``, a config.ModelConfig):
        modalities: the inputs, a subset of ``("metadata", "title", "image")`` (or "metadata,title").
        preset: network settings, ``"regularized"`` (the model to use), ``"small"`` or ``"overfit"`` (config.PRESETS).
        head: fields of config.HeadConfig that replace the preset's (e.g. ``{"members": 1, "epochs": 20}``).
        seed: seed of the networks, the blanked copies and the out-of-fold SVMs.
        backbone: image backbone name (backbones.BACKBONES); weights: your own state-dict file for it (None: the
            packaged ImageNet weights); image_size: its input (height, width) (None: the backbone's default).
        augment_views: augmented views of each training image added as training rows.
        finetune_blocks, finetune_epochs: fine-tune the backbone's last blocks for that many epochs first (0: frozen).
        stacking: feed a linear SVM's class scores on title + metadata to the network (text_scores.py).
        title_fallback: also train a network without the title, for products that have none.
        metadata_fallback: also fit linear models for products with a title and no attribute (a title-only SVM,
            and with images a title + image SVM; mixing.py).
        refit: after early stopping and calibration on validation, train again on train + validation.
        field_blanking: blanked training copies per product (missing.py); 0 turns them off.
        review_precision: ``needs_review`` marks predictions below the confidence at which validation products
            were right this often.
        sentence_model: a pretrained sentence model whose embedding of the title joins its TF-IDF (sentence.py): a
            sentence-transformers folder or ``"all-MiniLM-L6-v2"`` (the ``sentence`` extra); None: TF-IDF only;
            ``"auto"``: all-MiniLM-L6-v2 for a model that reads the title and no image, where it is installed
            (``config_.sentence_model`` says what a fit chose).
        depth, min_class_size, decode: a label that is a category path (taxonomy.py): train on its first ``depth``
            levels (None: all); a path with fewer training products than ``min_class_size`` backs off to its
            parent; ``decode`` "path" predicts the most probable whole path, "top_down" the most probable node
            level by level (a prediction-time choice: it may be changed after ``fit``). Every predicted path is one
            of the training taxonomy's.
        schema: the roles of the DataFrame's columns (schema.CatalogSchema; None: ``fit``'s ``label`` and inference,
            or the fashion catalog's columns); the fitted one is ``schema_``, saved with the model.
        embedder: an ``embeddings.ImageEmbedder`` to embed with (e.g. one shared by several models, so they share
            its cache reads); None builds one from backbone, weights, image_size and cache_dir.
        cache_dir: the embedding cache and the backbone's ONNX file (None: ~/.cache/deepfusion or
            $DEEPFUSION_CACHE); progress: progress bars.
    """

    def __init__(
        self,
        modalities: str | Sequence[str] = ("metadata",),
        *,
        preset: str = "regularized",
        head: dict[str, Any] | None = None,
        seed: int = 42,
        backbone: str = DEFAULT_BACKBONE,
        weights: str | Path | None = None,
        image_size: tuple[int, int] | None = None,
        augment_views: int = 0,
        finetune_blocks: int = 0,
        finetune_epochs: int = 3,
        stacking: bool = True,
        title_fallback: bool = True,
        metadata_fallback: bool = True,
        refit: bool = False,
        field_blanking: float = 0.5,
        review_precision: float = 0.98,
        sentence_model: str | Path | None = "auto",
        depth: int | None = None,
        min_class_size: int = DEFAULT_MIN_CLASS_SIZE,
        decode: str = "path",
        schema: CatalogSchema | None = None,
        embedder: Any | None = None,
        cache_dir: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        self.modalities = modalities
        self.preset = preset
        self.head = head
        self.seed = seed
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.augment_views = augment_views
        self.finetune_blocks = finetune_blocks
        self.finetune_epochs = finetune_epochs
        self.stacking = stacking
        self.title_fallback = title_fallback
        self.metadata_fallback = metadata_fallback
        self.refit = refit
        self.field_blanking = field_blanking
        self.review_precision = review_precision
        self.sentence_model = sentence_model
        self.depth = depth
        self.min_class_size = min_class_size
        self.decode = decode
        self.schema = schema
        self.embedder = embedder
        self.cache_dir = cache_dir
        self.progress = progress

    # ----------------------------------------------------------------- configuration
    def model_config(self) -> ModelConfig:
        """The typed configuration these parameters describe (a ConfigError, which is a ValueError, names a bad
        one)."""
        return ModelConfig.create(
            self.modalities, preset=self.preset, head=self.head, backbone=self.backbone,
            weights=None if self.weights is None else str(self.weights), image_size=self.image_size,
            augment_views=self.augment_views, finetune_blocks=self.finetune_blocks,
            finetune_epochs=self.finetune_epochs, depth=self.depth, min_class_size=self.min_class_size,
            decode=self.decode, stacking=self.stacking, title_fallback=self.title_fallback,
            metadata_fallback=self.metadata_fallback, refit=self.refit, field_blanking=self.field_blanking,
            review_precision=self.review_precision, seed=self.seed,
            sentence_model=None if self.sentence_model is None else str(self.sentence_model),
        )

    @classmethod
    def from_config(
        cls,
        config: ModelConfig,
        *,
        schema: CatalogSchema | None = None,
        embedder: Any | None = None,
        cache_dir: str | Path | None = None,
        progress: bool = True,
    ) -> Predictor:
        """A Predictor whose parameters are ``config``'s (its ``model_config()`` equals ``config``)."""
        image, tree = config.image, config.tree
        head = {k: v for k, v in config.head.to_json().items() if k != "preset"}
        return cls(
            config.modalities, preset=config.head.preset, head=head, seed=config.seed,
            backbone=image.backbone, weights=image.weights, image_size=image.size, augment_views=image.views,
            finetune_blocks=image.finetune_blocks, finetune_epochs=image.finetune_epochs, stacking=config.stacking,
            title_fallback=config.title_fallback, metadata_fallback=config.metadata_fallback, refit=config.refit,
            field_blanking=config.field_blanking, review_precision=config.review_precision,
            sentence_model=config.sentence_model, depth=tree.depth,
            min_class_size=tree.min_class_size, decode=tree.decode, schema=schema, embedder=embedder,
            cache_dir=cache_dir, progress=progress,
        )

    @property
    def metadata_fields(self) -> tuple[str, ...]:
        """The attribute columns the metadata modality reads."""
        encoder = getattr(self, "metadata_encoder_", None)
        if encoder is not None:
            return (*encoder.categorical, *encoder.numeric)
        return self._schema().metadata

    def _schema(self) -> CatalogSchema:
        return getattr(self, "schema_", None) or self.schema or FASHION

    # ----------------------------------------------------------------- images
    def image_embedder(self):  # noqa: ANN201 - embeddings.ImageEmbedder, imported lazily
        """The ``ImageEmbedder`` this model embeds images with (its backbone, weights, input size and cache), e.g.
        to fill the embedding cache ahead of ``fit`` (``distributed.embed_images_ray``)."""
        from .embeddings import ImageEmbedder

        if getattr(self, "_embedder_obj", None) is None:
            # A given embedder is used until fine-tuning changes the backbone's weights.
            if self.embedder is not None and not getattr(self, "finetuned_weights_", None):
                self._embedder_obj = self.embedder
                return self._embedder_obj
            self._embedder_obj = ImageEmbedder(
                self.backbone,
                weights=self.backbone_weights(),
                image_size=self.image_size,
                cache_dir=self.cache_dir,
                progress=self.progress,
            )
        return self._embedder_obj

    def backbone_weights(self) -> str | Path | None:
        """The weights the backbone embeds with: fine-tuned by ``fit``, else the ones given (None: the stock
        ImageNet weights)."""
        return getattr(self, "finetuned_weights_", None) or self.weights

    def _image_features(self, products: pd.DataFrame, view: int = 0) -> tuple[Any, np.ndarray]:
        # Read from the memory-mapped cache a batch at a time (embeddings.EmbeddingRows), standardised as read.
        rows = self.image_embedder().rows(list(products["image_path"]), view=view)
        return rows.transformed(self._scale_image), rows.ok

    def _scale_image(self, emb: np.ndarray) -> np.ndarray:
        return inputs.scale_image(emb, self.image_mean_, self.image_std_)

    def sentence_encoder(self):  # noqa: ANN201 - sentence.SentenceEncoder or None, imported lazily
        """The sentence model the title encoder embeds with (None without one); loaded once per Predictor."""
        name = self.config_.sentence_model
        if name is None or "title" not in self.config_.modalities:
            return None
        cached = getattr(self, "_sentence_obj", None)
        if cached is None or cached.name != str(name):
            from .sentence import SentenceEncoder

            cached = self._sentence_obj = SentenceEncoder(str(name), cache_dir=self.cache_dir, progress=self.progress)
        return cached

    # ----------------------------------------------------------------- products -> network inputs
    def _encode(
        self,
        products: pd.DataFrame,
        image: tuple[np.ndarray, np.ndarray] | None = None,
        absent: Sequence[str] = (),
        stacked_scores: Callable[[sp.csr_matrix], np.ndarray] | None = None,
    ) -> ModalityData:
        """Network inputs for ``products``; the fields of modalities named in ``absent`` are emptied first, so a
        withheld modality is exactly a product that arrives without it. ``stacked_scores`` maps the stacked SVM's
        input features to its scores (default: the fitted SVM's; training passes out-of-fold ones)."""
        mods = self.config_.modalities
        if absent:
            products = without_modalities(products, absent, self.metadata_fields)
        features: dict[str, Any] = {}
        present: dict[str, np.ndarray] = {}
        if "metadata" in mods:
            features["metadata"] = self.metadata_encoder_.transform(products)
            present["metadata"] = products[list(self.metadata_fields)].notna().any(axis=1).to_numpy()
        if "title" in mods:
            features["title"] = self.title_encoder_.transform(products)
            present["title"] = np.array([bool(clean_title(t)) for t in products[TITLE]])
        if "image" in mods:
            if "image" in absent:
                emb, ok = np.zeros((len(products), self.image_mean_.shape[0])), np.zeros(len(products), bool)
            else:
                emb, ok = image if image is not None else self._image_features(products)
            features["image"] = emb.astype(np.float32)
            present["image"] = ok
        follows = {}
        if self.config_.uses_stacking:
            score = stacked_scores or self.text_model_.scores
            features["text_scores"] = score(inputs.stacking_features(features["title"], features.get("metadata")))
            present["text_scores"] = present["title"].copy()  # without a title the scores are not trusted
            follows["text_scores"] = "title"
        return ModalityData(features, present, follows)

    def _no_metadata_inputs(
        self, data: ModalityData, rows: np.ndarray, scores: np.ndarray | None = None
    ) -> ModalityData:
        """The no-metadata route's inputs for ``rows`` of ``data``, with the title-only SVM's ``scores``
        (default: the fitted SVM's on those rows' titles)."""
        if scores is None:
            scores = self.title_text_model_.scores(data.features["title"][rows])
        return inputs.no_metadata_view(data, rows, self.config_.no_metadata_modalities, scores)

    def _with_blanked_copies(self, products: pd.DataFrame, seed: int | None = None) -> tuple[np.ndarray, pd.DataFrame]:
        cfg = self.config_
        return inputs.with_blanked_copies(
            products,
            share=cfg.field_blanking if "metadata" in cfg.modalities else 0.0,
            fields=self.metadata_fields,
            seed=cfg.seed if seed is None else seed,
            # Products without any attribute go to the no-metadata route when the model has one.
            allow_all=len(cfg.modalities) > 1 and not cfg.uses_metadata_fallback,
        )

    def _fallback_inputs(self, data: ModalityData, products: pd.DataFrame) -> ModalityData:
        """The no-title network's inputs for ``data`` (encoded from ``products``, possibly tiled for augmented
        views): everything but the title, with the metadata encoded as if the title were missing (name_length
        imputed, not the true count), as it is at prediction time."""
        out = inputs.without_title(data)
        if "metadata" in out.features:
            untitled = self.metadata_encoder_.transform(products.assign(**{TITLE: None}))
            repeats = len(data) // len(products)  # 1 unless augmented image views tiled the rows
            out.features["metadata"] = untitled if repeats == 1 else np.tile(untitled, (repeats, 1))
        return out

    # ----------------------------------------------------------------- fit
    def fit(
        self,
        train: pd.DataFrame,
        val: pd.DataFrame | None = None,
        *,
        label: str | None = None,
        image_column: str | None = None,
    ) -> Predictor:
        """Fit encoders on ``train`` only, train the networks (early stopping on ``val``), calibrate on ``val``.
        ``label``: the column to learn (the other columns' roles are inferred, schema.infer_schema, unless the
        Predictor was given a ``schema``). With ``refit`` the encoders and networks are then fitted again on
        ``train`` + ``val`` for the configuration's full number of epochs, keeping the temperatures calibrated on
        ``val``."""
        return_large_blocks()  # or peak memory grows with every array the fit ever freed (training.py)
        chosen = self.model_config()  # "auto" becomes the sentence model this fit uses (or None)
        self.config_ = replace(chosen, sentence_model=choose_sentence_model(chosen.sentence_model, chosen.modalities))
        self._embedder_obj = None
        self.finetuned_weights_ = None
        self.schema_ = self._fit_schema(train, label)
        if "metadata" in self.config_.modalities and not self.schema_.metadata:
            raise ValueError(
                "The model reads metadata, but the catalog schema has no categorical or numeric column. Name them "
                "(--categorical / --numeric) or train without metadata (--modalities title,image)."
            )
        train, val = self._fit_taxonomy(*self._as_catalog(train, val, image_column))
        cfg = self.config_
        val = self._fit_pass(train, val, cfg.head, finetune=cfg.image.finetune_blocks > 0)
        self._build_mixes()
        self.review_threshold_ = self._review_threshold(val)
        self.refit_: dict[str, Any] | None = None
        if cfg.refit and val is not None and len(val):
            # Calibration, early stopping and the validation curve belong to the first pass: the refit has no
            # validation data, so they are kept.
            kept = {name: getattr(self, name) for name in _FIRST_PASS if hasattr(self, name)}
            full = pd.concat([train, val], ignore_index=True)
            head = replace(cfg.head, patience=None)
            log.info("refit on train + validation (%d products, %d epochs)", len(full), head.epochs)
            self._fit_pass(full, None, head, finetune=False)
            self.refit_ = {"products": len(full), "epochs": head.epochs, "train_seconds": self.train_seconds_}
            self.train_seconds_ += kept.pop("train_seconds_")
            self.__dict__.update(kept)
            self._build_mixes()  # the refitted networks with the first pass's mix weights
        elif cfg.uses_stacking and val is not None and len(val):
            self._refit_text_model(train, val)
        return self

    def _refit_text_model(self, train: pd.DataFrame, val: pd.DataFrame) -> None:
        """The stacked SVM fitted again on the training and validation products (one version of each, itself or a
        blanked copy, as in its first fit), once the network, the mix weights and the review threshold are chosen
        on validation: the SVM that scores new products then learns from every labelled product, as the
        no-metadata route's SVMs do (docs/experiments.md, 2026-12-05 "the stacked SVM on train + validation")."""
        seed = self.config_.seed
        source, products = self._with_blanked_copies(pd.concat([train, val], ignore_index=True))
        products = products.iloc[one_version_each(np.random.default_rng(seed), source)]
        title = self.title_encoder_.transform(products)
        metadata = self.metadata_encoder_.transform(products) if "metadata" in self.config_.modalities else None
        y = self.labels_.transform(products[TARGET])
        log.info("stacked SVM fitted again on %d training + validation products", len(products))
        self.text_model_.refit(inputs.stacking_features(title, metadata), y, len(self.labels_.classes_))

    def _as_catalog(
        self, train: pd.DataFrame, val: pd.DataFrame | None, image_column: str | None
    ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        train = catalog_from_frame(train, schema=self.schema_, require_target=True, image_column=image_column)
        train = train[train[TARGET].notna()].reset_index(drop=True)
        if val is not None:
            val = catalog_from_frame(val, schema=self.schema_, require_target=True, image_column=image_column)
        return train, val

    def _fit_taxonomy(
        self, train: pd.DataFrame, val: pd.DataFrame | None
    ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """The classes are the taxonomy's paths (truncated to depth, rare ones backed off to their parent): a flat
        label is a one-level taxonomy and stays as it was."""
        tree = self.config_.tree
        self.taxonomy_ = Taxonomy.fit(
            list(train[TARGET]), columns=self.schema_.levels, label_sep=self.schema_.label_sep, depth=tree.depth,
            min_count=tree.min_class_size,
        )
        if not self.taxonomy_.is_tree:
            return train, val
        parts = []
        for part in (train, val):
            if part is not None:
                part = part.assign(**{TARGET: self.taxonomy_.to_known(part[TARGET])})
                part = part[part[TARGET].notna()].reset_index(drop=True)
            parts.append(part)
        return parts[0], parts[1]

    def _fit_schema(self, train: pd.DataFrame, label: str | None) -> CatalogSchema:
        if self.schema is not None:
            return self.schema if label is None else self.schema.with_roles(label=label)
        if label is None:
            return FASHION
        try:
            return resolve_schema(train, label=label)
        except SchemaError as exc:
            raise ValueError(str(exc)) from None

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
        ok = np.flatnonzero(precision >= self.config_.review_precision)
        return float(confidence[order][ok[-1]]) if len(ok) else 1.0

    def _fit_encoders(self, train: pd.DataFrame) -> None:
        mods = self.config_.modalities
        self.labels_ = ClassIndex().fit(train[TARGET])
        self.train_counts_ = {str(k): int(v) for k, v in train[TARGET].value_counts().items()}
        if "metadata" in mods:
            schema = self._schema()
            self.metadata_encoder_ = MetadataEncoder(
                list(schema.categorical), list(schema.numeric), title_length=schema.is_fashion
            ).fit(train)
        if "title" in mods:
            self.title_encoder_ = TitleEncoder(sentence=self.sentence_encoder()).fit(train)

    def _fit_pass(
        self, train: pd.DataFrame, val: pd.DataFrame | None, head: HeadConfig, *, finetune: bool
    ) -> pd.DataFrame | None:
        """Fit every encoder and network on ``train`` (early stopping and calibration on ``val``, if given).
        Returns the validation rows used: those whose class occurs in ``train``."""
        cfg = self.config_
        self._fit_encoders(train)
        if "image" in cfg.modalities and finetune:
            self._finetune(train)
        # Encoders and image scaling are fitted on the products as they are; the blanked copies only add rows.
        source, products = self._with_blanked_copies(train)
        train_image = None
        if "image" in cfg.modalities:
            # The vectors stay in the memory-mapped cache (embeddings.EmbeddingRows); a batch is read and standardised
            # when training reads it, so no copy of the image features grows with the training set.
            raw = self.image_embedder().rows(list(train["image_path"]))
            ok = raw.ok
            self.image_mean_, self.image_std_ = inputs.image_scaling(raw[ok] if ok.any() else raw[:0], raw.shape[1])
            train_image = (raw.transformed(self._scale_image)[source], ok[source])
        y_train = self.labels_.transform(products[TARGET])
        n_classes = len(self.labels_.classes_)
        train_data = self._encode(products, train_image, stacked_scores=self._stacking_fit(train, source, y_train))
        if "image" in cfg.modalities and cfg.image.views > 0:
            views = [self._image_features(train, view=v) for v in range(1, cfg.image.views + 1)]
            train_data, y_train = inputs.with_augmented_views(train_data, y_train, source, len(train), views)

        val_data = y_val = val_products = None
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
            val_source, val_products = self._with_blanked_copies(val, seed=cfg.seed + 1)
            y_val = y_all[known][val_source]
            val_data = self._encode(val_products)

        result, self.temperature_ = self._train_head(
            train_data, y_train, val_data, y_val, n_classes, "+".join(cfg.modalities), head
        )
        self.net_ = result.net
        if cfg.uses_stacking and val_data is not None and y_val is not None and len(y_val):
            self.main_mix_weights_ = heads.fit_main_mix(self.net_, self.temperature_, val_data, y_val)
        elif not hasattr(self, "main_mix_weights_"):  # a refit keeps the first pass's weights
            self.main_mix_weights_ = network_alone(self.temperature_)
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.member_best_epochs_ = heads.best_epochs(result)
        self.train_seconds_ = result.seconds
        if cfg.uses_metadata_fallback:
            self._fit_no_metadata(train, train_data, y_train, val, val_data, y_val, n_classes)
        if cfg.uses_title_fallback:
            fallback, self.fallback_temperature_ = self._train_head(
                self._fallback_inputs(train_data, products),
                y_train,
                self._fallback_inputs(val_data, val_products) if val_data is not None else None,
                y_val,
                n_classes,
                f"the no-title fallback ({'+'.join(cfg.fallback_modalities)})",
                head,
            )
            self.fallback_net_ = fallback.net
            self.fallback_best_epochs_ = heads.best_epochs(fallback)
            self.train_seconds_ += fallback.seconds
        return val

    def _stacking_fit(
        self, train: pd.DataFrame, source: np.ndarray, y_train: np.ndarray
    ) -> Callable[[sp.csr_matrix], np.ndarray] | None:
        """What ``_encode`` scores the training rows with: the stacked SVM fitted on them, scoring each row
        out-of-fold (None when the model does not stack)."""
        if not self.config_.uses_stacking:
            return None
        seed = self.config_.seed
        groups = duplicate_groups(train)[source]  # a copy stays in its product's fold
        # The SVMs learn from one version of each product (itself or a blanked copy), so they see missing
        # fields without fitting on more rows; every version is scored out-of-fold.
        fit_rows = np.zeros(len(source), dtype=bool)
        fit_rows[one_version_each(np.random.default_rng(seed), source)] = True
        n_classes = len(self.labels_.classes_)

        def out_of_fold(features: sp.csr_matrix) -> np.ndarray:
            self.text_model_ = TextScoreModel(seed=seed).fit(
                features, y_train, n_classes, groups=groups, fit_rows=fit_rows, progress=self.progress
            )
            return self.text_model_.oof_scores_

        return out_of_fold

    def _train_head(self, train_data: ModalityData, y_train: np.ndarray, val_data: ModalityData | None,
                    y_val: np.ndarray | None, n_classes: int, what: str, head: HeadConfig) -> tuple[Any, float]:
        return heads.train_head(train_data, y_train, val_data, y_val, n_classes, what, head,
                                seed=self.config_.seed, progress=self.progress)

    def _fit_no_metadata(
        self, train: pd.DataFrame, train_data: ModalityData, y_train: np.ndarray, val: pd.DataFrame | None,
        val_data: ModalityData | None, y_val: np.ndarray | None, n_classes: int,
    ) -> None:
        """The route for products with a title but no attribute: a title-only linear SVM, and with images a title +
        image linear SVM, fitted on the training products as they are (the first ``len(train)`` rows: no blanked
        copies) and calibrated on the validation products without their attributes; then fitted again on the
        training and validation products (``val_data``'s first ``len(val)`` rows), keeping that calibration.
        No network and no image expert: early-stopped on the validation products, they were ahead there and
        behind on test, and the mix chosen on those products trusted them (docs/experiments.md, 2026-12-05 "the
        no-metadata route, linear"). With no network left on the route, the validation products are only
        needed for the temperature, so the SVMs learn from them too (the entry "the route's SVMs on train +
        validation")."""
        self.no_metadata_net_ = self.image_expert_ = None  # a model loaded from an older folder may have had them
        with_image = "image" in self.config_.modalities

        def as_they_are(data: ModalityData, y: np.ndarray, n: int) -> tuple[Any, ...]:
            # The first n rows: the products themselves, before their blanked copies and augmented views.
            image = (data.features["image"][:n], data.present["image"][:n]) if with_image else (None, None)
            return data.features["title"][:n], *image, y[:n]

        fit = as_they_are(train_data, y_train, len(train))
        self._fit_no_metadata_svms(*fit, n_classes)
        if val is None or val_data is None or y_val is None:
            if not hasattr(self, "no_metadata_mix_weights_"):
                self.no_metadata_mix_weights_ = np.array([[0.0, 1.0, 0.0]] * 2)  # uncalibrated: nothing to calibrate on
            return
        self._fit_no_metadata_mix(val)
        from .embeddings import concatenate_rows  # embeddings is imported lazily (image_embedder)

        # Fitted on a few more products a linear model's scores keep their scale (each model's scores are divided
        # by their own spread), so the temperature calibrated above stays theirs, as in ``config.refit``.
        (title, image, has_image, y), (title_v, image_v, has_image_v, y_v) = fit, as_they_are(val_data, y_val, len(val))
        self._fit_no_metadata_svms(
            sp.vstack([title, title_v], format="csr"),
            None if image is None else concatenate_rows([image, image_v]),
            None if has_image is None else np.concatenate([has_image, has_image_v]),
            np.concatenate([y, y_v]),
            n_classes,
        )

    def _fit_no_metadata_svms(
        self, title: sp.csr_matrix, image: Any, has_image: np.ndarray | None, y: np.ndarray, n_classes: int
    ) -> None:
        """The route's title-only SVM, and with ``image`` (a model that reads images) its title + image linear
        SVM on the products that have one."""
        self.title_text_model_ = TextScoreModel(folds=1, seed=self.config_.seed).fit(title, y, n_classes)
        self.title_image_model_ = None
        if image is not None and has_image is not None and has_image.any():
            rows = np.flatnonzero(has_image)
            self.title_image_model_ = fit_title_image_model(
                title[rows], image[rows], y[rows], n_classes, seed=self.config_.seed
            )

    def _fit_no_metadata_mix(self, val: pd.DataFrame) -> None:
        """The no-metadata route's calibration (mixing.linear_alone), on the validation products as they would
        arrive without attributes: with their image, and once more without it (title only)."""
        titled = val[[bool(clean_title(t)) for t in val[TITLE]]].reset_index(drop=True)
        y = self.labels_.transform(titled[TARGET])
        cases = [("metadata",), ("metadata", "image")] if "image" in self.config_.modalities else [("metadata",)]
        texts, has_image = [], []
        for absent in cases:
            data = self._no_metadata_inputs(self._encode(titled, absent=absent), np.arange(len(titled)))
            has = data.present["image"] if "image" in data.present else np.zeros(len(titled), dtype=bool)
            text = data.features["text_scores"]
            if self.title_image_model_ is not None and has.any():
                # Products with an image: the title + image linear model is their text term (mixing.ExpertMix).
                text, rows = text.copy(), np.flatnonzero(has)
                text[rows] = self.title_image_model_.scores(data.features["title"][rows], data.features["image"][rows])
            texts.append(text)
            has_image.append(has)
        self.no_metadata_mix_weights_ = linear_alone(
            np.concatenate(texts), np.concatenate(has_image), np.tile(y, len(cases)), "no-metadata route"
        )

    def _build_mixes(self) -> None:
        """The torch modules that compute the mixed answers (mixing.ExpertMix), from the networks and weights."""
        self.main_mix_ = ExpertMix(self.net_, None, self.main_mix_weights_)
        if self.config_.uses_metadata_fallback:
            joint = self.title_image_model_
            image_text = None if joint is None else LinearScores(
                joint.coef_, joint.intercept_, joint.scale_, self.title_encoder_.n_features, "image"
            )
            # Inputs in the order a network's would be: the modalities, then the title-only SVM's scores.
            specs = [ModalitySpec("title", self.title_encoder_.n_features, True)]
            if "image" in self.config_.no_metadata_modalities:
                specs.append(ModalitySpec("image", len(self.image_mean_), False))
            specs.append(ModalitySpec("text_scores", len(self.labels_.classes_), False))
            self.no_metadata_mix_ = ExpertMix(
                self.no_metadata_net_, self.image_expert_,
                self.no_metadata_mix_weights_, image_text, input_specs=specs, n_classes=len(self.labels_.classes_),
            ).eval()

    def _finetune(self, train: pd.DataFrame) -> None:
        """Fine-tune the backbone's last blocks on the training images; later steps embed with those weights."""
        import tempfile

        from .backbones import default_cache_dir
        from .finetune import finetune_backbone

        image = self.config_.image
        has_image = train["image_path"].notna().to_numpy()
        folder = Path(self.cache_dir or default_cache_dir()) / "finetuned"
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(suffix=".safetensors", dir=folder)
        os.close(fd)  # finetune_backbone writes the file by name
        # Always tuned from the weights given, so a second fit does not tune an already tuned backbone.
        self.finetuned_weights_ = finetune_backbone(
            image.backbone,
            list(train.loc[has_image, "image_path"]),
            self.labels_.transform(train.loc[has_image, TARGET]),
            Path(name),
            weights=self.weights,
            image_size=image.size,
            blocks=image.finetune_blocks,
            epochs=image.finetune_epochs,
            seed=self.config_.seed,
            progress=self.progress,
        )
        self._embedder_obj = None

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
        each product is answered by the network for the inputs it has (heads.py). ``image_embeddings``: the
        backbone's (unscaled) embeddings of the products' images and which decoded, for callers that embed
        images themselves (the service)."""
        cfg = self.config_
        image = None
        if image_embeddings is not None and "image" in cfg.modalities:
            image = (self._scale_image(image_embeddings[0]), image_embeddings[1])
        data = self._encode(products, image=image, absent=absent)
        # The mixes' weights hold their calibration (mixing.py).
        logits = predict_logits(self.main_mix_, data)
        temperature = np.ones(len(logits), dtype=np.float64)
        if cfg.uses_title_fallback and len(logits):
            rows = np.flatnonzero(~data.present["title"])
            if len(rows):
                logits[rows] = predict_logits(self.fallback_net_, inputs.without_title(data, rows))
                temperature[rows] = self.fallback_temperature_
        if cfg.uses_metadata_fallback and len(logits):
            rows = np.flatnonzero(data.present["title"] & ~data.present["metadata"])
            if len(rows):
                logits[rows] = predict_logits(self.no_metadata_mix_, self._no_metadata_inputs(data, rows))
                temperature[rows] = 1.0
        return logits, temperature, {m: data.present[m] for m in cfg.modalities}

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
        if self.decode not in DECODERS:
            raise ConfigError(f"decode must be one of {', '.join(DECODERS)}, not {self.decode!r}")
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
        confidence = proba[np.arange(len(proba)), chosen]
        out = pd.DataFrame(
            {
                ID: products[ID].to_numpy(),
                "prediction": self.labels_.inverse_transform(chosen),
                "confidence": confidence,
                **self.level_columns(proba, chosen),
                "needs_review": confidence < self.review_threshold_,
                "inputs": inputs.inputs_used(present, len(products)),
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
        """Metrics against the label column. Products of a class the model never learned count as errors (the
        model cannot predict them). With ``return_predictions`` the per-product predictions are added under
        ``"predictions"`` (a DataFrame: id, true, predicted, confidence)."""
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
        """Write the model folder (persistence.py): safetensors + JSON, the configuration verbatim."""
        from .persistence import save_model

        self._check_fitted()
        return save_model(self, Path(path))

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        cache_dir: str | Path | None = None,
        weights: str | Path | None = None,
        progress: bool = True,
    ) -> Predictor:
        """A fitted Predictor from a model folder (format 2, or format 1 migrated); a damaged or foreign folder is
        a model_files.ModelLoadError saying what to do. ``weights``: the backbone weights, when the folder has no
        copy of its own and they are not the packaged ones."""
        from .persistence import load_model

        return load_model(cls, Path(path), cache_dir=cache_dir, weights=weights, progress=progress)
