"""Turn catalog rows into model inputs. Every encoder is fitted on the training split only and saves its
fitted state as plain JSON (no pickle), so a saved model can be loaded safely.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from .catalog import CATEGORICAL, NUMERIC, TITLE

UNKNOWN = "Unknown"
_NON_ALNUM = re.compile(r"[^a-z0-9 ]+")
_SPACES = re.compile(r"\s+")


def clean_title(text: object) -> str:
    """Lowercase, drop special characters, collapse and trim spaces. Missing titles become ''."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    lowered = str(text).lower().replace("-", " ")
    return _SPACES.sub(" ", _NON_ALNUM.sub(" ", lowered)).strip()


def name_length(titles: pd.Series) -> np.ndarray:
    """Word count of the cleaned title (0 when it is missing)."""
    return np.array([len(clean_title(t).split()) for t in titles], dtype=np.float64)


class MetadataEncoder:
    """Structured attributes -> dense float matrix.

    Year is median-imputed with a 0/1 "missing" column beside it, missing categoricals become "Unknown",
    ``name_length`` is the title's word count (median-imputed too when the title is missing: "no title" is not
    "a title of no words"); categoricals are one-hot encoded (a value unseen in training encodes as all zeros)
    and numerics clipped to the range seen in training, then scaled. Clipped, because a linear layer extrapolates:
    a typo such as year 20120 or a price a hundred times the training prices would otherwise become a feature
    value hundreds of standard deviations out, outweigh a clear title and be answered with full confidence.
    """

    def __init__(
        self,
        categorical: list[str] | None = None,
        numeric: list[str] | None = None,
        missing_indicators: bool = True,
        title_length: bool = True,
    ) -> None:
        self.categorical = list(CATEGORICAL if categorical is None else categorical)
        self.numeric = list(NUMERIC if numeric is None else numeric)
        # The title's word count is a feature of the fashion catalog's short titles. A catalog whose text combines
        # a title with descriptions would count a product sent without its description as a very short title.
        self.title_length = title_length
        # An imputed median is indistinguishable from a real one; a 0/1 column per numeric field says which it is.
        self.missing_indicators = missing_indicators

    @property
    def numeric_features(self) -> list[str]:
        flags = [f"{c}_missing" for c in self.numeric] if self.missing_indicators else []
        return [*self.numeric, *(["name_length"] if self.title_length else []), *flags]

    def _numeric_frame(self, frame: pd.DataFrame) -> np.ndarray:
        cols = [pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64) for c in self.numeric]
        lengths = []
        if self.title_length:
            lengths = [name_length(frame[TITLE])]
            # Models saved before name_length was imputed have no median for it and keep their 0.
            lengths[0][lengths[0] == 0] = self.medians_.get("name_length", 0.0)
        flags = [np.isnan(c).astype(np.float64) for c in cols] if self.missing_indicators else []
        width = len(self.numeric_features)
        values = np.column_stack([*cols, *lengths, *flags]) if len(frame) and width else np.zeros((len(frame), width))
        for j, c in enumerate(self.numeric):
            values[np.isnan(values[:, j]), j] = self.medians_[c]
        for j, name in enumerate(self.numeric_features):
            if name in self.ranges_:  # models saved before the ranges existed are not clipped
                np.clip(values[:, j], *self.ranges_[name], out=values[:, j])
        return values

    def _categorical_frame(self, frame: pd.DataFrame) -> np.ndarray:
        cats = frame[self.categorical].astype(object)
        return cats.where(cats.notna(), UNKNOWN).astype(str).to_numpy()

    def fit(self, frame: pd.DataFrame) -> MetadataEncoder:
        self.medians_ = {}
        self.ranges_: dict[str, tuple[float, float]] = {}
        for c in self.numeric:
            column = pd.to_numeric(frame[c], errors="coerce")
            median = column.median()
            self.medians_[c] = float(median) if pd.notna(median) else 0.0
            if column.notna().any():
                self.ranges_[c] = (float(column.min()), float(column.max()))
        if self.title_length:
            lengths = name_length(frame[TITLE])
            self.medians_["name_length"] = float(np.median(lengths[lengths > 0])) if (lengths > 0).any() else 0.0
            if (lengths > 0).any():
                self.ranges_["name_length"] = (float(lengths[lengths > 0].min()), float(lengths.max()))
        # A catalog may have numbers but no categorical attribute: scikit-learn's encoder refuses zero columns.
        self.onehot_ = None
        if self.categorical:
            self.onehot_ = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32)
            self.onehot_.fit(self._categorical_frame(frame))
        numeric = self._numeric_frame(frame)
        self.scaler_ = StandardScaler()
        if numeric.shape[1]:
            self.scaler_.fit(numeric)
        else:  # no number column and no title length: scikit-learn refuses zero columns
            self.scaler_.mean_ = self.scaler_.scale_ = self.scaler_.var_ = np.zeros(0)
        if self.missing_indicators:
            # The 0/1 flags stay 0/1: scaled by their (often tiny) spread in training, one missing year would become
            # a value near 100 that swamps every other feature and stalls the SVM's convergence.
            flags = slice(len(self.numeric) + int(self.title_length), None)
            self.scaler_.mean_[flags], self.scaler_.scale_[flags], self.scaler_.var_[flags] = 0.0, 1.0, 1.0
        return self

    @property
    def categories(self) -> list[np.ndarray]:
        return list(self.onehot_.categories_) if self.onehot_ is not None else []

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        if self.onehot_ is None:
            onehot = np.zeros((len(frame), 0), dtype=np.float32)
        else:
            onehot = self.onehot_.transform(self._categorical_frame(frame))
        values = self._numeric_frame(frame)
        numeric = (self.scaler_.transform(values) if values.shape[1] else values).astype(np.float32)
        return np.hstack([onehot, numeric]).astype(np.float32)

    @property
    def n_features(self) -> int:
        return sum(len(c) for c in self.categories) + len(self.numeric_features)

    def feature_names(self) -> list[str]:
        onehot = self.onehot_.get_feature_names_out(self.categorical) if self.onehot_ is not None else []
        return [*onehot, *self.numeric_features]

    def to_json(self) -> dict[str, Any]:
        return {
            "categorical": self.categorical,
            "numeric": self.numeric,
            "missing_indicators": self.missing_indicators,
            "title_length": self.title_length,
            "medians": self.medians_,
            "ranges": {k: list(v) for k, v in self.ranges_.items()},
            "categories": [list(map(str, c)) for c in self.categories],
            "scaler_mean": self.scaler_.mean_.tolist(),
            "scaler_scale": self.scaler_.scale_.tolist(),
            "scaler_var": self.scaler_.var_.tolist(),
        }

    @classmethod
    def from_json(cls, state: dict[str, Any]) -> MetadataEncoder:
        # Format-1 models were saved before the missing-value indicators existed.
        enc = cls(state["categorical"], state["numeric"], state.get("missing_indicators", False),
                  state.get("title_length", True))
        enc.medians_ = {k: float(v) for k, v in state["medians"].items()}
        enc.ranges_ = {k: (float(lo), float(hi)) for k, (lo, hi) in state.get("ranges", {}).items()}
        cats = [np.array(c, dtype=object) for c in state["categories"]]
        enc.onehot_ = None
        if cats:
            enc.onehot_ = OneHotEncoder(
                categories=cats, handle_unknown="ignore", sparse_output=False, dtype=np.float32
            )
            # Fitting on the category lists themselves reproduces the saved encoder exactly.
            width = max(len(c) for c in cats)
            enc.onehot_.fit(np.array([[c[min(i, len(c) - 1)] for c in cats] for i in range(width)], dtype=object))
        enc.scaler_ = StandardScaler()
        enc.scaler_.mean_ = np.array(state["scaler_mean"])
        enc.scaler_.scale_ = np.array(state["scaler_scale"])
        enc.scaler_.var_ = np.array(state["scaler_var"])
        enc.scaler_.n_features_in_ = len(enc.scaler_.mean_)
        enc.scaler_.n_samples_seen_ = 1
        return enc


class TitleEncoder:
    """Product title -> sparse TF-IDF of word uni/bi-grams and character 2-4 grams of the cleaned title, and with a
    ``sentence`` encoder (sentence.py) the title's sentence embedding after them, as dense columns of the same row.

    Character n-grams make the encoder robust to typos and brand-glued words (``tshirt`` vs ``t shirt``); the
    sentence embedding places words never seen in training near the words they are used like.
    """

    def __init__(
        self, max_word_features: int = 20000, max_char_features: int = 30000, sentence: Any | None = None
    ) -> None:
        self.max_word_features = max_word_features
        self.max_char_features = max_char_features
        self.sentence = sentence

    def _vectorizers(self) -> list[TfidfVectorizer]:
        return [
            TfidfVectorizer(
                ngram_range=(1, 2), min_df=2, max_features=self.max_word_features, sublinear_tf=True, dtype=np.float32
            ),
            TfidfVectorizer(
                analyzer="char_wb",
                ngram_range=(2, 4),
                min_df=3,
                max_features=self.max_char_features,
                sublinear_tf=True,
                dtype=np.float32,
            ),
        ]

    def fit(self, frame: pd.DataFrame) -> TitleEncoder:
        titles = [clean_title(t) for t in frame[TITLE]]
        self.vectorizers_ = [v.fit(titles) for v in self._vectorizers()]
        return self

    def transform(self, frame: pd.DataFrame) -> sp.csr_matrix:
        titles = [clean_title(t) for t in frame[TITLE]]
        parts = [v.transform(titles) for v in self.vectorizers_]
        if self.sentence is not None:
            # The model reads the title as written (case, punctuation); a title that cleans to nothing is absent.
            raw = [str(t) if clean else "" for t, clean in zip(frame[TITLE], titles, strict=True)]
            parts.append(sp.csr_matrix(self.sentence.encode(raw)))
        return sp.hstack(parts, format="csr", dtype=np.float32)

    @property
    def n_tfidf_features(self) -> int:
        return sum(len(v.vocabulary_) for v in self.vectorizers_)

    @property
    def n_features(self) -> int:
        return self.n_tfidf_features + (self.sentence.dim if self.sentence is not None else 0)

    def to_json(self) -> dict[str, Any]:
        state = {
            "max_word_features": self.max_word_features,
            "max_char_features": self.max_char_features,
            "vocabularies": [{k: int(i) for k, i in v.vocabulary_.items()} for v in self.vectorizers_],
            "idfs": [v.idf_.tolist() for v in self.vectorizers_],
        }
        if self.sentence is not None:
            state["sentence"] = {"dim": self.sentence.dim, "weight": self.sentence.weight}
        return state

    @classmethod
    def from_json(cls, state: dict[str, Any], sentence: Any | None = None) -> TitleEncoder:
        enc = cls(state["max_word_features"], state["max_char_features"], sentence)
        enc.vectorizers_ = []
        for template, vocab, idf in zip(enc._vectorizers(), state["vocabularies"], state["idfs"], strict=True):
            vec = TfidfVectorizer(**{**template.get_params(), "vocabulary": vocab, "max_features": None})
            vec.fit([""] if not vocab else list(vocab)[:1])  # sets vocabulary_ from the fixed vocabulary
            vec.idf_ = np.array(idf, dtype=np.float32)
            enc.vectorizers_.append(vec)
        return enc


class ClassIndex:
    """Category names <-> integer ids, sorted for a stable order. Unlike scikit-learn's ``LabelEncoder`` it does
    not raise on a label it never saw: ``transform`` gives -1 and the caller decides."""

    def fit(self, labels: pd.Series) -> ClassIndex:
        self.classes_ = sorted(map(str, pd.Series(labels).dropna().unique()))
        self._index = {c: i for i, c in enumerate(self.classes_)}
        return self

    def transform(self, labels: pd.Series) -> np.ndarray:
        """Unknown labels map to -1 (callers decide whether that is an error)."""
        return np.array([self._index.get(str(v), -1) for v in labels], dtype=np.int64)

    def inverse_transform(self, ids: np.ndarray) -> np.ndarray:
        return np.array(self.classes_, dtype=object)[np.asarray(ids)]

    def to_json(self) -> dict[str, Any]:
        return {"classes": self.classes_}

    @classmethod
    def from_json(cls, state: dict[str, Any]) -> ClassIndex:
        enc = cls()
        enc.classes_ = list(state["classes"])
        enc._index = {c: i for i, c in enumerate(enc.classes_)}
        return enc
