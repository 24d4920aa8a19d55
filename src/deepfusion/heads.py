"""The networks of a model and how their answers are combined.

A fitted model has up to two networks (models.py), each trained by ``train_head`` with early stopping and a
calibration temperature on validation:

* the main network, over every modality the model reads (its answer mixed with the stacked SVM's scores,
  ``fit_main_mix``);
* the no-title network, for products without a title (``inputs.without_title``).

Products with a title and no attribute are answered by linear models (predictor.py, mixing.py), not a network.
``Predictor._logits`` routes each product to the model for the inputs it has. Mix weights are a 2x3 array:
(with / without an image) x (network, SVM scores, image expert), the calibration folded in (mixing.py).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .config import HeadConfig
from .mixing import fit_mix_weights
from .training import ModalityData, TrainResult, fit_temperature, predict_logits, train_network

log = logging.getLogger(__name__)


def train_head(
    train_data: ModalityData,
    y_train: np.ndarray,
    val_data: ModalityData | None,
    y_val: np.ndarray | None,
    n_classes: int,
    what: str,
    cfg: HeadConfig,
    *,
    seed: int,
    progress: bool,
) -> tuple[TrainResult, float]:
    """Train a network (early stopping on validation) and its calibration temperature (1.0 without validation
    data, or when calibration fails, as it can on a tiny validation set)."""
    result = train_network(train_data, y_train, val_data, y_val, n_classes, cfg, seed=seed, progress=progress)
    temperature = 1.0
    if val_data is not None and y_val is not None and len(y_val):
        temperature = fit_temperature(predict_logits(result.net, val_data), y_val)
        if not np.isfinite(temperature):
            log.warning("%s: temperature calibration failed; using uncalibrated probabilities", what)
            temperature = 1.0
    log.info(
        "trained %s in %.1fs (best epoch of each network: %s; temperature %.3f)",
        what,
        result.seconds,
        ", ".join(map(str, best_epochs(result))),
        temperature,
    )
    return result, temperature


def best_epochs(result: TrainResult) -> list[int]:
    """The best epoch of each member network (one for a single network)."""
    return [m.best_epoch for m in result.members] or [result.best_epoch]


def fit_main_mix(net: Any, temperature: float, val_data: ModalityData, y_val: np.ndarray) -> np.ndarray:
    """The main network's mix with the stacked SVM's scores, chosen on the validation products (and their
    blanked copies). It starts from the SVM alone and gives the network weight only where validation shows a gain
    beyond chance (mixing.fit_case_weights)."""
    has_image = val_data.present.get("image", np.zeros(len(y_val), dtype=bool))
    return fit_mix_weights(
        predict_logits(net, val_data), temperature, val_data.features["text_scores"], None, 1.0,
        np.asarray(has_image, dtype=bool), y_val, "main mix",
    )
