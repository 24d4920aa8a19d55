"""The plain baselines every model is measured against: TF-IDF of the title + one-hot metadata with a linear SVM,
and logistic regression on the one-hot metadata alone.

It reads the same products the models read (missing fields as ``features.py`` encodes them), so a comparison on
blanked inputs is a comparison on the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from .catalog import TARGET
from .features import MetadataEncoder, TitleEncoder


class TextSVMBaseline:
    """Linear SVM (C=0.5) on the title's TF-IDF and/or the one-hot metadata, as ``inputs`` names."""

    def __init__(
        self,
        inputs: Sequence[str] = ("metadata", "title"),
        C: float = 0.5,
        seed: int = 42,
        metadata_fields: tuple[Sequence[str], Sequence[str]] | None = None,
    ) -> None:
        self.inputs = tuple(inputs)
        self.C = C
        self.seed = seed
        # (categorical, numeric) columns of the metadata (None: the fashion catalog's)
        self.metadata_fields = metadata_fields

    def _features(self, products: pd.DataFrame) -> sp.csr_matrix:
        parts = []
        if "metadata" in self.inputs:
            parts.append(sp.csr_matrix(self.metadata_encoder_.transform(products)))
        if "title" in self.inputs:
            parts.append(self.title_encoder_.transform(products))
        return sp.hstack(parts, format="csr", dtype=np.float32)

    def fit(self, products: pd.DataFrame) -> TextSVMBaseline:
        unknown = set(self.inputs) - {"metadata", "title"}
        if unknown or not self.inputs:
            raise ValueError(f"TextSVMBaseline reads metadata and/or title, not {sorted(unknown) or 'nothing'}")
        if "metadata" in self.inputs:
            fields = self.metadata_fields or (None, None)
            self.metadata_encoder_ = MetadataEncoder(*map(_as_list, fields)).fit(products)
        if "title" in self.inputs:
            self.title_encoder_ = TitleEncoder().fit(products)
        self.svm_ = LinearSVC(C=self.C, random_state=self.seed).fit(self._features(products), products[TARGET])
        return self

    def predict(self, products: pd.DataFrame) -> np.ndarray:
        return self.svm_.predict(self._features(products))


class MetadataLRBaseline:
    """Logistic regression on the one-hot metadata (the structured fields only, no title)."""

    def __init__(self, max_iter: int = 500, metadata_fields: tuple[Sequence[str], Sequence[str]] | None = None) -> None:
        self.max_iter = max_iter
        # (categorical, numeric) columns of the metadata (None: the fashion catalog's)
        self.metadata_fields = metadata_fields

    def fit(self, products: pd.DataFrame) -> MetadataLRBaseline:
        fields = self.metadata_fields or (None, None)
        self.metadata_encoder_ = MetadataEncoder(*map(_as_list, fields)).fit(products)
        x = self.metadata_encoder_.transform(products)
        self.model_ = LogisticRegression(max_iter=self.max_iter).fit(x, products[TARGET])
        return self

    def predict(self, products: pd.DataFrame) -> np.ndarray:
        return self.model_.predict(self.metadata_encoder_.transform(products))


def _as_list(columns: Sequence[str] | None) -> list[str] | None:
    return None if columns is None else list(columns)
