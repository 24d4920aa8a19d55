"""A sentence model beside the title's TF-IDF (``sentence_model``): what it adds, how it is saved, where it stops.

Uses the packaged all-MiniLM-L6-v2 (the ``sentence`` extra, installed with ``.[test]``): no download."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from deepfusion import Predictor
from deepfusion.cli import app
from deepfusion.runtime import ExportedModel
from deepfusion.sentence import choose

if importlib.util.find_spec("sentence_transformers") is None or importlib.util.find_spec("all_minilm_l6_v2") is None:
    pytest.skip("the sentence extra is not installed: pip install '.[sentence]'", allow_module_level=True)

runner = CliRunner()

# Four kinds of product, 24 words each: a model trains on the first 18 (each word in one title) and is asked about
# the other 6, words no training title has, so TF-IDF has nothing to go on and only a model that knows what words
# mean can file them.
WORDS = {
    "Fruit": "apple banana cherry grape mango orange peach pear plum lemon lime kiwi melon papaya apricot fig guava "
    "lychee pineapple coconut raspberry strawberry blueberry nectarine",
    "Instruments": "guitar violin piano drum flute trumpet saxophone cello harp clarinet trombone banjo ukulele "
    "accordion harmonica oboe tuba xylophone mandolin bassoon viola keyboard tambourine bagpipes",
    "Railway": "locomotive railway carriage train wagon tram monorail subway metro railroad station platform signal "
    "track sleeper diesel freight caboose coach shunter turntable viaduct depot junction",
    "Animals": "lion tiger elephant giraffe zebra monkey kangaroo panda bear wolf fox rabbit deer horse cow sheep goat "
    "pig camel hippo rhino leopard cheetah squirrel",
}
# The network alone (no stacked SVM: on 72 products with one title per word its out-of-fold scores say nothing),
# trained long enough for a catalog this small.
OPTIONS = {"stacking": False, "head": {"epochs": 200, "min_epochs": 5, "members": 1}, "progress": False}


def products(first: int, last: int, prefix: str) -> pd.DataFrame:
    return pd.DataFrame(
        [{"sku": f"{prefix}{label[:2]}{i}", "name": f"{word} by Maker{i % 5}", "category": label}
         for label, words in WORDS.items() for i, word in enumerate(words.split()[first:last])]
    )


@pytest.fixture(scope="module")
def catalogs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training products, and new products named by words no training title has."""
    return products(0, 18, "S"), products(18, 24, "U")


@pytest.fixture(scope="module")
def fitted(catalogs: tuple[pd.DataFrame, pd.DataFrame]) -> Predictor:
    train, _ = catalogs
    return Predictor("title", sentence_model="all-MiniLM-L6-v2", **OPTIONS).fit(train, label="category")


def test_words_never_seen_in_training_are_filed_by_their_meaning(
    catalogs: tuple[pd.DataFrame, pd.DataFrame], fitted: Predictor
) -> None:
    train, unseen = catalogs
    truth = unseen["category"].to_numpy()
    tfidf_only = Predictor("title", sentence_model=None, **OPTIONS).fit(train, label="category")
    plain = float((tfidf_only.predict(unseen) == truth).mean())
    with_sentence = float((fitted.predict(unseen) == truth).mean())
    assert plain <= 0.35, plain  # about chance (4 classes): TF-IDF cannot read words it never saw
    assert with_sentence >= 0.5, (with_sentence, plain)
    # Words seen in training stay right.
    assert (fitted.predict(train) == train["category"].to_numpy()).mean() >= 0.95


def test_the_model_folder_keeps_its_own_copy_of_the_sentence_model(
    tmp_path: Path, catalogs: tuple[pd.DataFrame, pd.DataFrame], fitted: Predictor
) -> None:
    _, unseen = catalogs
    fitted.save(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["config"]["sentence_model"] == "sentence_model"  # a path inside the folder, not the cache
    copied = {p.name for p in (tmp_path / "model" / "sentence_model").rglob("*") if p.is_file()}
    assert {"model.safetensors", "modules.json", "tokenizer.json"} <= copied
    assert not any(name.endswith((".bin", ".pkl", ".pt")) for name in copied)
    shutil.move(tmp_path / "model", tmp_path / "moved")  # the folder works wherever it goes
    loaded = Predictor.load(tmp_path / "moved", progress=False)
    np.testing.assert_allclose(loaded.predict_proba(unseen), fitted.predict_proba(unseen), atol=1e-5)
    loaded.save(tmp_path / "moved")  # saved again into its own folder: its copy stays
    again = Predictor.load(tmp_path / "moved", progress=False)
    assert again.predict(unseen).tolist() == fitted.predict(unseen).tolist()


def test_the_export_embeds_titles_without_torch_as_the_model_does(
    tmp_path: Path, catalogs: tuple[pd.DataFrame, pd.DataFrame], fitted: Predictor
) -> None:
    train, unseen = catalogs
    fitted.save(tmp_path / "model")
    result = runner.invoke(app, ["export", str(tmp_path / "model"), "--out", str(tmp_path / "export")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["title"]["sentence"]["file"] == "sentence.onnx"
    assert {"sentence.onnx", "sentence_tokenizer.json"} <= set(manifest["files"])
    model = ExportedModel.load(tmp_path / "export", threads=1)
    products = pd.concat([unseen, train.iloc[::7]], ignore_index=True)
    records = products.drop(columns=["category"]).to_dict("records")
    expected = np.asarray(fitted.predict_proba(products))
    np.testing.assert_allclose(model.predict_proba(records), expected, atol=1e-4, rtol=0)
    # Without its sentence model the exported network answers differently: the embedding is really read.
    model.title.sentence, kept = None, model.title.sentence
    assert np.abs(model.predict_proba(records) - expected).max() > 1e-2
    model.title.sentence = kept


def test_train_names_a_missing_sentence_model_folder_with_exit_code_2(
    tmp_path: Path, catalogs: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    train, _ = catalogs
    train.to_csv(tmp_path / "products.csv", index=False)
    missing = tmp_path / "no-such-model"
    missing.mkdir()
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "products.csv"), "--label", "category",
                                 "--model", "fusion", "--sentence-model", str(missing), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "sentence-transformers model folder" in result.output


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01."), "pickled"),
        (lambda f: (f / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "", "type": "os.system"}]'),
         "other than sentence-transformers"),
        (lambda f: (f / "model.safetensors").unlink(), "model.safetensors"),
    ],
)
def test_a_tampered_sentence_model_copy_is_refused_before_loading(
    tmp_path: Path, fitted: Predictor, damage: object, message: str
) -> None:
    from deepfusion.model_files import ModelLoadError

    fitted.save(tmp_path / "model")
    damage(tmp_path / "model" / "sentence_model")  # type: ignore[operator]
    with pytest.raises(ModelLoadError, match=message):
        Predictor.load(tmp_path / "model", progress=False)


def test_the_encoder_remembers_a_bounded_number_of_texts(monkeypatch: pytest.MonkeyPatch) -> None:
    from deepfusion import sentence

    encoder = sentence.SentenceEncoder("all-MiniLM-L6-v2")
    first = encoder.encode(["steam locomotive", "", "rag doll"])
    assert not first[1].any() and np.allclose(np.linalg.norm(first[[0, 2]], axis=1), sentence.SENTENCE_WEIGHT)
    monkeypatch.setattr(sentence, "MEMO_TEXTS", 3)
    again = encoder.encode(["rag doll", "jigsaw puzzle", "volleyball", "steam locomotive"])
    assert len(encoder._memo) <= 3
    np.testing.assert_allclose(again[[3, 0]], first[[0, 2]], atol=1e-6)


def test_auto_reads_text_only_models_with_the_packaged_model(catalogs: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, unseen = catalogs
    # The default ("auto") on a text-only model: the packaged sentence model, recorded in the fitted config.
    default = Predictor("title", **OPTIONS).fit(train, label="category")
    assert Predictor().sentence_model == "auto" and default.config_.sentence_model == "all-MiniLM-L6-v2"
    assert (default.predict(unseen) == unseen["category"].to_numpy()).mean() >= 0.5
    # "none" (the CLI's word) and None: TF-IDF alone.
    for off in ("none", None):
        assert Predictor("title", sentence_model=off, **OPTIONS).model_config().sentence_model is None
    # A model that reads photos keeps TF-IDF alone unless asked; so does one that reads no title.
    assert choose("auto", ("metadata", "title", "image")) is None and choose("auto", ("metadata",)) is None
    assert choose("auto", ("metadata", "title")) == "all-MiniLM-L6-v2" and choose("x", ("image",)) == "x"
