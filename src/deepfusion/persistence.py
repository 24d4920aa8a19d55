"""Saving and loading a fitted ``Predictor``: a folder of safetensors + JSON, nothing pickled.

    RUN/fusion/
      config.json          format_version 2; "config": the ModelConfig verbatim (config.py); the catalog schema and
                           taxonomy; what fitting found (temperatures, mix weights, epochs, training counts,
                           history); each network's input widths; the fallback networks' entries
      preprocessing.json   the encoders: class names, metadata and title encoders, image statistics, stacked SVM
      model.safetensors    the main network; fallback.safetensors the no-title network (models saved by
                           earlier versions also have no_metadata / image_expert.safetensors, read as they were)
      text_scores.safetensors   the stacked SVM's weights
      title_scores.safetensors, title_image_scores.safetensors   the no-metadata route's title-only and title +
                           image linear models
      backbone.safetensors the backbone's weights when they are not the packaged ones (fine-tuned or --weights)
      sentence_model/      with ``sentence_model``: a copy of the sentence model (safetensors + JSON, sentence.py)

``load_model`` checks the whole folder first (model_files.validate_model_folder, which also ``migrate``s a
format-1 config.json), so a damaged or hostile folder is a ModelLoadError that says what to do.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from .config import HeadConfig, ModelConfig
from .features import ClassIndex, MetadataEncoder, TitleEncoder
from .model_files import FORMAT_VERSION, ModelLoadError, validate_model_folder
from .models import FusionEnsemble, FusionNet, ModalitySpec, build_network
from .schema import CatalogSchema
from .sentence import FOLDER as SENTENCE_FOLDER
from .taxonomy import Taxonomy
from .text_scores import TextScoreModel

if TYPE_CHECKING:
    from .predictor import Predictor

BACKBONE_FILE = "backbone.safetensors"


def save_model(p: Predictor, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    cfg = p.config_
    weights = p.backbone_weights() if "image" in cfg.modalities else None
    if weights is not None:
        # Fine-tuned or given with --weights: the model keeps its own copy, so it reloads with the same backbone.
        _save_backbone_weights(Path(weights), path / BACKBONE_FILE)
    # The configuration as fitted, with the two values that are the folder's own: its backbone file, and the
    # decoding in use (a prediction-time choice, Predictor.decode).
    sentence = p.title_encoder_.sentence if "title" in cfg.modalities else None
    if sentence is not None:
        sentence.save(path / SENTENCE_FOLDER)  # the model reads its own copy, wherever it is moved
    saved_cfg = replace(
        cfg,
        image=replace(cfg.image, weights=BACKBONE_FILE if weights is not None else None),
        tree=replace(cfg.tree, decode=p.decode),
        sentence_model=SENTENCE_FOLDER if sentence is not None else None,
    )
    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "config": saved_cfg.to_json(),
        "schema": p.schema_.to_json(),
        "taxonomy": p.taxonomy.to_json(),
        "temperature": p.temperature_,
        "main_mix_weights": np.asarray(p.main_mix_weights_).tolist(),
        "best_epoch": p.best_epoch_,
        "member_best_epochs": p.member_best_epochs_,
        "train_seconds": p.train_seconds_,
        "train_counts": p.train_counts_,
        "history": p.history_,
        "refit": p.refit_,
        "review_threshold": p.review_threshold_,
        **_save_network(p.net_, path / "model.safetensors"),
    }
    prep: dict[str, Any] = {"labels": p.labels_.to_json()}
    if "metadata" in cfg.modalities:
        prep["metadata"] = p.metadata_encoder_.to_json()
    if "title" in cfg.modalities:
        prep["title"] = p.title_encoder_.to_json()
    if "image" in cfg.modalities:
        prep["image"] = {"mean": p.image_mean_.tolist(), "std": p.image_std_.tolist()}
    if cfg.uses_stacking:
        save_numpy(p.text_model_.tensors(), str(path / "text_scores.safetensors"))
        prep["text_scores"] = p.text_model_.to_json()
    if cfg.uses_metadata_fallback:
        save_numpy(p.title_text_model_.tensors(), str(path / "title_scores.safetensors"))
        config["no_metadata"] = {
            "modalities": list(cfg.no_metadata_modalities),
            "text_scores": p.title_text_model_.to_json(),
            "mix_weights": np.asarray(p.no_metadata_mix_weights_).tolist(),
        }
        if p.title_image_model_ is not None:
            save_numpy(p.title_image_model_.tensors(), str(path / "title_image_scores.safetensors"))
            config["no_metadata"]["title_image_scores"] = p.title_image_model_.to_json()
        if p.no_metadata_net_ is not None:  # a model saved by an earlier version keeps its network
            config["no_metadata"].update(
                _save_network(p.no_metadata_net_, path / "no_metadata.safetensors"),
                temperature=p.no_metadata_temperature_,
                member_best_epochs=p.no_metadata_best_epochs_,
            )
        if p.image_expert_ is not None:
            config["no_metadata"]["image_expert"] = {
                **_save_network(p.image_expert_, path / "image_expert.safetensors"),
                "temperature": p.image_expert_temperature_,
                "member_best_epochs": p.image_expert_best_epochs_,
            }
    if cfg.uses_title_fallback:
        config["fallback"] = {
            "modalities": list(cfg.fallback_modalities),
            **_save_network(p.fallback_net_, path / "fallback.safetensors"),
            "temperature": p.fallback_temperature_,
            "member_best_epochs": p.fallback_best_epochs_,
        }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "preprocessing.json").write_text(json.dumps(prep))
    return path


def load_model(
    cls: type[Predictor], path: Path, *, cache_dir: str | Path | None, weights: str | Path | None, progress: bool
) -> Predictor:
    # Every file is checked (types, shapes, files inside the folder) before anything is built from it.
    config, prep = validate_model_folder(path)
    cfg = ModelConfig.from_json(config["config"])
    # The folder's own backbone copy, else the weights the caller names (None: the packaged ones).
    own = path / cfg.image.weights if cfg.image.weights else None
    cfg = replace(cfg, image=replace(cfg.image, weights=str(own or weights) if (own or weights) else None))
    self = cls.from_config(cfg, cache_dir=cache_dir, progress=progress)
    self.config_ = cfg
    self.schema_ = CatalogSchema.from_json(config["schema"])
    self.labels_ = ClassIndex.from_json(prep["labels"])
    n_classes = len(self.labels_.classes_)
    _load_taxonomy(self, path, config)
    if "metadata" in prep:
        self.metadata_encoder_ = MetadataEncoder.from_json(prep["metadata"])
    if cfg.sentence_model is not None:  # the folder's own copy (model_files checked it is inside)
        cfg = replace(cfg, sentence_model=str(path / cfg.sentence_model))
        self.config_ = cfg
        self.sentence_model = cfg.sentence_model
    if "title" in prep:
        sentence = None
        if "sentence" in prep["title"]:
            from .sentence import SentenceEncoder

            sentence = SentenceEncoder(cfg.sentence_model, weight=float(prep["title"]["sentence"]["weight"]),
                                       progress=progress)
            self._sentence_obj = sentence  # what sentence_encoder() hands a later fit: one copy in memory
        self.title_encoder_ = TitleEncoder.from_json(prep["title"], sentence)
    if "image" in prep:
        self.image_mean_ = np.array(prep["image"]["mean"], dtype=np.float32)
        self.image_std_ = np.array(prep["image"]["std"], dtype=np.float32)
    if cfg.uses_stacking:
        if not (path / "text_scores.safetensors").is_file():
            raise ModelLoadError(f"{path} is missing text_scores.safetensors (the stacked text model).")
        self.text_model_ = TextScoreModel.from_state(
            prep["text_scores"], load_numpy(str(path / "text_scores.safetensors"))
        )
    self.net_ = _load_network(path / "model.safetensors", config, n_classes, cfg.head)
    self.temperature_ = float(config["temperature"])
    self.main_mix_weights_ = np.asarray(config["main_mix_weights"], dtype=np.float64)
    if cfg.uses_title_fallback:
        _load_fallback(self, path, config, n_classes, cfg.head)
    if cfg.uses_metadata_fallback:
        _load_no_metadata(self, path, config["no_metadata"], n_classes, cfg.head)
    self.best_epoch_ = config.get("best_epoch", 0)
    self.member_best_epochs_ = config.get("member_best_epochs", [self.best_epoch_])
    self.train_seconds_ = config.get("train_seconds", 0.0)
    self.train_counts_ = config["train_counts"]
    self.history_ = config.get("history", [])
    self.refit_ = config.get("refit")
    self.review_threshold_ = float(config["review_threshold"])
    self._build_mixes()
    return self


def _load_taxonomy(self: Predictor, path: Path, config: dict[str, Any]) -> None:
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


def _load_fallback(self: Predictor, path: Path, config: dict[str, Any], n_classes: int, head: HeadConfig) -> None:
    fallback = config.get("fallback")
    if fallback is None or not (path / "fallback.safetensors").is_file():
        raise ModelLoadError(f"{path} is missing fallback.safetensors (the network for untitled products).")
    self.fallback_net_ = _load_network(path / "fallback.safetensors", fallback, n_classes, head)
    self.fallback_temperature_ = float(fallback["temperature"])
    self.fallback_best_epochs_ = fallback.get("member_best_epochs", [])


def _load_no_metadata(self: Predictor, path: Path, saved: dict[str, Any], n_classes: int, head: HeadConfig) -> None:
    """The no-metadata route: its title-only SVM, the title + image model, their calibration, and for a model
    saved by an earlier version its network and image expert (damaged files become a ModelLoadError here)."""
    self.no_metadata_net_ = self.image_expert_ = None
    try:
        self.title_text_model_ = TextScoreModel.from_state(
            saved["text_scores"], load_numpy(str(path / "title_scores.safetensors"))
        )
        if "input_dims" in saved:
            self.no_metadata_net_ = _load_network(path / "no_metadata.safetensors", saved, n_classes, head)
            self.no_metadata_temperature_ = float(saved["temperature"])
            self.no_metadata_best_epochs_ = saved.get("member_best_epochs", [])
        if "image_expert" in saved:
            expert = saved["image_expert"]
            self.image_expert_ = _load_network(path / "image_expert.safetensors", expert, n_classes, head)
            self.image_expert_temperature_ = float(expert["temperature"])
            self.image_expert_best_epochs_ = expert.get("member_best_epochs", [])
        self.no_metadata_mix_weights_ = np.asarray(saved["mix_weights"], dtype=np.float64)
        self.title_image_model_ = None  # models saved before 2026-12-05 mix the title-only SVM for every product
        if "title_image_scores" in saved:
            self.title_image_model_ = TextScoreModel.from_state(
                saved["title_image_scores"], load_numpy(str(path / "title_image_scores.safetensors"))
            )
    except Exception as exc:  # safetensors, torch and KeyError all mean the same thing to a user here
        raise ModelLoadError(
            f"{path}: the no-metadata route (title_scores.safetensors, title_image_scores.safetensors, "
            f"no_metadata.safetensors, config.json 'no_metadata') cannot be loaded ({type(exc).__name__}: {exc}). "
            "Restore the folder or train the model again."
        ) from None


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
