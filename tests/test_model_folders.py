"""Tampered, damaged and foreign model folders: ``validate_model_folder`` refuses each with a ModelLoadError that
names the file, what is wrong and what to do, instead of a traceback from deep inside torch or scikit-learn."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_catalog
from safetensors.numpy import load_file, save_file

from deepfusion import Predictor, load_catalog
from deepfusion.model_files import ModelLoadError, validate_model_folder

SMALL = (64, 48)
REMEDIES = ("train the model again", "Train the model again", "restore the folder", "Pass the folder",
            "load it with")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fusion model (metadata + title + image, stacked text scores, no-title fallback, the no-metadata route's
    title-only and title + image linear models) on the tiny catalog, so every file this version writes is there."""
    root = tmp_path_factory.mktemp("model_folders")
    frame = load_catalog(make_catalog(root / "catalog", messy=False), progress=False).products
    predictor = Predictor(["metadata", "title", "image"], preset="small", image_size=SMALL, progress=False,
                          cache_dir=root / "cache")
    predictor.fit(frame.iloc[::2], frame.iloc[1::2])
    model = predictor.save(root / "model")
    assert (model / "title_scores.safetensors").is_file() and (model / "title_image_scores.safetensors").is_file()
    assert not (model / "no_metadata.safetensors").exists() and not (model / "image_expert.safetensors").exists()
    return model


@pytest.fixture(scope="module")
def older_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose no-metadata route has a network and an image expert, as models saved by earlier versions have
    (the format-1 fixture, loaded and saved again in this version's format)."""
    root = tmp_path_factory.mktemp("older_model")
    fixture = Path(__file__).parent / "data" / "format1" / "fusion"
    model = Predictor.load(fixture, cache_dir=root / "cache", progress=False).save(root / "model")
    assert (model / "no_metadata.safetensors").is_file() and (model / "image_expert.safetensors").is_file()
    return model


@pytest.fixture
def folder(saved_model: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(saved_model, copy)
    return copy


@pytest.fixture
def older_folder(older_model: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "older"
    shutil.copytree(older_model, copy)
    return copy


# ---------------------------------------------------------------------------------------------- tampering
def _edit(name: str, change: Callable[[Any], Any]) -> Callable[[Path], None]:
    """Rewrite one JSON file of the folder; ``change`` edits the parsed object in place (what it returns is
    ignored, so a lambda may call ``pop``)."""

    def apply(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))

    return apply


def _config(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    return _edit("config.json", change)


def _prep(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    return _edit("preprocessing.json", change)


def _raw(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


def _truncate(name: str, keep: float = 0.5) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: int(len(data) * keep)])

    return apply


def _tensors(name: str, change: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        tensors = load_file(str(folder / name))
        change(tensors)
        save_file(tensors, str(folder / name))

    return apply


def _nan_weight(tensors: dict[str, np.ndarray]) -> None:
    key = next(k for k in sorted(tensors) if k.endswith("classifier.0.weight"))
    tensors[key][0, 0] = np.nan


def _backbone_file(folder: Path, name: str, tensors: dict[str, np.ndarray] | None = None) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors or {"_conv_stem.weight": np.zeros((2, 3, 3, 3), np.float32)}, str(path))
    return path


def _weights_outside(folder: Path) -> None:
    _backbone_file(folder.parent, "outside.safetensors")
    _config(lambda c: c["config"]["image"].update(weights="../outside.safetensors"))(folder)


def _weights_symlink_outside(folder: Path) -> None:
    target = _backbone_file(folder.parent, "elsewhere/backbone.safetensors")
    os.symlink(target, folder / "backbone.safetensors")
    _config(lambda c: c["config"]["image"].update(weights="backbone.safetensors"))(folder)


def _weights_absolute(folder: Path) -> None:
    path = _backbone_file(folder, "backbone.safetensors")
    _config(lambda c: c["config"]["image"].update(weights=str(path)))(folder)


def _weights_foreign(folder: Path) -> None:
    _backbone_file(folder, "backbone.safetensors", {"something.else": np.zeros(3, np.float32)})
    _config(lambda c: c["config"]["image"].update(weights="backbone.safetensors"))(folder)


def _drop_label(prep: dict[str, Any]) -> None:
    prep["labels"]["classes"] = prep["labels"]["classes"][:-1]


def _swap_networks(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes((folder / "fallback.safetensors").read_bytes())


def _no_metadata(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    return _config(lambda c: change(c["no_metadata"]))


def _fewer_labels(tensors: dict[str, np.ndarray]) -> None:
    tensors.update(coef=tensors["coef"][:-1], intercept=tensors["intercept"][:-1])


def _title_gap(prep: dict[str, Any]) -> None:
    vocab = prep["title"]["vocabularies"][0]
    vocab[next(iter(vocab))] = len(vocab) + 5


def _zero_std(prep: dict[str, Any]) -> None:
    prep["image"]["std"][3] = 0.0


def _nested(folder: Path) -> None:
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)


# (id, tampering, words the message must contain)
VARIANTS: list[tuple[str, Callable[[Path], None], list[str]]] = [
    ("config is a list", _raw("config.json", "[1, 2, 3]"), ["config.json", "JSON object", "a list"]),
    ("config is not JSON", _truncate("config.json"), ["config.json", "not readable JSON"]),
    ("config nested too deep", _nested, ["config.json", "not readable JSON"]),
    ("config missing", lambda f: (f / "config.json").unlink(), ["not a DeepFusion model folder", "config.json"]),
    ("format version", _config(lambda c: c.update(format_version=99)), ["model format 99", "reads formats 1 and 2"]),
    ("unknown modality", _config(lambda c: c["config"].update(modalities=["metadata", "sound"])),
     ["'modalities'", "sound"]),
    ("modalities not a list", _config(lambda c: c["config"].update(modalities="metadata")), ["'modalities'"]),
    ("no head", _config(lambda c: c["config"].pop("head")), ["config.json", "no 'head'"]),
    ("head is text", _config(lambda c: c["config"].update(head="small")), ["'head'", "JSON object"]),
    ("head setting unknown", _config(lambda c: c["config"]["head"].update(attention_heads=4)), ["attention_heads"]),
    ("head encoder_dim text", _config(lambda c: c["config"]["head"].update(encoder_dim="32")), ["head.encoder_dim"]),
    ("head hidden dims", _config(lambda c: c["config"]["head"].update(hidden=[65])),
     ["model.safetensors", "classifier.0", "head settings"]),
    ("head combiner", _config(lambda c: c["config"]["head"].update(combiner="attention")), ["head.combiner"]),
    ("head members", _config(lambda c: c["config"]["head"].update(members=2)), ["model.safetensors", "members.0"]),
    ("unknown backbone", _config(lambda c: c["config"]["image"].update(backbone="resnet9000")),
     ["config.json", "Unknown backbone 'resnet9000'"]),
    ("image_size text", _config(lambda c: c["config"]["image"].update(size="64x48")),
     ["'image_size'", "[height, width]"]),
    ("image_size zero", _config(lambda c: c["config"]["image"].update(size=[0, 48])), ["'image_size'"]),
    ("temperature zero", _config(lambda c: c.update(temperature=0)), ["'temperature'", "positive finite", "got 0"]),
    ("temperature NaN", _config(lambda c: c.update(temperature=float("nan"))), ["'temperature'", "got NaN"]),
    ("temperature text", _config(lambda c: c.update(temperature="0.5")), ["'temperature'"]),
    ("main mix weights not 2x3", _config(lambda c: c.update(main_mix_weights=[[1.0, 0.0, 0.0]])),
     ["main_mix_weights", "2 rows of 3"]),
    ("main mix weight infinite", _config(lambda c: c["main_mix_weights"][0].__setitem__(1, float("inf"))),
     ["main_mix_weights", "finite"]),
    ("temperature infinite", _config(lambda c: c.update(temperature=1e999)), ["'temperature'", "Infinity"]),
    ("fallback temperature", _config(lambda c: c["fallback"].update(temperature=-1.0)), ["fallback.temperature"]),
    ("seed text", _config(lambda c: c["config"].update(seed="42")), ["'seed'"]),
    ("input dim metadata", _config(lambda c: c["input_dims"].update(metadata=c["input_dims"]["metadata"] + 1)),
     ["input_dims.metadata", "metadata encoder"]),
    ("input dim image", _config(lambda c: c["input_dims"].update(image=512)), ["input_dims.image is 512", "1904"]),
    ("input dims missing", _config(lambda c: c["input_dims"].pop("text_scores")), ["input_dims lists the inputs"]),
    ("fallback input dim", _config(lambda c: c["fallback"]["input_dims"].update(metadata=3)),
     ["fallback.input_dims.metadata is 3"]),
    ("sparse title made dense", _config(lambda c: c.update(sparse_inputs=[])), ["model.safetensors", "lacks"]),
    ("label missing", _prep(_drop_label), ["preprocessing.json", "labels"]),
    ("label twice", _prep(lambda p: p["labels"]["classes"].append(p["labels"]["classes"][0])),
     ["labels.classes", "twice"]),
    ("no labels", _prep(lambda p: p.pop("labels")), ["preprocessing.json", "no 'labels'"]),
    ("prep is a list", _raw("preprocessing.json", "[]"), ["preprocessing.json", "JSON object"]),
    ("no metadata encoder", _prep(lambda p: p.pop("metadata")), ["no 'metadata' encoder"]),
    ("no title encoder", _prep(lambda p: p.pop("title")), ["no 'title' encoder"]),
    ("no image scaling", _prep(lambda p: p.pop("image")), ["no 'image' encoder"]),
    ("metadata medians", _prep(lambda p: p["metadata"].update(medians={})), ["metadata.medians", "year"]),
    ("metadata scaler width", _prep(lambda p: p["metadata"].update(
        {k: p["metadata"][k][:-1] for k in ("scaler_mean", "scaler_scale", "scaler_var")})),
     ["metadata.scaler_mean has", "numeric features"]),
    ("title vocabulary gap", _prep(_title_gap), ["title.vocabularies[0]"]),
    ("image std zero", _prep(_zero_std), ["image.std", "positive"]),
    ("text score scale zero", _prep(lambda p: p["text_scores"].update(scale=0)), ["text_scores.scale"]),
    ("weights truncated", _truncate("model.safetensors", 0.9), ["model.safetensors", "damaged or truncated"]),
    ("weights corrupt", _raw("model.safetensors", "not a safetensors file at all"),
     ["model.safetensors", "damaged or truncated"]),
    ("weights of another network", _swap_networks, ["model.safetensors", "lacks"]),
    ("weights NaN", _tensors("model.safetensors", _nan_weight), ["model.safetensors", "NaN"]),
    ("fallback weights missing", lambda f: (f / "fallback.safetensors").unlink(), ["fallback.safetensors", "missing"]),
    ("fallback weights truncated", _truncate("fallback.safetensors"), ["fallback.safetensors", "truncated"]),
    ("text scores missing", lambda f: (f / "text_scores.safetensors").unlink(), ["text_scores.safetensors"]),
    ("text scores shape", _tensors("text_scores.safetensors", lambda t: t.update(coef=t["coef"][:, :10])),
     ["text_scores.safetensors", "'coef'"]),
    ("no_metadata not an object", _config(lambda c: c.update(no_metadata=[])), ["'no_metadata'", "JSON object"]),
    ("no_metadata modalities", _no_metadata(lambda n: n.update(modalities=["metadata", "title"])),
     ["no_metadata.modalities", "other than the metadata"]),
    ("mix weights not 2x3", _no_metadata(lambda n: n.update(mix_weights=[[1.0, 0.0]])),
     ["no_metadata.mix_weights", "2 rows of 3"]),
    ("mix weight NaN", _no_metadata(lambda n: n["mix_weights"][1].__setitem__(2, float("nan"))),
     ["no_metadata.mix_weights", "finite"]),
    ("mix weighs a network it lacks", _no_metadata(lambda n: n["mix_weights"][0].__setitem__(0, 1.0)),
     ["no_metadata.mix_weights weigh a network"]),
    ("mix weighs an image expert it lacks", _no_metadata(lambda n: n["mix_weights"][1].__setitem__(2, 0.5)),
     ["no_metadata.mix_weights weigh an image expert"]),
    ("title scores missing", lambda f: (f / "title_scores.safetensors").unlink(),
     ["title_scores.safetensors", "missing", "title-only"]),
    ("title scores truncated", _truncate("title_scores.safetensors"), ["title_scores.safetensors", "truncated"]),
    ("title scores with metadata columns", _tensors("title_scores.safetensors", lambda t: t.update(
        coef=np.hstack([t["coef"], np.zeros((t["coef"].shape[0], 3), np.float32)]))),
     ["title_scores.safetensors", "'coef'", "title features"]),
    ("title scores label count", _tensors("title_scores.safetensors", _fewer_labels),
     ["title_scores.safetensors", "'coef'", "4 labels"]),
    ("title scores NaN", _tensors("title_scores.safetensors", lambda t: t["intercept"].__setitem__(0, np.inf)),
     ["title_scores.safetensors", "'intercept'", "NaN or infinite"]),
    ("title score scale zero", _no_metadata(lambda n: n["text_scores"].update(scale=0)),
     ["no_metadata.text_scores.scale"]),
    ("title score settings missing", _no_metadata(lambda n: n.pop("text_scores")),
     ["'no_metadata'", "no 'text_scores'"]),
    ("backbone weights outside", _weights_outside, ["config.image.weights", "outside the model folder"]),
    ("backbone weights symlink out", _weights_symlink_outside, ["config.image.weights", "outside the model folder"]),
    ("backbone weights absolute", _weights_absolute, ["config.image.weights", "absolute path"]),
    ("backbone weights missing", _config(lambda c: c["config"]["image"].update(weights="backbone.safetensors")),
     ["config.image.weights", "not a file"]),
    ("backbone weights foreign", _weights_foreign, ["backbone.safetensors", "_conv_stem"]),
    ("backbone weights not a name", _config(lambda c: c["config"]["image"].update(weights=5)),
     ["config.image.weights"]),
]


# The network and image expert of an older model's no-metadata route (id, tampering, words).
OLDER_VARIANTS: list[tuple[str, Callable[[Path], None], list[str]]] = [
    ("no_metadata temperature zero", _no_metadata(lambda n: n.update(temperature=0)),
     ["no_metadata.temperature", "positive finite", "got 0"]),
    ("no_metadata temperature NaN", _no_metadata(lambda n: n.update(temperature=float("nan"))),
     ["no_metadata.temperature", "got NaN"]),
    ("no_metadata temperature missing", _no_metadata(lambda n: n.pop("temperature")),
     ["'no_metadata'", "no 'temperature'"]),
    ("no_metadata input dim title", _no_metadata(lambda n: n["input_dims"].update(title=n["input_dims"]["title"] + 1)),
     ["no_metadata.input_dims.title", "title encoder"]),
    ("no_metadata input dim text scores", _no_metadata(lambda n: n["input_dims"].update(text_scores=3)),
     ["no_metadata.input_dims.text_scores is 3", "4 labels"]),
    ("no_metadata reads metadata", _no_metadata(lambda n: n["input_dims"].update(metadata=5)),
     ["no_metadata.input_dims lists the inputs"]),
    ("no_metadata weights missing", lambda f: (f / "no_metadata.safetensors").unlink(),
     ["no_metadata.safetensors", "missing"]),
    ("no_metadata weights truncated", _truncate("no_metadata.safetensors"), ["no_metadata.safetensors", "truncated"]),
    ("no_metadata weights of another network",
     lambda f: (f / "no_metadata.safetensors").write_bytes((f / "model.safetensors").read_bytes()),
     ["no_metadata.safetensors", "encoders.metadata", "does not describe"]),
    ("no_metadata weights NaN", _tensors("no_metadata.safetensors", _nan_weight), ["no_metadata.safetensors", "NaN"]),
    ("image expert weights missing", lambda f: (f / "image_expert.safetensors").unlink(),
     ["image_expert.safetensors", "missing"]),
    ("image expert weights of another network",
     lambda f: (f / "image_expert.safetensors").write_bytes((f / "no_metadata.safetensors").read_bytes()),
     ["image_expert.safetensors", "does not describe"]),
    ("image expert temperature zero", _no_metadata(lambda n: n["image_expert"].update(temperature=0)),
     ["no_metadata.image_expert.temperature"]),
    ("image expert input dim", _no_metadata(lambda n: n["image_expert"]["input_dims"].update(image=7)),
     ["no_metadata.image_expert.input_dims.image"]),
]


@pytest.mark.parametrize("tamper,words", [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_tampered_folder_is_refused_with_a_helpful_message(folder: Path, tamper: Callable[[Path], None],
                                                           words: list[str]) -> None:
    tamper(folder)
    with pytest.raises(ModelLoadError) as caught:
        validate_model_folder(folder)
    message = str(caught.value)
    assert str(folder) in message, message  # names the file
    for word in words:
        assert word in message, message
    assert any(remedy in message for remedy in REMEDIES), message  # says what to do
    assert "Traceback" not in message and len(message) < 600, message


@pytest.mark.parametrize("tamper,words", [v[1:] for v in OLDER_VARIANTS], ids=[v[0] for v in OLDER_VARIANTS])
def test_tampered_older_route_is_refused_with_a_helpful_message(older_folder: Path, tamper: Callable[[Path], None],
                                                                words: list[str]) -> None:
    validate_model_folder(older_folder)  # intact, it passes
    test_tampered_folder_is_refused_with_a_helpful_message(older_folder, tamper, words)


def _fallback_as_main(folder: Path) -> None:
    """Make the folder a metadata + image model: its no-title fallback becomes the main network."""

    def change(config: dict[str, Any]) -> None:
        fallback = config.pop("fallback")
        config.update({k: fallback[k] for k in ("input_dims", "sparse_inputs", "temperature")})
        config["config"]["modalities"] = fallback["modalities"]

    _config(change)(folder)
    _prep(lambda p: (p.pop("text_scores"), p.pop("title")))(folder)
    _swap_networks(folder)


def test_label_count_mismatch_names_the_labels(saved_model: Path, tmp_path: Path) -> None:
    """Without the stacked text scores (whose width is the label count) the mismatch is found in the weights."""
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    _fallback_as_main(folder)
    # The no-metadata route scores titled products: a metadata + image model cannot have one.
    with pytest.raises(ModelLoadError, match=r"'no_metadata' describes the route for titled products"):
        validate_model_folder(folder)
    _config(lambda c: c.pop("no_metadata"))(folder)
    config, prep = validate_model_folder(folder)  # now a valid metadata + image model
    assert config["config"]["modalities"] == ["metadata", "image"]
    _prep(_drop_label)(folder)
    with pytest.raises(ModelLoadError, match=r"scores 4 classes, but preprocessing.json lists 3 labels"):
        validate_model_folder(folder)


def test_intact_folders_pass_and_return_their_files(folder: Path) -> None:
    config, prep = validate_model_folder(folder)
    assert config == json.loads((folder / "config.json").read_text())
    assert prep == json.loads((folder / "preprocessing.json").read_text())
    # A fine-tuned backbone saved beside the model is accepted, by relative name.
    _backbone_file(folder, "backbone.safetensors")
    _config(lambda c: c["config"]["image"].update(weights="backbone.safetensors"))(folder)
    assert validate_model_folder(folder)[0]["config"]["image"]["weights"] == "backbone.safetensors"
    # Keys added by later versions outside the checked structure do not make a folder invalid.
    _config(lambda c: c.update(notes="trained on the spring catalog"))(folder)
    validate_model_folder(folder)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="is not a folder"):
        validate_model_folder(tmp_path / "nothing")
    with pytest.raises(ModelLoadError, match="not a DeepFusion model folder"):
        validate_model_folder(tmp_path)
