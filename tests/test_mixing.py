"""The late mix of the no-metadata network with the title SVM and the image expert (mixing.py)."""

from __future__ import annotations

import numpy as np
import torch

from deepfusion.mixing import ExpertMix, fit_mix_weights
from deepfusion.models import Batch, FusionNet, HeadConfig, ModalitySpec


def _noisy_logits(y: np.ndarray, n_classes: int, right: float, rng: np.random.Generator) -> np.ndarray:
    """Logits whose argmax is y for about ``right`` of the rows, a random class otherwise."""
    z = rng.normal(size=(len(y), n_classes)).astype(np.float32)
    hit = rng.random(len(y)) < right
    target = np.where(hit, y, rng.integers(0, n_classes, len(y)))
    z[np.arange(len(y)), target] += 4.0
    return z


def test_mix_follows_the_better_expert_and_stays_calibrated() -> None:
    rng = np.random.default_rng(0)
    n, c = 4000, 6
    y = rng.integers(0, c, n)
    net = _noisy_logits(y, c, 0.6, rng)
    text = _noisy_logits(y, c, 0.8, rng)
    image = _noisy_logits(y, c, 0.8, rng)
    has_image = rng.random(n) < 0.5
    w = fit_mix_weights(net, 1.0, text, image, 1.0, has_image, y, "test")
    assert w.shape == (2, 3) and w[0, 2] == 0.0  # no image: no image term
    for case in (0, 1):
        rows = has_image == bool(case)
        mixed = w[case, 0] * net[rows] + w[case, 1] * text[rows] + w[case, 2] * image[rows]
        acc = (mixed.argmax(1) == y[rows]).mean()
        assert acc > (net[rows].argmax(1) == y[rows]).mean() + 0.1
        assert acc >= (text[rows].argmax(1) == y[rows]).mean()
    # Independent experts: with the image, both text and image count.
    assert w[1, 1] > 0 and w[1, 2] > 0


def test_a_network_that_is_already_best_is_left_alone() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 2000)
    net = np.eye(5, dtype=np.float32)[y] * 6.0  # always right
    text = rng.normal(size=(2000, 5)).astype(np.float32)  # noise
    w = fit_mix_weights(net, 2.0, text, None, 1.0, np.zeros(2000, dtype=bool), y, "test")
    assert w[0, 1] == 0.0 and w[0, 0] > 0  # the network alone (its calibration may change)
    assert np.allclose(w[1], [0.5, 0.0, 0.0])  # no product with an image: the calibrated network alone


def test_a_network_that_adds_nothing_gets_no_weight() -> None:
    # A text-only catalog's case: the SVM reads the text, the network knows nothing the SVM does not. Whatever weight
    # the network would draw could only be chance on these validation products, so the SVM stays alone.
    rng = np.random.default_rng(2)
    y = rng.integers(0, 8, 1500)
    text = _noisy_logits(y, 8, 0.85, rng)
    for seed in range(5):
        net = np.random.default_rng(10 + seed).normal(size=(1500, 8)).astype(np.float32)
        w = fit_mix_weights(net, 1.0, text, None, 1.0, np.zeros(1500, dtype=bool), y, "test")
        assert w[0, 0] == 0.0 and w[0, 1] > 0


def test_a_network_that_helps_is_mixed_in() -> None:
    # Two experts with independent errors: together they are right more often than either, beyond chance.
    rng = np.random.default_rng(3)
    y = rng.integers(0, 8, 1500)
    # Graded evidence: the true class's logit raised above Gaussian noise, independently in each expert.
    net, text = (rng.normal(size=(1500, 8)).astype(np.float32) + 1.5 * np.eye(8, dtype=np.float32)[y] for _ in "ab")
    w = fit_mix_weights(net, 1.0, text, None, 1.0, np.zeros(1500, dtype=bool), y, "test")
    assert w[0, 0] > 0 and w[0, 1] > 0
    mixed = (w[0, 0] * net + w[0, 1] * text).argmax(1) == y
    assert mixed.mean() > max((text.argmax(1) == y).mean(), (net.argmax(1) == y).mean()) + 0.02


def test_expert_mix_is_the_weighted_sum_per_case() -> None:
    torch.manual_seed(0)
    cfg = HeadConfig(preset="small", encoder_dim=8, hidden=(8,), dropout=0.0, input_dropout=0.0, batch_norm=False,
                     members=1, wide=())
    net = FusionNet([ModalitySpec("image", 5), ModalitySpec("text_scores", 3)], 3, cfg).eval()
    expert = FusionNet([ModalitySpec("image", 5)], 3, cfg).eval()
    weights = np.array([[0.5, 2.0, 0.0], [0.25, 1.0, 0.75]])
    mix = ExpertMix(net, expert, weights).eval()
    has = torch.tensor([True, False, True])
    batch = Batch({"image": torch.randn(3, 5), "text_scores": torch.randn(3, 3)},
                  {"image": has, "text_scores": torch.ones(3, dtype=torch.bool)})
    with torch.no_grad():
        got = mix(batch)
        a, s, i = net(batch), batch.inputs["text_scores"], expert(batch)
    for row in range(3):
        w = weights[int(has[row])]
        expected = w[0] * a[row] + w[1] * s[row] + w[2] * i[row]
        assert torch.allclose(got[row], expected.float(), atol=1e-6)
