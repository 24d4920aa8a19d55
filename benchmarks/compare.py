"""Helpers of the sections that compare two models product by product on the same test products (baselines,
splits, refit, label_noise): where the fusion model's predictions for a split are, and how two models differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from bench import SEED, Bench

from deepfusion.catalog import ID
from deepfusion.config import config_from_options
from deepfusion.runs import ModelSpec, train_model
from deepfusion.split import split_by_duplicate_groups


def fusion_test_predictions(csv: Path, test: Any) -> np.ndarray:
    """The labels a trained fusion model predicted for ``test`` (from its ``test_predictions.csv``), row-aligned."""
    import pandas as pd

    return pd.read_csv(csv, dtype={ID: str}).set_index(ID).loc[test[ID].astype(str), "predicted"].to_numpy()


def paired(truth: np.ndarray, fusion: np.ndarray, svm: np.ndarray) -> dict[str, int]:
    """Product-by-product comparison of two models' predictions."""
    f_ok, s_ok = fusion == truth, svm == truth
    return {
        "both_right": int((f_ok & s_ok).sum()),
        "only_fusion_right": int((f_ok & ~s_ok).sum()),
        "only_svm_right": int((~f_ok & s_ok).sum()),
        "both_wrong": int((~f_ok & ~s_ok).sum()),
    }


def split_for(b: Bench, split_seed: int) -> Any:
    """The leakage-safe split with ``split_seed`` (the run's own split for SEED)."""
    return b.split if split_seed == SEED else split_by_duplicate_groups(b.catalog.products, seed=split_seed)


def split_fusion_csv(b: Bench, split_seed: int) -> Path:
    """Where the fusion model's test predictions for ``split_seed`` are taken from: the fusion section's model on
    the run's own split when there is one, else the model the splits section trains under splits/."""
    main = b.out / "fusion/regularized/test_predictions.csv"
    if split_seed == SEED and main.exists():
        return main
    return b.out / f"splits/seed{split_seed}/fusion/test_predictions.csv"


def train_split_fusion(b: Bench, split: Any, folder: Path, **options: Any) -> dict[str, Any]:
    """Train the default fusion model (metadata + title + image, seed SEED) on ``split`` into ``folder``."""
    mods = ("metadata", "title", "image")
    config, _ = config_from_options(mods, seed=SEED, **options)
    return train_model(ModelSpec("fusion", mods), b.catalog, split, folder, config=config, cache_dir=b.cache_dir)


def means(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The mean of every accuracy and macro-F1 column over the per-split rows."""
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k.endswith(("accuracy", "macro_f1"))}
