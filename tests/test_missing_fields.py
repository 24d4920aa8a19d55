"""Products with empty fields, sent the way a user sends them: blank cells in the CSV, null fields in a request."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CLASSES, HEADER, make_catalog
from typer.testing import CliRunner

from deepfusion import Predictor, load_catalog
from deepfusion.cli import app
from deepfusion.features import MetadataEncoder
from deepfusion.missing import METADATA_FIELDS, blank_fields, without_modalities

runner = CliRunner()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_catalog(tmp_path_factory.mktemp("missing") / "catalog", n_per_class=24, messy=False, seed=3)


@pytest.fixture(scope="module")
def parts(catalog: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    frame = load_catalog(catalog, progress=False).products
    return frame.iloc[0::3], frame.iloc[1::3], frame.iloc[2::3].reset_index(drop=True)


@pytest.fixture(scope="module")
def model(parts: tuple[pd.DataFrame, ...], tmp_path_factory: pytest.TempPathFactory) -> Path:
    train, val, _ = parts
    # Titles here name the colour and brand first and the article last; a vague title ("Brand1 Men Black 7")
    # leaves the metadata as the only clue, so the model has to use both.
    predictor = Predictor(["metadata", "title"], preset="small", head={"epochs": 40}, progress=False, seed=0)
    return predictor.fit(train, val).save(tmp_path_factory.mktemp("model") / "fusion")


def _write_csv(frame: pd.DataFrame, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cols = HEADER.split(",")
    frame.reindex(columns=cols).to_csv(folder / "styles.csv", index=False)
    return folder


def _predict_cli(model: Path, data: Path, out: Path) -> pd.DataFrame:
    result = runner.invoke(app, ["predict", str(model), "--data", str(data), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return pd.read_csv(out, dtype={"id": str})


def test_metadata_encoder_marks_missing_numbers_and_reads_old_state(parts: tuple[pd.DataFrame, ...]) -> None:
    train = parts[0]
    enc = MetadataEncoder().fit(train)
    blank = train.assign(year=np.nan)
    x_full, x_blank = enc.transform(train), enc.transform(blank)
    flag = enc.feature_names().index("year_missing")
    assert set(np.unique(x_full[:, flag])) != set(np.unique(x_blank[:, flag]))
    # A state saved before the indicators existed still loads with the old width.
    state = enc.to_json()
    state.pop("missing_indicators")
    old = MetadataEncoder.from_json(state)
    assert not old.missing_indicators and len(old.feature_names()) == len(enc.feature_names()) - 1


def test_title_only_and_partial_products_through_predict(
    model: Path, parts: tuple[pd.DataFrame, ...], tmp_path: Path
) -> None:
    test = parts[2]
    truth = test.set_index("id")["articleType"]
    full = _predict_cli(model, _write_csv(test, tmp_path / "full"), tmp_path / "full.csv")
    title_only = _predict_cli(
        model, _write_csv(without_modalities(test, ["metadata"]), tmp_path / "title"), tmp_path / "title.csv"
    )
    blanked = blank_fields(test, np.random.default_rng(0), p_field=0.3)
    random = _predict_cli(model, _write_csv(blanked, tmp_path / "random"), tmp_path / "random.csv")

    def accuracy(pred: pd.DataFrame) -> float:
        return float((pred.set_index("id")["prediction"] == truth.loc[pred["id"]]).mean())

    assert accuracy(full) >= 0.9
    # Empty attributes do not collapse the prediction: the title alone carries these toy classes.
    assert accuracy(title_only) >= accuracy(full) - 0.1
    assert accuracy(random) >= accuracy(full) - 0.05
    # The output says which inputs each prediction used.
    assert set(full["inputs"]) == {"metadata+title"}
    assert set(title_only["inputs"]) == {"title"}
    no_attrs_no_title = test.assign(**{c: None for c in METADATA_FIELDS}, productDisplayName=None)
    assert set(Predictor.load(model).predict_frame(no_attrs_no_title)["inputs"]) == {"none"}


def test_a_number_beyond_the_training_range_does_not_outweigh_the_title(
    model: Path, parts: tuple[pd.DataFrame, ...], tmp_path: Path
) -> None:
    """A typo in a number (year 20120, or 1000) is read as the nearest year seen in training, not extrapolated
    hundreds of standard deviations out, where it would outweigh the title and be answered with full confidence."""
    train, _, test = parts
    years = pd.to_numeric(train["year"], errors="coerce")
    typo_high = _predict_cli(model, _write_csv(test.assign(year=20120), tmp_path / "high"), tmp_path / "high.csv")
    at_max = _predict_cli(model, _write_csv(test.assign(year=years.max()), tmp_path / "max"), tmp_path / "max.csv")
    typo_low = _predict_cli(model, _write_csv(test.assign(year=1000), tmp_path / "low"), tmp_path / "low.csv")
    at_min = _predict_cli(model, _write_csv(test.assign(year=years.min()), tmp_path / "min"), tmp_path / "min.csv")
    pd.testing.assert_frame_equal(typo_high, at_max)
    pd.testing.assert_frame_equal(typo_low, at_min)
    truth = test.set_index("id")["articleType"]
    full = _predict_cli(model, _write_csv(test, tmp_path / "full"), tmp_path / "full.csv")
    for pred in (full, typo_high, typo_low):
        pred["right"] = pred["prediction"].to_numpy() == truth.loc[pred["id"]].to_numpy()
    assert typo_high["right"].mean() >= full["right"].mean() - 0.05
    assert typo_low["right"].mean() >= full["right"].mean() - 0.05


def test_withholding_a_modality_is_blanking_its_fields(model: Path, parts: tuple[pd.DataFrame, ...]) -> None:
    """One code path: the ablation's withheld input and a product that arrives without it get the same answer."""
    predictor = Predictor.load(model)
    test = parts[2]
    for absent in (["metadata"], ["title"]):
        np.testing.assert_allclose(
            predictor.predict_proba(test, absent=absent),
            predictor.predict_proba(without_modalities(test, absent)),
            atol=1e-7,
        )


def test_no_metadata_route_learns_from_validation_products_too(parts: tuple[pd.DataFrame, ...]) -> None:
    """The route for products without attributes is linear, so validation only calibrates it; its SVMs then learn
    from the validation products as well. A title word that training files twice under one class and validation
    eight times under another is answered with the validation's class."""
    train, val, _ = parts
    first, second = list(CLASSES)[:2]
    word = "Zorblatt Quix"

    def retitle(frame: pd.DataFrame, article: str, n: int) -> pd.DataFrame:
        frame = frame.copy()
        rows = frame.index[frame["articleType"] == article][:n]
        frame.loc[rows, "productDisplayName"] = word
        return frame

    train, val = retitle(train, first, 2), retitle(val, second, 8)
    predictor = Predictor(["metadata", "title"], preset="small", head={"epochs": 5}, progress=False, seed=0)
    predictor.fit(train, val)
    product = pd.DataFrame({"id": ["new"], "productDisplayName": [word]})
    out = predictor.predict_frame(product)
    assert out["inputs"].tolist() == ["title"]
    assert out["prediction"].tolist() == [second]


def test_blanked_copies_are_saved_in_the_config_and_reproducible(
    parts: tuple[pd.DataFrame, ...], tmp_path: Path
) -> None:
    train, val, test = parts
    options = {"preset": "small", "head": {"epochs": 3}, "progress": False, "field_blanking": 0.5}
    a = Predictor(["metadata", "title"], **options).fit(train, val)
    b = Predictor(["metadata", "title"], **options).fit(train, val)
    np.testing.assert_array_equal(a.predict_proba(test), b.predict_proba(test))
    a.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["config"]["field_blanking"] == 0.5
    assert Predictor.load(tmp_path / "m").field_blanking == 0.5


def test_training_on_blanked_copies_helps_products_without_attributes(parts: tuple[pd.DataFrame, ...]) -> None:
    """The reason blanking exists: a network trained only on complete products leans on the attributes, which a new
    product often lacks. With titles that name the wrong article a third of the time, the attributes are the surer
    clue, and a model that never saw them missing (no blanked copies, no no-metadata route) does worse on products
    without them."""
    train, val, test = parts
    words = [a.rstrip("s") for a in CLASSES]

    def noisy(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
        rng = random.Random(seed)
        titles = []
        for title, article in zip(frame["productDisplayName"], frame["articleType"], strict=True):
            word = article.rstrip("s")
            if rng.random() < 0.35:
                title = title.replace(word, rng.choice([w for w in words if w != word]))
            titles.append(title)
        return frame.assign(productDisplayName=titles)

    train, val, test = noisy(train, 1), noisy(val, 2), noisy(test, 3)
    no_attrs = without_modalities(test, ["metadata"])
    # Without the stacked SVM: a linear SVM on title + attributes already degrades gently when the attributes are
    # empty, and the main mix would let it answer for both models; the question is what the network learns.
    options = {"preset": "small", "head": {"epochs": 30}, "progress": False, "seed": 0, "stacking": False}
    blanked = Predictor(["metadata", "title"], **options).fit(train, val)
    plain = Predictor(["metadata", "title"], field_blanking=0.0, metadata_fallback=False, **options).fit(train, val)
    assert blanked.evaluate(test)["accuracy"] >= 0.85  # the titles mislead a third of the time
    assert blanked.evaluate(no_attrs)["accuracy"] > plain.evaluate(no_attrs)["accuracy"]


def test_missing_flags_stay_zero_or_one(parts: tuple[pd.DataFrame, ...]) -> None:
    train = parts[0]
    enc = MetadataEncoder().fit(train)  # no year is missing in training: a scaled flag would explode
    x = enc.transform(train.assign(year=np.nan))
    flag = enc.feature_names().index("year_missing")
    assert set(np.unique(x[:, flag])) == {1.0}
    assert np.abs(x).max() < 20
