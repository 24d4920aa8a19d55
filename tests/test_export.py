"""Exported models (export.py) served by the lean runtime (runtime.py): the same predictions as the Predictor
that was exported, from a folder that needs neither torch nor scikit-learn; and each numpy reimplementation
(TF-IDF, title clean-up, metadata encoding, image decoding) against the training code it replaces."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_catalog
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.feature_extraction.text import TfidfVectorizer

from deepfusion import Predictor, load_catalog
from deepfusion import runtime as rt
from deepfusion.catalog import (
    CATEGORICAL,
    IMAGE_FORMATS,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    NUMERIC,
    catalog_from_frame,
)
from deepfusion.embeddings import ImageEmbedder
from deepfusion.export import EXPORT_FILES, ExportError, export_model, tfidf_settings
from deepfusion.features import MetadataEncoder, TitleEncoder, clean_title
from deepfusion.runtime import ExportedModel, ExportLoadError

SMALL = (64, 48)
SRC = Path(__file__).resolve().parents[1] / "src"
TRAINING_STACK = ("torch", "sklearn", "scipy", "pandas")

TRICKY_TITLES = [
    "",
    " ",
    "a",
    "a b c",
    "x y zz",
    "T-shirt",
    "t shirt tshirt",
    "Myntra Men's Yes, its all about me Tee",
    "Catwalk Women Black, Gold and Red Heels",
    "Ünïcödé café naïve",
    "İstanbul straße ß ǅ",
    "日本語 テキスト 服",
    "emoji 👕 shirt 👕👕",
    "tabs\tand\nnew lines  and   spaces",
    "non\u00a0breaking\u2028separator",
    "e\u0301tude combining",
    "ＡＢＣ full width",
    "__init__ foo_bar _x_",
    "red red red red shirt",
    "2012 1 22 333 4444",
    "--- !!! ???",
    "x" * 300,
    " ".join(f"word{i % 37} w{i}" for i in range(200)),
]


# ---------------------------------------------------------------------------------------------- fixtures
# Products with a title and every metadata field empty (blank, whitespace, a year that is no number): the
# no-metadata network's, with and without an image.
NO_METADATA_IDS = ("title-only", "blank-fields", "bad-year-only", "long")


def _test_products(root: Path) -> pd.DataFrame:
    """The messy tiny catalog (missing, corrupt and truncated images, odd fields) plus hand-made products: no
    title, a title with no word in it, an empty product, unknown values, metadata only, title only, titles with
    every metadata field blank; then copies of the catalog's products with every metadata field emptied ("-bare":
    title + image, or title alone where the image is missing or broken)."""
    frame = load_catalog(make_catalog(root / "messy", seed=3), progress=False).products
    extra = pd.DataFrame(
        [
            {"id": "no-title", "gender": "Men", "masterCategory": "Apparel", "productDisplayName": None},
            {"id": "punctuation", "gender": "Women", "productDisplayName": "!!! --- ???"},
            {"id": "empty"},
            {"id": "", "gender": "Martian", "year": "twenty", "productDisplayName": "Ünïcödé Tshirt  a b  c"},
            {"id": "metadata-only", "masterCategory": "Footwear", "subCategory": "Shoes", "year": 2012},
            {"id": "title-only", "productDisplayName": "Levis Men Blue Jeans"},
            {"id": "  spaced  ", "usage": " Casual ", "year": " 2013 ", "productDisplayName": "  Titan Watch  "},
            {"id": "long", "productDisplayName": " ".join(["Black Heels"] * 150)},
            {"id": "blank-fields", **dict.fromkeys(CATEGORICAL, " "), "year": "", "productDisplayName": "Nike Shoes"},
            {"id": "bad-year-only", "year": "twenty", "productDisplayName": "Titan Women Watch"},
        ]
    )
    bare = frame.iloc[::4].assign(**dict.fromkeys([*CATEGORICAL, *NUMERIC], None))
    bare = bare.assign(id=bare["id"].astype(str) + "-bare")
    return pd.concat([frame, extra, bare], ignore_index=True)


def _no_metadata_rows(products: pd.DataFrame) -> np.ndarray:
    """Positions of the products with a title and no metadata field."""
    ids = products["id"].astype(str)
    rows = ids.isin(NO_METADATA_IDS) | ids.str.endswith("-bare")
    assert products.loc[rows, "productDisplayName"].notna().all()
    return np.flatnonzero(rows.to_numpy())


def _check_no_metadata_routing(model: ExportedModel, predictor: Predictor, products: pd.DataFrame) -> None:
    """The products without metadata go through the no-metadata network: the exported model agrees with the
    Predictor on them (checked by the caller) and would not without that network (main scores them otherwise)."""
    rows = _no_metadata_rows(products)
    assert "no_metadata" in model.networks
    # (title, metadata): both -> main, a title alone -> no_metadata, no title -> the no-title fallback.
    present = {"title": np.array([1, 1, 0, 0], bool), "metadata": np.array([1, 0, 1, 0], bool)}
    routes = {k: list(v) for k, v in model._routes(present, 4).items()}
    assert routes == {"main": [0], "fallback": [2, 3], "no_metadata": [1]}
    expected = np.asarray(predictor.predict_proba(products.iloc[rows]))
    records = products.iloc[rows].to_dict("records")
    images = _read_images(products.iloc[rows]["image_path"]) if model.needs_images else None
    np.testing.assert_allclose(model.predict_proba(records, images), expected, atol=1e-4, rtol=0)
    main_only = copy.copy(model)
    main_only.networks = {k: v for k, v in model.networks.items() if k != "no_metadata"}
    assert np.abs(main_only.predict_proba(records, images) - expected).max() > 1e-3


def _train(root: Path, modalities: list[str], **kwargs: object) -> tuple[Path, Path]:
    frame = load_catalog(make_catalog(root / "catalog", messy=False, seed=1), progress=False).products
    predictor = Predictor(modalities, preset="small", progress=False, **kwargs)
    predictor.fit(frame.iloc[::2], frame.iloc[1::2])
    model = predictor.save(root / "model")
    cache = kwargs.get("cache_dir")
    return model, export_model(model, root / "exported", cache_dir=cache)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """metadata + title (stacked SVM scores, no-title fallback), saved and exported."""
    return _train(tmp_path_factory.mktemp("text"), ["metadata", "title"], head={"epochs": 30})


@pytest.fixture(scope="module")
def image_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """metadata + title + image at 64x48, saved and exported."""
    root = tmp_path_factory.mktemp("image")
    return _train(root, ["metadata", "title", "image"], head={"epochs": 30}, image_size=SMALL, cache_dir=root / "cache")


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return _test_products(tmp_path_factory.mktemp("products"))


def _read_images(paths: pd.Series) -> list[bytes | None]:
    return [Path(p).read_bytes() if isinstance(p, str) and Path(p).is_file() else None for p in paths]


def _assert_same_predictions(expected: pd.DataFrame, got: pd.DataFrame, threshold: float | None) -> None:
    assert list(got["id"]) == list(expected["id"])
    assert list(got["prediction"]) == list(expected["prediction"])
    assert list(got["inputs"]) == list(expected["inputs"])
    # The review threshold is a validation product's confidence, so a copy of that product sits right on it and
    # float32 noise may put it on either side: compare the flag away from the threshold only.
    assert threshold is not None
    clear = np.abs(expected["confidence"].to_numpy() - threshold) > 1e-4
    assert list(got["needs_review"][clear]) == list(expected["needs_review"][clear])
    for k in (1, 2, 3):
        assert list(got[f"top{k}_label"]) == list(expected[f"top{k}_label"])
        np.testing.assert_allclose(got[f"top{k}_confidence"], expected[f"top{k}_confidence"], atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- agreement
def test_exported_text_model_predicts_like_the_predictor(text_model: tuple[Path, Path], products: pd.DataFrame):
    model_dir, exported = text_model
    predictor = Predictor.load(model_dir, progress=False)
    model = ExportedModel.load(exported, threads=1)
    assert model.classes == predictor.classes_ and model.modalities == ["metadata", "title"]
    expected = predictor.predict_frame(products)
    _assert_same_predictions(expected, model.predict_frame(products), model.review_threshold)
    proba = model.predict_proba(products.to_dict("records"))
    np.testing.assert_allclose(proba, np.asarray(predictor.predict_proba(products)), atol=1e-4, rtol=0)
    # The untitled products went through the fallback network (they would score differently in the main one).
    inputs = dict(zip(expected["id"], expected["inputs"], strict=True))
    assert inputs["no-title"] == "metadata" and inputs["punctuation"] == "metadata" and inputs["empty"] == "none"
    assert inputs["title-only"] == "title" and inputs["metadata-only"] == "metadata"
    blank = str(np.flatnonzero(products["id"].astype(str).to_numpy() == "")[0])
    assert blank in inputs and "spaced" in inputs  # a blank id becomes the product's position; ids are stripped
    # Every metadata field empty (blank, whitespace, a year that is no number): the no-metadata network's.
    assert {inputs[i] for i in NO_METADATA_IDS} == {"title"} and inputs["1001-bare"] == "title"
    _check_no_metadata_routing(model, predictor, products)


def test_exported_image_model_predicts_like_the_predictor(image_model: tuple[Path, Path], products: pd.DataFrame):
    model_dir, exported = image_model
    predictor = Predictor.load(model_dir, progress=False, cache_dir=model_dir.parent / "cache")
    model = ExportedModel.load(exported, threads=1)
    assert model.needs_images and model.image is not None and model.image.size == SMALL
    expected = predictor.predict_frame(products)
    got = model.predict_frame(products)  # reads the images from image_path, as the Predictor does
    _assert_same_predictions(expected, got, model.review_threshold)
    inputs = dict(zip(expected["id"], expected["inputs"], strict=True))
    # Missing (5003), corrupt (5004) and truncated (5005) images count as missing, in both.
    assert {inputs["5003"], inputs["5004"], inputs["5005"]} == {"metadata+title"}
    assert inputs["1001"] == "metadata+title+image"
    # Without metadata: title + image, or the title alone (no image, or one that does not decode).
    bare = {inputs[i] for i in inputs if i.endswith("-bare")}
    assert inputs["1001-bare"] == "title+image" and bare == {"title+image", "title"}
    _check_no_metadata_routing(model, predictor, products)

    # Bytes in, the same answers; and through image_pixels + embed_pixels, as a service would embed them.
    records = products.to_dict("records")
    images = _read_images(products["image_path"])
    by_bytes = model.predict(records, images)
    proba = model.predict_proba(records, images)
    np.testing.assert_allclose(proba, np.asarray(predictor.predict_proba(products)), atol=1e-4, rtol=0)
    np.testing.assert_allclose([r["confidence"] for r in by_bytes], expected["confidence"], atol=1e-4, rtol=0)
    emb, ok = model.embed_images(images)
    assert ok.sum() == sum("image" in v for v in expected["inputs"])
    by_embeddings = model.predict(records, image_embeddings=(emb, ok))
    assert [r["prediction"] for r in by_embeddings] == [r["prediction"] for r in by_bytes]
    # Without images the image input is absent, as for the Predictor when the fields are emptied.
    no_images = model.predict(records)
    assert all("image" not in r["inputs"] for r in no_images)
    blank = predictor.predict_frame(products.assign(image_path=None))
    assert [r["prediction"] for r in no_images] == list(blank["prediction"])


def test_predictions_do_not_depend_on_batching(text_model: tuple[Path, Path], products: pd.DataFrame) -> None:
    model = ExportedModel.load(text_model[1])
    records = products.to_dict("records")
    together = model.predict(records, top_k=2)
    in_pairs = model.predict(records, top_k=2, batch_size=2)
    one_by_one = [model.predict([r], top_k=2)[0] for r in records]
    for a, b, c in zip(together, in_pairs, one_by_one, strict=True):
        assert a["prediction"] == b["prediction"] == c["prediction"]
        assert a["id"] == b["id"] and a["inputs"] == c["inputs"]  # ids differ only for products without one
        assert abs(a["confidence"] - b["confidence"]) < 1e-6 and abs(a["confidence"] - c["confidence"]) < 1e-6
    row = together[0]
    assert set(row) == {"id", "prediction", "confidence", "top_k", "inputs", "needs_review"}
    assert len(row["top_k"]) == 2 and row["top_k"][0] == {"label": row["prediction"], "confidence": row["confidence"]}
    assert model.predict([]) == []
    assert len(model.predict([{}], top_k=99)[0]["top_k"]) == len(model.classes)
    with pytest.raises(ValueError, match="top_k"):
        model.predict(records, top_k=0)


@pytest.mark.parametrize(
    ("modalities", "overrides"),
    [
        (["metadata"], {}),
        (["metadata", "title"], {"head": {"members": 2, "combiner": "gated"}, "stacking": False}),
        (["metadata", "title"], {"title_fallback": False}),
        (["metadata", "title"], {"metadata_fallback": False}),
    ],
    ids=["metadata-only", "gated-ensemble", "no-title-fallback", "no-metadata-fallback"],
)
def test_other_architectures_export(
    tmp_path: Path, products: pd.DataFrame, modalities: list[str], overrides: dict[str, object]
) -> None:
    head = {"epochs": 10, **overrides.get("head", {})}  # type: ignore[dict-item]
    model_dir, exported = _train(tmp_path, modalities, **{**overrides, "head": head})
    manifest = json.loads((exported / "manifest.json").read_text())
    assert ("fallback" in manifest["networks"]) == ("title" in modalities and overrides.get("title_fallback", True))
    has_no_metadata = "title" in modalities and overrides.get("metadata_fallback", True)
    assert ("no_metadata" in manifest["networks"]) == has_no_metadata
    assert (manifest["text_scores"] is None) == (not overrides.get("stacking", True) or "title" not in modalities)
    if has_no_metadata:  # its own title-only SVM, whether or not the main network stacks one
        assert manifest["networks"]["no_metadata"]["inputs"] == ["title_indices", "title_values", "present_title"]
    predictor = Predictor.load(model_dir, progress=False)
    expected = predictor.predict_frame(products)
    model = ExportedModel.load(exported)
    _assert_same_predictions(expected, model.predict_frame(products), model.review_threshold)
    np.testing.assert_allclose(
        model.predict_proba(products.to_dict("records")), np.asarray(predictor.predict_proba(products)), atol=1e-4
    )


# ---------------------------------------------------------------------------------------------- the folder
def test_export_folder_is_self_contained(image_model: tuple[Path, Path]) -> None:
    model_dir, exported = image_model
    manifest = json.loads((exported / "manifest.json").read_text())
    names = {p.name for p in exported.iterdir()}
    assert names == {"manifest.json", *manifest["files"]} and names <= EXPORT_FILES
    assert {"main.onnx", "fallback.onnx", "no_metadata.onnx", "backbone.onnx", "preprocessing.json"} <= names
    for name, entry in manifest["files"].items():
        data = (exported / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert manifest["format"] == "deepfusion-export" and manifest["format_version"] == rt.EXPORT_VERSION
    assert manifest["classes"] == ["Heels", "Jeans", "Tshirts", "Watches"]
    config = json.loads((model_dir / "config.json").read_text())
    assert manifest["review_threshold"] == config["review_threshold"]
    # The main network's calibration is folded into its mix with the stacked SVM (mixing.py), as the no-metadata one.
    assert manifest["networks"]["main"]["temperature"] == 1.0 and len(config["main_mix_weights"]) == 2
    assert manifest["networks"]["fallback"]["temperature"] == config["fallback"]["temperature"]
    assert manifest["networks"]["main"]["inputs"] == [
        "metadata", "title_indices", "title_values", "image", "present_metadata", "present_title", "present_image",
    ]  # fmt: skip
    assert manifest["networks"]["fallback"]["inputs"] == ["metadata", "image", "present_metadata", "present_image"]
    no_metadata = manifest["networks"]["no_metadata"]
    assert no_metadata["file"] == "no_metadata.onnx" and no_metadata["modalities"] == ["title", "image"]
    assert no_metadata["temperature"] == 1.0  # the mix's weights hold the calibration (mixing.py)
    # The route is linear (no network, no image expert): only the text term has weight.
    saved = config["no_metadata"]
    assert "input_dims" not in saved and "image_expert" not in saved and "title_image_scores" in saved
    weights = np.array(saved["mix_weights"])
    assert weights.shape == (2, 3) and not weights[:, [0, 2]].any() and (weights[:, 1] > 0).all()
    # The linear models never read the title's mask, so the graph does not take it.
    assert no_metadata["inputs"] == ["title_indices", "title_values", "image", "present_image"]
    assert no_metadata["text_scores"] == "title" and manifest["networks"]["main"]["text_scores"] == "title+metadata"
    assert manifest["image"]["size"] == list(SMALL) and manifest["image"]["file"] == "backbone.onnx"
    assert manifest["fields"]["categorical"] == CATEGORICAL
    # The backbone is the very file the training embedder ran.
    embedder = ImageEmbedder(image_size=SMALL, cache_dir=model_dir.parent / "cache", progress=False)
    from deepfusion.backbones import onnx_model_path

    source = onnx_model_path(embedder.spec, None, SMALL, embedder.cache_dir)
    assert (exported / "backbone.onnx").read_bytes() == source.read_bytes()
    # The copied folder works anywhere: nothing outside it is named.
    text = (exported / "manifest.json").read_text()
    assert str(model_dir) not in text and str(model_dir.parent) not in text


def test_damaged_or_foreign_folders_are_refused(text_model: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, exported = text_model
    with pytest.raises(ExportLoadError, match="deepfusion export"):
        ExportedModel.load(model_dir)  # a model folder, not an export: the message says how to export it
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    with (copy / "main.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ExportLoadError, match="SHA-256"):
        ExportedModel.load(copy)
    shutil.copyfile(exported / "main.onnx", copy / "main.onnx")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["networks"]["main"]["file"] = "../main.onnx"
    manifest["files"]["../main.onnx"] = manifest["files"]["main.onnx"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportLoadError, match="not a file of the folder"):
        ExportedModel.load(copy)
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportLoadError, match="export format 99"):
        ExportedModel.load(copy)
    # An export without the no-metadata network (format 1) would score products without metadata differently
    # from the Predictor: refused, as is a network this runtime would not route products to.
    original = json.loads((exported / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**original, "format_version": 1}))
    with pytest.raises(ExportLoadError, match="export format 1; .*deepfusion export"):
        ExportedModel.load(copy)
    unknown = {**original, "networks": {**original["networks"], "no_image": original["networks"]["fallback"]}}
    (copy / "manifest.json").write_text(json.dumps(unknown))
    with pytest.raises(ExportLoadError, match="'no_image' is unknown"):
        ExportedModel.load(copy)
    (copy / "no_metadata.onnx").unlink()
    (copy / "manifest.json").write_text(json.dumps(original))
    with pytest.raises(ExportLoadError, match="no_metadata.onnx is missing"):
        ExportedModel.load(copy)


def test_export_refuses_a_folder_holding_other_files_and_replaces_an_earlier_export(
    text_model: tuple[Path, Path], tmp_path: Path
) -> None:
    model_dir, _ = text_model
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="notes.txt"):
        export_model(model_dir, busy)
    assert (busy / "notes.txt").read_text() == "mine"
    (busy / "notes.txt").unlink()
    (busy / "metrics.json").write_text("{}")  # a name an export writes, but no export's manifest beside it
    with pytest.raises(ExportError, match="metrics.json"):
        export_model(model_dir, busy)
    with pytest.raises(ExportError, match="model folder itself"):
        export_model(model_dir, model_dir)
    again = export_model(model_dir, tmp_path / "again")
    (again / "fallback.onnx").unlink()  # an earlier, damaged export is replaced whole
    export_model(model_dir, again)
    assert (again / "fallback.onnx").is_file() and ExportedModel.load(again).predict([{}])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


# ---------------------------------------------------------------------------------------------- no training stack
def test_runtime_imports_no_training_stack() -> None:
    """``import deepfusion.runtime`` must not pull in the training stack (this needs the package's __init__ to
    import its submodules lazily)."""
    code = (
        "import sys, deepfusion.runtime; "
        f"loaded = [m for m in {TRAINING_STACK!r} if m in sys.modules]; "
        "assert not loaded, f'importing deepfusion.runtime loaded {loaded}'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_exported_model_predicts_where_the_training_stack_cannot_be_imported(
    image_model: tuple[Path, Path], products: pd.DataFrame, tmp_path: Path
) -> None:
    """Load runtime.py on its own and predict with torch, scikit-learn, scipy and pandas made unimportable:
    the answers are those of the runtime imported normally."""
    _, exported = image_model
    ids = products["id"].astype(str)
    rows = products.iloc[[0, 1, 30, *np.flatnonzero(ids.isin(["title-only", "metadata-only", "1001-bare"]))]]
    records = [{k: v for k, v in r.items() if k != "image_path" and v is not None and v == v} for r in
               rows.astype(object).to_dict("records")]  # fmt: skip
    images = _read_images(rows["image_path"])
    (tmp_path / "request.json").write_text(json.dumps(records))
    for i, data in enumerate(images):
        if data is not None:
            (tmp_path / f"{i}.img").write_bytes(data)
    script = f"""
import importlib.util, json, sys
from pathlib import Path
for name in {TRAINING_STACK!r}:
    sys.modules[name] = None  # any import of it now raises ImportError
spec = importlib.util.spec_from_file_location("lean_runtime", {str(SRC / "deepfusion" / "runtime.py")!r})
runtime = importlib.util.module_from_spec(spec)
sys.modules["lean_runtime"] = runtime
spec.loader.exec_module(runtime)
folder = Path({str(tmp_path)!r})
records = json.loads((folder / "request.json").read_text())
images = [(folder / f"{{i}}.img").read_bytes() if (folder / f"{{i}}.img").is_file() else None
          for i in range(len(records))]
model = runtime.ExportedModel.load({str(exported)!r}, threads=1)
print(json.dumps(model.predict(records, images)))
"""
    env = {**os.environ, "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    lean = json.loads(result.stdout)
    expected = ExportedModel.load(exported, threads=1).predict(records, images)
    assert [r["prediction"] for r in lean] == [r["prediction"] for r in expected]
    assert [r["inputs"] for r in lean] == [r["inputs"] for r in expected]
    np.testing.assert_allclose([r["confidence"] for r in lean], [r["confidence"] for r in expected], atol=1e-6)
    assert "image" in lean[0]["inputs"] and lean[-1]["inputs"] == "title+image"  # 1001-bare: no metadata


# ---------------------------------------------------------------------------------------------- the encoders
def test_clean_title_matches_features() -> None:
    for text in [*TRICKY_TITLES, None, float("nan"), 123, 4.5, np.float32("nan")]:
        assert rt.clean_title(text) == clean_title(text), repr(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_clean_title_matches_features_on_any_text(text: str) -> None:
    assert rt.clean_title(text) == clean_title(text)


def test_title_tfidf_matches_the_title_encoder() -> None:
    """The production path: cleaned titles, TitleEncoder's settings, saved and reloaded as a model is."""
    frame = pd.DataFrame({"productDisplayName": TRICKY_TITLES * 3})
    encoder = TitleEncoder.from_json(TitleEncoder().fit(frame).to_json())
    vectorizer = rt.TitleVectorizer.from_state(tfidf_settings(encoder.vectorizers_), encoder.to_json())
    assert vectorizer.n_features == encoder.n_features
    queries = [*TRICKY_TITLES, "brand new words never seen", "shirt shirt", "Ünïcödé straße shirt"]
    expected = encoder.transform(pd.DataFrame({"productDisplayName": queries})).toarray()
    np.testing.assert_array_equal(vectorizer.dense([clean_title(t) for t in queries]), expected)


@pytest.mark.parametrize("analyzer", ["word", "char_wb"])
def test_tfidf_analyzers_match_sklearn_on_raw_text(analyzer: str) -> None:
    """The analyzers on uncleaned text too (unicode, punctuation, 1-letter words, whitespace runs, long text)."""
    template = TitleEncoder()._vectorizers()[0 if analyzer == "word" else 1]
    vec = TfidfVectorizer(**{**template.get_params(), "min_df": 1, "max_features": None}).fit(TRICKY_TITLES)
    ours = rt.TfidfAnalyzer(tfidf_settings([vec])[0], vec.vocabulary_, vec.idf_)
    queries = [*TRICKY_TITLES, "MiXeD CaSe Café", "a\u3000b\u00a0\u00a0c"]
    for query in queries:
        assert ours.analyze(query) == vec.build_analyzer()(query), repr(query)
    expected = vec.transform(queries).toarray()
    got = np.zeros_like(expected)
    for i, (idx, values) in enumerate(ours.transform(queries)):
        assert list(idx) == sorted(idx)
        got[i, idx] = values
    np.testing.assert_array_equal(got, expected)


_CORPUS = ["red shirt", "blue shirt men", "a red dress", "dress for women", "x y z shirt", "t shirt tee"] * 2
_TFIDF = [
    TfidfVectorizer(**{**v.get_params(), "min_df": 1, "max_features": None}).fit(_CORPUS)
    for v in TitleEncoder()._vectorizers()
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["red", "shirt", "a", "dress", "men", "t", "tee", "zz", "é", "-", "  "]), max_size=12))
def test_tfidf_matches_sklearn_on_random_titles(words: list[str]) -> None:
    text = " ".join(words)
    for vec in _TFIDF:
        ours = rt.TfidfAnalyzer(tfidf_settings([vec])[0], vec.vocabulary_, vec.idf_)
        idx, values = ours.transform([text])[0]
        got = np.zeros(len(vec.vocabulary_), dtype=np.float32)
        got[idx] = values
        np.testing.assert_array_equal(got, vec.transform([text]).toarray()[0])


@pytest.mark.parametrize("indicators", [True, False])
def test_metadata_transform_matches_the_encoder(indicators: bool) -> None:
    """Through catalog_from_frame and MetadataEncoder (reloaded from JSON) vs field clean-up and the numpy
    encoding from the same JSON: unknown and missing values, numbers as text, blanks, no title."""
    train = catalog_from_frame(
        pd.DataFrame(
            {
                "gender": ["Men", "Women", None, "Men", "Unisex"],
                "masterCategory": ["Apparel", "Footwear", "Apparel", None, "Accessories"],
                "season": ["Summer", "Fall", "Summer", "Winter", None],
                "year": [2011, 2012, None, 2015, 2013],
                "productDisplayName": ["Red shirt", None, "Blue jeans for men", "!!!", "Watch"],
            }
        )
    )
    state = MetadataEncoder(missing_indicators=indicators).fit(train).to_json()
    if not indicators:
        state.pop("missing_indicators")  # as in models saved before the flag existed
    encoder = MetadataEncoder.from_json(state)
    queries = [
        {"gender": "Men", "masterCategory": "Apparel", "year": 2012, "productDisplayName": "Red shirt"},
        {"gender": "Martian", "season": "Monsoon", "year": "twenty", "productDisplayName": "one two three four"},
        {"gender": " Women ", "year": " 2014 ", "usage": "", "baseColour": "  "},
        {"year": "1e3", "productDisplayName": "--"},
        {"year": True, "subCategory": 7},
        {"year": 20120, "productDisplayName": " ".join(["word"] * 40)},  # numbers beyond the training range
        {},
    ]
    expected = encoder.transform(catalog_from_frame(pd.DataFrame(queries)))
    fields = {"id": "id", "title": "productDisplayName", "categorical": list(CATEGORICAL), "numeric": ["year"]}
    got = rt.MetadataTransform(state).transform([rt.product_fields(q, i, fields) for i, q in enumerate(queries)])
    assert got.shape == expected.shape == (len(queries), encoder.n_features)
    np.testing.assert_array_equal(got, expected)


def _image_bytes(size: tuple[int, int], mode: str, fmt: str) -> bytes:
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def test_image_decoding_matches_the_embedder(image_model: tuple[Path, Path]) -> None:
    assert rt.IMAGE_FORMATS == IMAGE_FORMATS and rt.MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS
    assert rt.MAX_IMAGE_BYTES == MAX_IMAGE_BYTES
    model = ExportedModel.load(image_model[1], threads=1)
    embedder = ImageEmbedder(image_size=SMALL, cache_dir=image_model[0].parent / "cache", progress=False)
    samples = [
        _image_bytes((60, 80), "RGB", "JPEG"),
        _image_bytes((60, 80), "L", "JPEG"),
        _image_bytes((1800, 2400), "RGB", "JPEG"),  # decoded at a reduced scale (draft)
        _image_bytes((61, 79), "RGBA", "PNG"),
        _image_bytes((50, 50), "P", "GIF"),
        _image_bytes((40, 90), "RGB", "BMP"),
        _image_bytes((70, 70), "RGB", "WEBP"),
    ]
    pixels = [model.image_pixels(data) for data in samples]
    for data, ours in zip(samples, pixels, strict=True):
        np.testing.assert_array_equal(ours, embedder.pixels(data))
        assert ours.shape == (*SMALL, 3) and ours.dtype == np.uint8
    np.testing.assert_allclose(model.embed_pixels(np.stack(pixels)), embedder.forward(np.stack(pixels)), atol=1e-2)
    small = ExportedModel.load(image_model[1], max_image_pixels=100 * 100)
    with pytest.raises(rt.ImageTooLarge):
        small.image_pixels(_image_bytes((200, 200), "RGB", "PNG"))
    for bad in (b"not an image", samples[0][:200], _image_bytes((20, 20), "RGB", "TIFF")):
        with pytest.raises(rt.DECODE_ERRORS):
            model.image_pixels(bad)
    emb, ok = model.embed_images([samples[0], None, b"junk"])
    assert list(ok) == [True, False, False] and not emb[1:].any()


def test_export_verb_writes_a_folder_the_runtime_loads(clean_catalog_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deepfusion.cli import app
    from deepfusion.runtime import ExportedModel

    frame = load_catalog(clean_catalog_dir, progress=False).products
    Predictor(["metadata", "title"], preset="small", head={"epochs": 5}, progress=False).fit(
        frame.iloc[::2], frame.iloc[1::2]
    ).save(tmp_path / "model")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "model"), "--out", str(tmp_path / "exported")])
    assert result.exit_code == 0, result.output
    assert ExportedModel.load(tmp_path / "exported").classes
    # The model folder itself is not an export target; a user error, exit 2.
    result = CliRunner().invoke(app, ["export", str(tmp_path / "model"), "--out", str(tmp_path / "model")])
    assert result.exit_code == 2, result.output
