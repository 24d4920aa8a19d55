"""Model folders in format 1 (written before the typed configuration, by commit 49a6c5c; tests/data/format1/make.py
says how) still load, and predict what they predicted when they were saved; saved again, they are format 2."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_catalog

from deepfusion import Predictor, load_catalog
from deepfusion.model_files import FORMAT_VERSION, migrate, validate_model_folder

FIXTURES = Path(__file__).parent / "data" / "format1"


def _maker():  # noqa: ANN202 - the fixture script, for its variants()
    spec = importlib.util.spec_from_file_location("format1_make", FIXTURES / "make.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("format1")
    return load_catalog(make_catalog(root / "catalog", messy=False, seed=1), progress=False).products


def _same_predictions(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == list(expected.columns)
    for column in expected.columns:
        if column.startswith(("confidence", "top")) and column.endswith("confidence"):
            np.testing.assert_allclose(got[column].to_numpy(float), expected[column].to_numpy(float), atol=1e-6)
        else:
            assert got[column].astype(str).tolist() == expected[column].astype(str).tolist(), column


@pytest.mark.parametrize("name", ["fusion", "tree"])
def test_format1_folder_predicts_as_it_did(name: str, products: pd.DataFrame, tmp_path: Path) -> None:
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    assert json.loads((folder / "config.json").read_text())["format_version"] == 1
    config, _ = validate_model_folder(folder)  # checked as format 2, migrated
    assert config["format_version"] == FORMAT_VERSION and config["migrated_from"] == 1
    model = Predictor.load(folder, cache_dir=tmp_path / "cache", progress=False)
    assert model.config_.uses_stacking and model.config_.uses_title_fallback and model.config_.uses_metadata_fallback
    assert model.config_.head.preset == "small" and model.config_.seed == 3
    expected = pd.read_csv(folder / "expected.csv", dtype={"id": str}, keep_default_na=False)
    variants = _maker().variants(products, model.metadata_fields)
    got = model.predict_frame(variants)
    _same_predictions(got.astype({c: str for c in got.columns if got[c].dtype == bool}),
                      expected.astype({c: str for c in expected.columns if expected[c].dtype == bool}))
    # Saved again it is a format-2 folder, with the same configuration and the same answers.
    again = model.save(tmp_path / "again")
    saved = json.loads((again / "config.json").read_text())
    assert saved["format_version"] == 2 and saved["config"]["modalities"] == config["config"]["modalities"]
    reloaded = Predictor.load(again, cache_dir=tmp_path / "cache", progress=False)
    assert reloaded.config_ == model.config_
    np.testing.assert_allclose(
        reloaded.predict_proba(variants, as_pandas=False), model.predict_proba(variants, as_pandas=False), atol=1e-7
    )


def test_format1_folder_without_schema_reads_the_fashion_columns(products: pd.DataFrame, tmp_path: Path) -> None:
    """Format-1 folders written before schemas were saved (no "schema" in config.json) are fashion models."""
    folder = tmp_path / "fusion"
    shutil.copytree(FIXTURES / "fusion", folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["schema"]["name"] == "fashion"
    del config["schema"]
    (folder / "config.json").write_text(json.dumps(config))
    model = Predictor.load(folder, cache_dir=tmp_path / "cache", progress=False)
    assert model.schema_.is_fashion
    assert len(model.predict(products.head(5))) == 5


def test_migrate_moves_the_settings_and_keeps_what_fitting_found() -> None:
    old = json.loads((FIXTURES / "fusion" / "config.json").read_text())
    prep = json.loads((FIXTURES / "fusion" / "preprocessing.json").read_text())
    new = migrate(old, prep)
    assert new["config"]["image"] == {"backbone": old["backbone"], "weights": None, "size": old["image_size"],
                                      "views": 0, "finetune_blocks": 0, "finetune_epochs": 3}
    assert new["config"]["head"] == old["head"] and new["config"]["field_blanking"] == old["field_blanking"]
    for key in ("temperature", "main_mix_weights", "history", "no_metadata", "fallback", "input_dims"):
        assert new[key] == old[key]
    assert not {"modalities", "head", "seed", "backbone", "image_size"} & set(new)
    assert migrate(new, prep) is new  # format 2 is left as it is
