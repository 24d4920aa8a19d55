"""Late mixing: a network's logits plus weighted scores of single-input experts, for products missing inputs.

    logits = w_net * network(x) + w_text * text_scores(x) + w_image * image_expert(x)

with one weight triple for products with an image and one for products without (then w_image is 0). For products
with an image the text term can be a title + image linear model instead of the title-only SVM (``LinearScores``,
text_scores.fit_title_image_model): one linear model reading both. Two mixes use it (predictor.py):

* the main mix, the main network with its stacked SVM's scores (``fit_mix_weights``: a small grid chosen on the
  validation products, then temperature scaling of the mixed logits, folded into the weights; it starts from the
  SVM alone and gives the network weight only where validation says it helps by more than chance would);
* the no-metadata route, for products with a title but no attribute: the title + image linear model for products
  with a photo, the title-only SVM for the others, each calibrated on validation (``linear_alone``), with no
  network term. Models saved by earlier versions have a network and an image expert in it (loaded as they were).

The mix is a torch module over the same inputs as the network, so prediction, the service and the ONNX export run
one and the same computation.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import torch
from torch import nn

from .models import Batch, FusionEnsemble, FusionNet, ModalitySpec
from .training import fit_temperature

log = logging.getLogger(__name__)

# Relative weights tried for each term; logits enter calibrated (divided by their own temperature).
NET_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
TEXT_GRID = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
IMAGE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


class LinearScores(nn.Module):
    """A ``TextScoreModel`` as a module over a ``Batch``: (title TF-IDF, then the dense input named ``dense`` if
    any) @ coef.T + intercept, divided by its scale, as ``TextScoreModel.scores`` computes it. The no-metadata mix's
    title + image model reads the image; the export's stacked SVMs read the metadata, or the title alone."""

    def __init__(
        self, coef: np.ndarray, intercept: np.ndarray, scale: float, title_dim: int, dense: str | None = None
    ) -> None:
        super().__init__()
        weight = torch.from_numpy(np.ascontiguousarray(np.asarray(coef, dtype=np.float32).T))  # (features, classes)
        self.title = nn.EmbeddingBag.from_pretrained(weight[:title_dim].clone(), freeze=True, mode="sum")
        self.dense = dense if len(weight) > title_dim else None
        self.dense_weight = nn.Parameter(weight[title_dim:].clone(), requires_grad=False)
        self.intercept = nn.Parameter(torch.from_numpy(np.asarray(intercept, dtype=np.float32)), requires_grad=False)
        self.scale = float(scale)

    def forward(self, batch: Batch) -> torch.Tensor:
        title = batch.inputs["title"]
        raw = self.title(title.indices, title.offsets, per_sample_weights=title.weights) + self.intercept
        if self.dense is not None and self.dense in batch.inputs:
            raw = raw + batch.inputs[self.dense] @ self.dense_weight
        return raw / self.scale


class ExpertMix(nn.Module):
    """``weights[case] · (network, text scores, image expert)`` where case 1 is "the product has an image"; with
    ``image_text``, a product with an image has that model's scores as its text term.

    ``weights`` (2, 3) are effective multipliers of the raw logits and scores (calibration included)."""

    def __init__(
        self,
        net: FusionNet | FusionEnsemble | None,
        image_expert: FusionNet | FusionEnsemble | None,
        weights: np.ndarray,
        image_text: LinearScores | None = None,
        *,
        input_specs: list[ModalitySpec] | None = None,
        n_classes: int | None = None,
    ) -> None:
        """``net`` None: no network term (the no-metadata route); ``input_specs`` and ``n_classes`` then say what
        the mix reads and answers. A term the mix lacks adds nothing, whatever its weight (model_files refuses a
        saved folder whose weights name a network it does not have)."""
        super().__init__()
        if net is None and (input_specs is None or n_classes is None):
            raise ValueError("a mix without a network needs its input_specs and n_classes")
        self.net = net
        self.image_expert = image_expert
        self.image_text = image_text
        self.n_classes = net.n_classes if net is not None else int(n_classes)  # type: ignore[arg-type]
        self.input_specs = net.input_specs if net is not None else list(input_specs)  # type: ignore[arg-type]
        self.register_buffer("weights", torch.as_tensor(np.asarray(weights, dtype=np.float32)))

    def forward(self, batch: Batch) -> torch.Tensor:
        first = next(iter(batch.present.values()))
        has_image = batch.present.get("image", torch.zeros_like(first, dtype=torch.bool))
        w = self.weights[has_image.long()]  # (B, 3)
        terms = []
        if self.net is not None:
            terms.append(w[:, 0:1] * self.net(batch))
        if "text_scores" in batch.inputs:
            text = batch.inputs["text_scores"]
            if self.image_text is not None:
                text = torch.where(has_image.bool().unsqueeze(1), self.image_text(batch), text)
            terms.append(w[:, 1:2] * text)
        if self.image_expert is not None:
            # Products without an image have w_image = 0; their expert output is finite (the missing encoding).
            terms.append(w[:, 2:3] * self.image_expert(batch))
        if not terms:
            raise ValueError("this mix has no network and its batch no text scores: nothing to answer with")
        return sum(terms[1:], terms[0])


def _accuracy(z: np.ndarray, y: np.ndarray) -> float:
    return float((z.argmax(axis=1) == y).mean()) if len(y) else 0.0


# The main mix starts from the stacked SVM's scores alone and gives the network weight only where that gets right
# more validation products that the SVM got wrong than the other way round, by more than chance would: gain >=
# MARGIN_Z * sqrt(changed products) (a one-sided sign test at about 5%). Validation favours the network twice over (it
# chose the network's epoch, and the SVM is fitted again on it afterwards), and a few hundred validation products
# cannot tell a 0.2-point gain from noise: on a text-only catalog a network that adds nothing drew weight by chance
# (docs/experiments.md, 2026-12-06 "a noise-stable main mix").
MARGIN_Z = 1.645


def fit_case_weights(
    net: np.ndarray, net_temperature: float, text: np.ndarray | None, image: np.ndarray | None,
    image_temperature: float, y: np.ndarray,
) -> tuple[np.ndarray, float, float]:
    """Weights (3,) for one case (effective multipliers of net logits, text scores, image logits), the validation
    accuracy of the network alone and of the mix. ``text``/``image``: None when that term is not available.

    The starting point is the text scores alone (the network alone without them); a grid point replaces it only
    with a gain that passes ``MARGIN_Z`` (the largest such gain; ties: the point closest to the start)."""
    parts = [net / net_temperature, text, None if image is None else image / image_temperature]
    grids = [NET_GRID, TEXT_GRID if text is not None else (0.0,), IMAGE_GRID if image is not None else (0.0,)]

    def mixed_logits(w: np.ndarray) -> np.ndarray:
        return np.asarray(sum(wi * p for wi, p in zip(w, parts, strict=True) if wi))

    def right(w: np.ndarray) -> np.ndarray:
        return mixed_logits(w).argmax(axis=1) == y

    alone = _accuracy(mixed_logits(np.array([1.0, 0.0, 0.0])), y)
    base = np.array([0.0, 1.0, 0.0] if text is not None else [1.0, 0.0, 0.0])
    base_right = right(base)
    best, best_key = base, (0, 0.0)
    for point in itertools.product(*grids):
        w = np.array(point)
        if not w.any():
            continue
        r = right(w)
        fixed, broken = int((r & ~base_right).sum()), int((~r & base_right).sum())
        gain = fixed - broken
        if gain <= 0 or gain < MARGIN_Z * np.sqrt(fixed + broken):
            continue
        key = (gain, -float(np.abs(w - base).sum()))
        if key > best_key:
            best, best_key = w, key
    mixed = _accuracy(mixed_logits(best), y)
    temperature = fit_temperature(mixed_logits(best).astype(np.float32), y) if len(y) else 1.0
    scale = np.array([1.0 / net_temperature, 1.0, 1.0 / image_temperature]) / temperature
    return best * scale, alone, mixed


def linear_alone(text: np.ndarray, has_image: np.ndarray, y: np.ndarray, what: str) -> np.ndarray:
    """The (2, 3) weights of an ``ExpertMix`` with no network and no image expert: the text term alone (the
    title-only SVM without an image, the title + image model with one), scaled by the temperature that calibrates
    it on the validation rows of that case (1 for a case without rows)."""
    weights = np.zeros((2, 3))
    for case in (0, 1):
        rows = has_image == bool(case)
        temperature = fit_temperature(np.asarray(text[rows], dtype=np.float32), y[rows]) if rows.any() else 1.0
        weights[case, 1] = 1.0 / temperature
        if rows.any():
            log.info("%s, products %s an image: validation accuracy %.4f (%d products; temperature %.3f)", what,
                     "with" if case else "without", _accuracy(text[rows], y[rows]), int(rows.sum()), temperature)
    return weights


def network_alone(temperature: float) -> np.ndarray:
    """Mix weights that give the calibrated network alone, with or without an image."""
    return np.array([[1.0 / temperature, 0.0, 0.0]] * 2)


def fit_mix_weights(
    net: np.ndarray,
    net_temperature: float,
    text: np.ndarray | None,
    image: np.ndarray | None,
    image_temperature: float,
    has_image: np.ndarray,
    y: np.ndarray,
    what: str,
) -> np.ndarray:
    """The (2, 3) weights of an ``ExpertMix`` from validation logits (rows: products as they arrive, with or
    without an image, ``has_image``). A case without validation rows keeps the calibrated network alone."""
    weights = network_alone(net_temperature)
    for case in (0, 1):
        rows = has_image == bool(case)
        if not rows.any():
            continue
        case_text = None if text is None else text[rows]
        case_image = None if image is None or not case else image[rows]
        weights[case], alone, mixed = fit_case_weights(
            net[rows], net_temperature, case_text, case_image, image_temperature, y[rows]
        )
        log.info(
            "%s, products %s an image: validation accuracy %.4f with the network alone, %.4f mixed (%d products; "
            "weights %s)",
            what,
            "with" if case else "without",
            alone,
            mixed,
            int(rows.sum()),
            np.round(weights[case], 4).tolist(),
        )
    return weights
