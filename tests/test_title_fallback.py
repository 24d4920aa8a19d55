"""Products without a title are answered by the fusion model's second network, trained without titles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from deepfusion.catalog import load_catalog
from deepfusion.cli import app
from deepfusion.predictor import Predictor


def _parts(catalog: Path):  # noqa: ANN202
    frame = load_catalog(catalog, progress=False).products
    return frame.iloc[::2], frame.iloc[1::2]


def test_untitled_products_get_the_no_title_network(clean_catalog_dir: Path, tmp_path: Path) -> None:
    train, val = _parts(clean_catalog_dir)
    options = {"preset": "small", "progress": False, "head": {"epochs": 30, "modality_dropout": 0.2}}
    fusion = Predictor(["metadata", "title"], **options).fit(train, val)
    assert fusion.config_.uses_title_fallback
    untitled = val.assign(productDisplayName=None)

    # Same seed, no fallback: the main network is the same one, so titled products get the same answer, and
    # only untitled products are answered differently.
    single = Predictor(["metadata", "title"], title_fallback=False, **options).fit(train, val)
    np.testing.assert_allclose(single.predict_proba(val), fusion.predict_proba(val), atol=1e-6)
    assert not np.allclose(single.predict_proba(untitled), fusion.predict_proba(untitled), atol=1e-3)
    assert fusion.evaluate(untitled)["accuracy"] >= 0.9  # metadata alone tells the toy classes apart
    # Withholding the title at prediction time is the same as the title being absent; its words do not matter.
    np.testing.assert_allclose(fusion.predict_proba(val, absent=["title"]), fusion.predict_proba(untitled))
    reworded = val.assign(productDisplayName="a title that says nothing at all, much longer than the others")
    np.testing.assert_allclose(fusion.predict_proba(reworded, absent=["title"]), fusion.predict_proba(untitled))

    # In a mixed batch, each product gets its own network.
    mixed = val.copy()
    blank = np.arange(len(val)) % 3 == 0
    mixed.loc[blank, "productDisplayName"] = ""
    proba = fusion.predict_proba(mixed)
    np.testing.assert_allclose(proba[blank], fusion.predict_proba(untitled)[blank], atol=1e-6)
    np.testing.assert_allclose(proba[~blank], fusion.predict_proba(val)[~blank], atol=1e-6)

    fusion.save(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["fallback"]["modalities"] == ["metadata"]
    assert list(config["fallback"]["input_dims"]) == ["metadata"]
    assert (tmp_path / "model" / "fallback.safetensors").is_file()
    loaded = Predictor.load(tmp_path / "model")
    np.testing.assert_allclose(loaded.predict_proba(mixed), proba, atol=1e-6)


def test_fallback_can_be_switched_off(clean_catalog_dir: Path, tmp_path: Path) -> None:
    train, val = _parts(clean_catalog_dir)
    predictor = Predictor(["metadata", "title"], preset="small", progress=False, head={"epochs": 5},
                          title_fallback=False)
    predictor.fit(train, val).save(tmp_path / "model")
    assert not (tmp_path / "model" / "fallback.safetensors").exists()
    assert "fallback" not in json.loads((tmp_path / "model" / "config.json").read_text())
    loaded = Predictor.load(tmp_path / "model")
    assert not loaded.config_.uses_title_fallback
    # Untitled products are still answered, by the one network.
    assert len(loaded.predict(val.assign(productDisplayName=None))) == len(val)
    # Models with nothing but a title, or without one, have no fallback.
    assert not Predictor(["title"]).model_config().uses_title_fallback
    assert not Predictor(["metadata", "image"]).model_config().uses_title_fallback


def test_cli_switch(catalog_dir: Path, tmp_path: Path) -> None:
    for flag, expected in (("--title-fallback", True), ("--no-title-fallback", False)):
        out = tmp_path / flag
        result = CliRunner().invoke(app, ["train", "--data", str(catalog_dir), "--model", "fusion", "--modalities",
                                          "metadata,title", "--preset", "small", flag, "--out", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        assert (out / "fusion" / "fallback.safetensors").is_file() is expected
        assert json.loads((out / "fusion" / "metrics.json").read_text())["title_fallback"] is expected
