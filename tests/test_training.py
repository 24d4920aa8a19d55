"""The training loop's stopping rule: early stopping never ends a run before ``min_epochs``."""

from __future__ import annotations

import numpy as np

from deepfusion.models import make_config
from deepfusion.training import ModalityData, train_network


def _noise(n: int, seed: int) -> tuple[ModalityData, np.ndarray]:
    """Features unrelated to the labels: the validation score cannot keep improving, so patience runs out."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    return ModalityData({"metadata": x}, {"metadata": np.ones(n, bool)}), rng.integers(0, 3, n)


def test_early_stopping_waits_for_min_epochs_then_stops() -> None:
    train, y = _noise(64, 0)
    val, y_val = _noise(64, 1)

    def run(min_epochs: int) -> int:
        cfg = make_config("regularized", epochs=30, patience=1, batch_size=16, min_epochs=min_epochs)
        result = train_network(train, y, val, y_val, 3, cfg, progress=False)
        assert 1 <= result.best_epoch <= len(result.history)
        return len(result.history)

    with_floor = run(12)
    assert 12 <= with_floor < 30
    assert run(0) < with_floor  # without the floor the same run stops earlier
