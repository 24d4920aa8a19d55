"""The training loop: early stopping never ends a run before ``min_epochs``; ensembles train reproducibly."""

from __future__ import annotations

import numpy as np
import torch

from deepfusion.model_files import migrate
from deepfusion.models import HeadConfig, make_config
from deepfusion.training import ModalityData, predict_logits, return_large_blocks, train_network


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


def _separable(n: int, seed: int) -> tuple[ModalityData, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (np.eye(3)[y] * 2 + rng.normal(scale=0.5, size=(n, 3))).astype(np.float32)
    return ModalityData({"metadata": x}, {"metadata": np.ones(n, bool)}), y


def test_ensemble_members_are_reproducible_and_averaged() -> None:
    train, y = _separable(96, 0)
    val, y_val = _separable(48, 1)
    cfg = make_config("regularized", epochs=6, batch_size=16, min_epochs=0, members=3)

    first = train_network(train, y, val, y_val, 3, cfg, seed=7, progress=False)
    again = train_network(train, y, val, y_val, 3, cfg, seed=7, progress=False)
    assert len(first.members) == 3
    # Members trained in parallel threads still give the same weights for the same seed...
    for a, b in zip(first.net.state_dict().values(), again.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # ...each member is the single-network run of its own seed (seed, seed + 1, ...)...
    single = train_network(train, y, val, y_val, 3, make_config("regularized", epochs=6, batch_size=16,
                                                                min_epochs=0, members=1), seed=8, progress=False)
    for a, b in zip(first.members[1].net.state_dict().values(), single.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # ...and the ensemble predicts the mean of its members' logits.
    logits = predict_logits(first.net, val)
    members = np.stack([predict_logits(m.net, val) for m in first.members])
    np.testing.assert_allclose(logits, members.mean(axis=0), atol=1e-5)
    assert not np.allclose(members[0], members[1])  # different seeds, different networks
    assert (logits.argmax(1) == y_val).mean() > 0.9


def test_configs_saved_before_ensembles_still_load() -> None:
    state = make_config("regularized").to_json()
    assert state["members"] == 2 and state["wide"] == ["title", "metadata", "text_scores"]
    assert HeadConfig.from_json(state) == make_config("regularized")
    old = {k: v for k, v in state.items() if k != "members"} | {"wide": True}  # a model saved by an earlier version
    migrated = migrate({"format_version": 1, "head": old, "temperature": 1.5}, {})
    loaded = HeadConfig.from_json(migrated["config"]["head"])
    assert loaded.members == 1 and loaded.wide == ("title",)
    assert migrated["main_mix_weights"] == [[1 / 1.5, 0.0, 0.0]] * 2 and migrated["review_threshold"] == 1.0


def test_large_blocks_go_back_to_the_system_on_glibc() -> None:
    """``fit`` fixes glibc's mmap threshold (training.return_large_blocks); elsewhere the call does nothing."""
    import platform

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert return_large_blocks() is expected
