"""Loading and saving models: a bad folder is a ModelLoadError (exit 2 on the CLI), and what a model was trained
with (its backbone weights, early-stopping settings) survives load and save."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_model_folders import SMALL, VARIANTS, folder, saved_model  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from deepfusion import Predictor, load_catalog
from deepfusion.cli import app
from deepfusion.config import ConfigError
from deepfusion.model_files import ModelLoadError
from deepfusion.models import make_config


@pytest.mark.parametrize("tamper,words", [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_predictor_load_refuses_tampered_folders(folder: Path, tamper: Callable[[Path], None],  # noqa: F811
                                                 words: list[str]) -> None:
    tamper(folder)
    with pytest.raises(ModelLoadError):
        Predictor.load(folder)


def test_cli_exits_2_on_a_tampered_model(folder: Path, catalog_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    (folder / "config.json").write_text("[1, 2, 3]")
    for args in (["predict", str(folder), "--data", str(catalog_dir), "--out", str(tmp_path / "p.csv")],
                 ["evaluate", str(folder), "--data", str(catalog_dir), "--out", str(tmp_path / "e")]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "config.json" in result.output and "Traceback" not in result.output


def test_given_backbone_weights_are_kept_by_the_model(saved_model: Path, tmp_path: Path) -> None:  # noqa: F811
    """A model trained with --weights embeds with those weights after load, and after load-then-save too."""
    frame = load_catalog(saved_model.parent / "catalog", progress=False).products
    import torch
    from safetensors.torch import save_file

    from deepfusion.backbones import get_backbone, weights_path

    stock = torch.load(weights_path(get_backbone("efficientnet_lite0")), map_location="cpu", weights_only=True)
    own = {k: v * 0.5 if v.is_floating_point() else v for k, v in stock.items() if isinstance(v, torch.Tensor)}
    save_file({k: v.contiguous() for k, v in own.items()}, str(tmp_path / "mine.safetensors"))
    options = {"preset": "small", "image_size": SMALL, "progress": False, "cache_dir": tmp_path / "cache"}
    model = Predictor(["image"], weights=tmp_path / "mine.safetensors", **options).fit(frame.iloc[::2])
    model.save(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["config"]["image"]["weights"] == "backbone.safetensors"
    loaded = Predictor.load(tmp_path / "a", cache_dir=tmp_path / "cache")
    loaded.save(tmp_path / "b")
    again = Predictor.load(tmp_path / "b", cache_dir=tmp_path / "cache")
    test = frame.iloc[1::2]
    np.testing.assert_allclose(again.predict_proba(test), model.predict_proba(test), atol=1e-5)
    stock_model = shutil.copytree(tmp_path / "b", tmp_path / "c")
    config = json.loads((stock_model / "config.json").read_text())
    config["config"]["image"]["weights"] = None
    (stock_model / "config.json").write_text(json.dumps(config))
    (stock_model / "backbone.safetensors").unlink()
    stock_proba = Predictor.load(stock_model, cache_dir=tmp_path / "cache").predict_proba(test)
    assert not np.allclose(stock_proba, model.predict_proba(test), atol=1e-3)  # the weights did matter


def test_patience_none_turns_early_stopping_off() -> None:
    assert make_config("regularized", patience=None).patience is None
    with pytest.raises(ConfigError, match="combiner"):  # every value given is used: None is not "not given"
        make_config("regularized", combiner=None)


def test_batch_norm_models_load(clean_catalog_dir: Path, tmp_path: Path) -> None:
    """The regularized preset has batch norm, whose update counter is an integer tensor: still a valid model."""
    frame = load_catalog(clean_catalog_dir, progress=False).products
    model = Predictor(["metadata", "title"], head={"epochs": 3, "min_epochs": 1, "members": 2}, progress=False)
    model.fit(frame.iloc[::2], frame.iloc[1::2]).save(tmp_path / "m")
    loaded = Predictor.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.predict_proba(frame), model.predict_proba(frame), atol=1e-6)
