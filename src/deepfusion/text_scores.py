"""Stacking: a linear text classifier whose class scores are one more input of the fusion network.

A TF-IDF + linear SVM on metadata + title is the strongest single model on product catalogs (the brief's text
baseline), and a neural network trained on the same sparse features does not quite reach it. So the fusion
network is given the SVM's class scores as an input: it keeps the linear model's strength on text and learns
where the image should overrule it (Wolpert's stacked generalisation).

The network must see training-set scores that look like the scores of unseen products, or it learns to trust
them blindly: on the training split they are *out-of-fold* scores (each product scored by an SVM fitted on the
other folds, duplicate products kept in one fold); on new products they come from an SVM fitted on the whole
training split and, once validation has chosen the network, its mix and its review threshold, fitted again on the
training and validation products. The fitted weights are plain arrays saved as safetensors; nothing is pickled.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.model_selection import GroupKFold
from sklearn.svm import LinearSVC
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


class TextScoreModel:
    """One-vs-rest linear SVM on sparse text features; ``scores`` are its decision values, scaled.

    Classes missing from the data a model was fitted on score ``floor`` (far below any real score)."""

    def __init__(self, C: float = 0.5, folds: int = 5, seed: int = 42, floor: float = -5.0) -> None:
        self.C = C
        self.folds = folds
        self.seed = seed
        self.floor = floor
        self._coef_t: np.ndarray | None = None

    def _fit_svm(self, X: sp.csr_matrix, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """Weights (n_classes, n_features) and biases (n_classes,) of an SVM fitted on (X, y)."""
        coef = np.zeros((n_classes, X.shape[1]), dtype=np.float32)
        bias = np.full(n_classes, self.floor, dtype=np.float32)
        classes = np.unique(y)
        if len(classes) < 2:  # nothing to separate: the one class present scores 0, every other the floor
            bias[classes] = 0.0
            return coef, bias
        svm = LinearSVC(C=self.C, random_state=self.seed).fit(X, y)
        rows = svm.classes_ if len(classes) > 2 else svm.classes_[1:]
        coef[rows] = svm.coef_
        bias[rows] = svm.intercept_
        if len(classes) == 2:  # sklearn keeps one hyperplane for two classes: the other is its mirror image
            coef[svm.classes_[0]], bias[svm.classes_[0]] = -svm.coef_[0], -svm.intercept_[0]
        return coef, bias

    def fit(
        self,
        X: sp.csr_matrix,
        y: np.ndarray,
        n_classes: int,
        groups: np.ndarray | None = None,
        *,
        fit_rows: np.ndarray | None = None,
        progress: bool = False,
    ) -> TextScoreModel:
        """Fit on (X, y); with ``folds`` > 1, ``oof_scores_`` then holds out-of-fold scores for these same rows
        (``groups``: duplicate-product groups, kept within one fold). ``fit_rows`` (bool) limits the SVMs'
        fitting to those rows while every row is scored, each by the SVM fitted without its group: blanked
        copies of a product are scored like the product without making the fits larger. The fits run one after
        another: liblinear draws from one process-wide random generator, so SVMs fitted on parallel threads
        would interleave its draws and stop being reproducible."""
        X = sp.csr_matrix(X, dtype=np.float32)
        groups = np.arange(len(y)) if groups is None else groups
        fit_rows = np.ones(len(y), dtype=bool) if fit_rows is None else np.asarray(fit_rows, dtype=bool)
        n_folds = min(self.folds, len(np.unique(groups)))
        splits = list(GroupKFold(n_folds).split(X, y, groups)) if n_folds >= 2 else []
        self.coef_, self.intercept_ = self._fit_svm(X[fit_rows], y[fit_rows], n_classes)
        self._coef_t = None  # the full model changed: recompute the contiguous copy in scores()
        raw = np.zeros((len(y), n_classes), dtype=np.float32)
        for train, held_out in tqdm(splits, desc="text scores (out-of-fold SVMs)", disable=not progress, leave=False):
            train = train[fit_rows[train]]
            coef, bias = self._fit_svm(X[train], y[train], n_classes)
            raw[held_out] = X[held_out] @ coef.T + bias
        if not splits:  # a single group: no honest out-of-fold scores exist, use the full model's
            raw = X @ self.coef_.T + self.intercept_
        # One scale for all classes, so the network's inputs sit near unit variance.
        self.scale_ = float(max(raw.std(), 1e-3))
        log.info(
            "text scores: linear SVM on %d features, %s accuracy %.4f",
            X.shape[1],
            f"{n_folds} out-of-fold groups, out-of-fold" if splits else "no held-out folds, training",
            float((raw.argmax(axis=1) == y).mean()) if len(y) else 0.0,
        )
        if self.folds > 1:  # folds=1 asks for one fit: in-sample scores are for nobody to train on
            self.oof_scores_ = (raw / self.scale_).astype(np.float32)
        return self

    def refit(self, X: sp.csr_matrix, y: np.ndarray, n_classes: int) -> TextScoreModel:
        """The full model fitted again on (X, y), e.g. with the validation products added once everything chosen on
        them is fixed. ``scale_`` stays: it is what the network and the mixes were fitted with, and a linear SVM
        fitted on a few more products keeps the spread of its scores."""
        self.coef_, self.intercept_ = self._fit_svm(sp.csr_matrix(X, dtype=np.float32), y, n_classes)
        self._coef_t = None
        return self

    def scores(self, X: sp.csr_matrix, dense: np.ndarray | None = None) -> np.ndarray:
        """Scores of the rows of ``X``, or of (``X``, ``dense``) side by side for a model over both (the title +
        image model): the dense block is never copied into a sparse matrix."""
        if self._coef_t is None:
            # Contiguous once: a sparse row times a transposed view would copy all the weights on every call.
            self._coef_t = np.ascontiguousarray(self.coef_.T)
        n_sparse = X.shape[1]
        raw = np.asarray(sp.csr_matrix(X, dtype=np.float32) @ self._coef_t[:n_sparse]) + self.intercept_
        if dense is not None:
            raw = raw + np.asarray(dense, dtype=np.float32) @ self._coef_t[n_sparse:]
        return (raw / self.scale_).astype(np.float32)

    def tensors(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": self.intercept_}

    def to_json(self) -> dict[str, Any]:
        return {"C": self.C, "folds": self.folds, "seed": self.seed, "floor": self.floor, "scale": self.scale_}

    @classmethod
    def from_state(cls, state: dict[str, Any], tensors: dict[str, np.ndarray]) -> TextScoreModel:
        model = cls(state["C"], state["folds"], state["seed"], state["floor"])
        model.coef_ = np.asarray(tensors["coef"], dtype=np.float32)
        model.intercept_ = np.asarray(tensors["intercept"], dtype=np.float32)
        model.scale_ = float(state["scale"])
        return model


# The title + image linear model (``fit_title_image_model``): how many principal directions of the image features it
# learns from, and the length of an average product's projected image beside its TF-IDF row (one unit per
# vectorizer). Chosen on validation products, docs/experiments.md 2026-12-05 "title + image without attributes".
IMAGE_COMPONENTS = 128
IMAGE_WEIGHT = 1.0


def fit_title_image_model(
    title: sp.csr_matrix, image: Any, y: np.ndarray, n_classes: int, *, seed: int, chunk_rows: int = 4096
) -> TextScoreModel:
    """A linear SVM on a product's title TF-IDF and its (standardised) image features at once: where the title
    leaves two classes open, the photo's direction decides, inside one model. A linear SVM on all 1,904 image values
    beside a sparse title is slow to fit and overfits, so it learns from the image's first ``IMAGE_COMPONENTS``
    principal directions (their second moments accumulated ``chunk_rows`` at a time: ``image`` may be the
    memory-mapped cache's rows); the fitted weights are then folded back onto the image features, so the model
    is a plain ``TextScoreModel`` over (title TF-IDF, image features): nothing to project at prediction time.
    Fitted once on every row given, at least one (no out-of-fold scores: nothing is trained on its scores)."""
    n, dim = image.shape
    moments = np.zeros((dim, dim), dtype=np.float64)
    for start in range(0, n, chunk_rows):
        x = np.asarray(image[start : start + chunk_rows], dtype=np.float64)
        moments += x.T @ x
    directions = np.linalg.eigh(moments / n)[1][:, ::-1][:, : min(IMAGE_COMPONENTS, dim, n)]  # largest first
    projected = np.concatenate(
        [np.asarray(image[s : s + chunk_rows], dtype=np.float64) @ directions for s in range(0, n, chunk_rows)]
    )
    length = max(float(np.linalg.norm(projected, axis=1).mean()), 1e-6)
    directions *= IMAGE_WEIGHT / length
    projected *= IMAGE_WEIGHT / length
    features = sp.hstack([title, sp.csr_matrix(projected.astype(np.float32))], format="csr", dtype=np.float32)
    model = TextScoreModel(folds=1, seed=seed).fit(features, y, n_classes)
    n_title = title.shape[1]
    image_coef = (directions @ model.coef_[:, n_title:].T.astype(np.float64)).T  # (classes, dim)
    model.coef_ = np.hstack([model.coef_[:, :n_title], image_coef.astype(np.float32)])
    model._coef_t = None
    return model
