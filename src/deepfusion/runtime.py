"""Predict with an exported model (``deepfusion.export``) using only onnxruntime, numpy and Pillow.

    from deepfusion.runtime import ExportedModel
    model = ExportedModel.load("exported/", threads=2)
    model.predict([{"id": "15970", "gender": "Men", "productDisplayName": "Turtle Check Men Navy Blue Shirt"}],
                  images=[Path("15970.jpg").read_bytes()])

This module imports no other deepfusion module and neither torch, scikit-learn, scipy nor pandas (pandas only
inside ``predict_frame``, for callers that have it): those belong to the training stack. What the training code
computes with them is reimplemented here in numpy and checked against it by tests/test_export.py: the field
clean-up of ``catalog.catalog_from_frame``, ``features.clean_title``, the title's TF-IDF (scikit-learn's
``TfidfVectorizer``: analyzers, sublinear tf, idf, l2 norm, in the same float32 / float64 steps), the metadata
encoding (``MetadataEncoder``: one-hot, medians, missing indicators, scaler), and the image preprocessing of
``embeddings.ImageEmbedder`` (decoding within a pixel budget, RGB, bilinear resize, normalisation, float16
rounding of the backbone's features). Products are routed as in ``Predictor._logits``: without a title to the
no-title network, with a title but no attribute at all to the no-metadata route (when the model has them).
A category-tree label's per-level answers are ``Predictor.level_columns``' (``CategoryTree``: the taxonomy's
level probabilities and top-down decoding, in numpy).
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import logging
import math
import numbers
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
from PIL import Image

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

EXPORT_FORMAT = "deepfusion-export"
EXPORT_VERSION = 2  # the export layout this runtime reads (export.EXPORT_VERSION); 2 added no_metadata.onnx
# The networks of an export and the modalities each needs the model to have for its routing (Predictor._logits).
NETWORKS: dict[str, tuple[str, ...]] = {"main": (), "fallback": ("title",), "no_metadata": ("metadata", "title")}
MANIFEST = "manifest.json"
UNKNOWN = "Unknown"  # a missing categorical value, as features.UNKNOWN
# As catalog.IMAGE_FORMATS / MAX_IMAGE_PIXELS / MAX_IMAGE_BYTES (tests check they agree): common photo formats
# only, so a crafted file cannot reach Pillow's less-tested decoders; a pixel budget against decompression bombs.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 64 * 1024 * 1024
IMAGE_BATCH = 64  # images per backbone call, as the training embedder
BATCH_SIZE = 256  # products per network call: bounds the padded title arrays of a big request

_NON_ALNUM = re.compile(r"[^a-z0-9 ]+")
_SPACES = re.compile(r"\s+")
_WHITE_SPACES = re.compile(r"\s\s+")  # scikit-learn's, for the character analyzers
# A decimal number as pandas.to_numeric reads one (ASCII digits only: "١٢" is not a year).
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


class ExportLoadError(Exception):
    """A folder that is not a usable exported model; the message names the file, the problem and what to do."""


class ImageTooLarge(ValueError):
    """An image that would decode to more pixels than allowed (as ``catalog.ImageTooLarge``)."""

    def __init__(self, message: str, size: tuple[int, int] | None, max_pixels: int) -> None:
        super().__init__(message)
        self.size = size
        self.max_pixels = max_pixels


# What decoding a broken or hostile file can raise (as embeddings.DECODE_ERRORS); ImageTooLarge is a ValueError.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)

DECODERS = ("path", "top_down")  # predictor.DECODERS: how a tree model picks its path

REEXPORT = "Export the model again with this version of DeepFusion (`deepfusion export MODEL_DIR --out DIR`)."


# ---------------------------------------------------------------------------------------------- fields
def clean_title(text: object) -> str:
    """Lowercase, drop special characters, collapse and trim spaces; missing titles become '' (features.py)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    lowered = str(text).lower().replace("-", " ")
    return _SPACES.sub(" ", _NON_ALNUM.sub(" ", lowered)).strip()


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def field_text(value: object) -> str | None:
    """A text field as ``catalog_from_frame`` leaves it: stripped text, None when missing or blank."""
    if _is_missing(value):
        return None
    text = str(value).strip()
    return text or None


def field_number(value: object) -> float:
    """A numeric field as ``pandas.to_numeric(errors="coerce")`` reads it, NaN when missing or not a number.
    Infinities count as missing too: scaled, they would turn every probability into NaN."""
    if isinstance(value, numbers.Real):  # bool, int, float and numpy's numbers
        number = float(value)
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value.strip())
    else:
        return math.nan
    return number if math.isfinite(number) else math.nan


# Text and numbers of catalogs in other schemas than the fashion one, as schema.clean_text / combine_text /
# parse_number read them (copied, not imported: this file runs on its own; tests check they agree).
EXTRA_TEXT_WORDS = 48
_TAG = re.compile(r"<[^>]{0,500}>")
# What a browser never shows: a style sheet or script inside a description (Shopify's "Body (HTML)").
_HIDDEN = re.compile(r"<(script|style)\b[^>]{0,500}>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")
_CURRENCIES = ("usd", "eur", "gbp", "chf", "jpy", "cny", "inr", "cad", "aud", "nzd", "sek", "nok", "dkk", "pln",
               "brl", "mxn", "zar", "hkd", "sgd", "try", "krw")
_CATALOG_NUMBER = re.compile(
    r"^(?:[^\w\s.,+-]{1,3}|[a-z]{0,2}\$|(?:" + "|".join(_CURRENCIES) + r"))?\s?([+-]?[\d.,]*\d)"
    r"\s*(?:([a-z]+|[^\w\s.,+-]{1,3})\.?)?\s*$",
    re.IGNORECASE,
)
# A unit after the number ("10.7 pounds", "12.8 oz", "30 cm"): the number in that family's base unit (grams,
# centimetres, millilitres), so a column that mixes pounds and ounces reads as one scale. Any other word after the
# number ("5 new") leaves the value a string.
_UNITS = {
    **dict.fromkeys(("g", "gr", "gram", "grams"), 1.0),
    **dict.fromkeys(("kg", "kgs", "kilo", "kilos", "kilogram", "kilograms"), 1000.0),
    **dict.fromkeys(("mg", "milligram", "milligrams"), 0.001),
    **dict.fromkeys(("lb", "lbs", "pound", "pounds"), 453.59237),
    **dict.fromkeys(("oz", "ounce", "ounces"), 28.349523125),
    **dict.fromkeys(("mm", "millimetre", "millimetres", "millimeter", "millimeters"), 0.1),
    **dict.fromkeys(("cm", "centimetre", "centimetres", "centimeter", "centimeters"), 1.0),
    **dict.fromkeys(("m", "metre", "metres", "meter", "meters"), 100.0),
    **dict.fromkeys(("in", "inch", "inches"), 2.54),
    **dict.fromkeys(("ft", "foot", "feet"), 30.48),
    **dict.fromkeys(("ml", "millilitre", "millilitres", "milliliter", "milliliters"), 1.0),
    **dict.fromkeys(("l", "litre", "litres", "liter", "liters"), 1000.0),
    **dict.fromkeys(("w", "watt", "watts"), 1.0),
    **dict.fromkeys(("kw", "kilowatt", "kilowatts"), 1000.0),
    **dict.fromkeys(("v", "volt", "volts", "mah"), 1.0),
    **dict.fromkeys(("mb", "megabyte", "megabytes"), 0.001),
    **dict.fromkeys(("gb", "gigabyte", "gigabytes"), 1.0),
    **dict.fromkeys(("tb", "terabyte", "terabytes"), 1000.0),
    **dict.fromkeys(_CURRENCIES, 1.0),  # "12.99 EUR": a price
}


def _decimal(body: str) -> float:
    """The number in ``body`` (digits, "," and "."), whichever of the two marks a catalog uses for decimals:
    both marks, the last one is the decimal ("1,299.00", "1.816,55"); one "," before exactly three digits
    groups thousands ("1,299"), otherwise it is a decimal comma ("12,99"); "." is a decimal point unless it
    groups thousands more than once ("1.816.000"). NaN for anything else ("1,2,3")."""
    sign, body = (body[0], body[1:]) if body[0] in "+-" else ("", body)
    if "," in body and "." in body:
        point = "," if body.rfind(",") > body.rfind(".") else "."
        whole, frac = body.rsplit(point, 1)
        group = "." if point == "," else ","
        if not frac.isdigit() or not re.fullmatch(r"\d{1,3}(?:" + re.escape(group) + r"\d{3})*", whole):
            return math.nan
        return float(sign + whole.replace(group, "") + "." + frac)
    for mark in (",", "."):
        if mark in body:
            grouped = re.fullmatch(r"\d{1,3}(?:" + re.escape(mark) + r"\d{3})+", body)
            if grouped and (mark == "," or body.count(".") > 1):
                return float(sign + body.replace(mark, ""))
            whole, _, frac = body.partition(mark)
            if (whole.isdigit() or not whole) and frac.isdigit():
                return float(f"{sign}{whole or 0}.{frac}")
            return math.nan
    return float(sign + body) if body.isdigit() else math.nan


def clean_text(value: object) -> str:
    if _is_missing(value):
        return ""
    text = str(value)
    if "<" in text or "&" in text:
        text = html.unescape(_TAG.sub(" ", _HIDDEN.sub(" ", text)))
    text = text.replace("\ufffd", " ").replace("\xa0", " ")
    return _SPACE.sub(" ", text).strip()


def combine_text(values: Sequence[object], extra_words: int = EXTRA_TEXT_WORDS) -> str | None:
    parts: list[str] = []
    for value in values:
        text = clean_text(value)
        if text:
            parts.append(text if not parts else " ".join(text.split(" ")[:extra_words]))
    return " ".join(parts) or None


def parse_number(value: object) -> float:
    if value is None:
        return math.nan
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
        return number if math.isfinite(number) else math.nan
    match = _CATALOG_NUMBER.match(str(value).strip())
    if not match or not any(ch.isdigit() for ch in match.group(1)):
        return math.nan
    unit = (match.group(2) or "").lower()
    if unit and unit not in _UNITS and unit.isalpha():  # a currency sign or "%" after the number is no unit
        return math.nan
    number = _decimal(match.group(1)) * _UNITS.get(unit, 1.0)
    return number if math.isfinite(number) else math.nan


@dataclass
class Fields:
    """One product's fields, cleaned up: text fields stripped (None when missing), numbers as float (NaN)."""

    id: str
    text: dict[str, str | None]
    numbers: dict[str, float]
    title: str | None


def product_fields(product: Mapping[str, Any], position: int, fields: Mapping[str, Any]) -> Fields:
    """The fields of ``product`` (a dict of catalog columns, under the catalog's own names or, for a loaded
    catalog's rows, the products frame's); a product without an id gets its position.

    As ``catalog.load_catalog`` reads a catalog of another schema than the fashion one: the id from the schema's
    id column, the text columns combined (``schema.combine_text``) and numbers as catalogs write them
    (``schema.parse_number``: "£3.42", "1,299")."""
    catalog_numbers = fields.get("numbers") == "catalog"
    id_value = product.get(fields["id"])
    if _is_missing(id_value) and fields.get("id_column"):
        id_value = product.get(fields["id_column"])
    pid = field_text(id_value)
    if fields["title"] in product or not catalog_numbers:
        title = field_text(product.get(fields["title"]))
    else:
        title = combine_text([product.get(c) for c in fields.get("text", ())])
    number = parse_number if catalog_numbers else field_number
    return Fields(
        id=str(position) if pid is None else pid,
        text={c: field_text(product.get(c)) for c in fields["categorical"]},
        numbers={c: number(product.get(c)) for c in fields["numeric"]},
        title=title,
    )


# ---------------------------------------------------------------------------------------------- title
class TfidfAnalyzer:
    """One fitted ``TfidfVectorizer`` of features.TitleEncoder: its analyzer, vocabulary and idf weights."""

    def __init__(self, settings: Mapping[str, Any], vocabulary: Mapping[str, int], idf: Sequence[float]) -> None:
        self.analyzer = settings["analyzer"]
        self.ngram_range = (int(settings["ngram_range"][0]), int(settings["ngram_range"][1]))
        self.lowercase = bool(settings["lowercase"])
        self.token_pattern = re.compile(settings["token_pattern"])
        self.sublinear_tf = bool(settings["sublinear_tf"])
        self.norm = settings["norm"]
        self.vocabulary = {str(k): int(v) for k, v in vocabulary.items()}
        self.idf = np.asarray(idf, dtype=np.float32)  # saved from float32, so this is the fitted value exactly
        if self.analyzer not in ("word", "char_wb") or self.norm not in ("l2", None):
            raise ValueError(f"unsupported TF-IDF settings: analyzer {self.analyzer!r}, norm {self.norm!r}")
        if len(self.idf) != len(self.vocabulary) or sorted(self.vocabulary.values()) != list(range(len(self.idf))):
            raise ValueError("the vocabulary's indices do not match its idf weights")

    def __len__(self) -> int:
        return len(self.idf)

    def analyze(self, doc: str) -> list[str]:
        """The n-grams scikit-learn's analyzer yields for ``doc``, in its order."""
        if self.lowercase:
            doc = doc.lower()
        low, high = self.ngram_range
        if self.analyzer == "word":
            tokens = self.token_pattern.findall(doc)
            grams = list(tokens) if low == 1 else []
            for n in range(max(low, 2), min(high, len(tokens)) + 1):
                grams += [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
            return grams
        # char_wb: n-grams inside each word padded with one space, a short word counted once (_char_wb_ngrams).
        grams = []
        for word in _WHITE_SPACES.sub(" ", doc).split():
            word = f" {word} "
            for n in range(low, high + 1):
                offset = 0
                grams.append(word[offset : offset + n])
                while offset + n < len(word):
                    offset += 1
                    grams.append(word[offset : offset + n])
                if offset == 0:
                    break
        return grams

    def transform(self, docs: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per document, its TF-IDF row: feature indices (int64, ascending) and values (float32), computed in
        the order and precision of scikit-learn's CountVectorizer + TfidfTransformer."""
        indptr = [0]
        indices: list[int] = []
        counts: list[int] = []
        for doc in docs:
            counter: dict[int, int] = {}
            for gram in self.analyze(doc):
                j = self.vocabulary.get(gram)
                if j is not None:
                    counter[j] = counter.get(j, 0) + 1
            for j in sorted(counter):  # CountVectorizer sorts each row's indices
                indices.append(j)
                counts.append(counter[j])
            indptr.append(len(indices))
        idx = np.asarray(indices, dtype=np.int64)
        data = np.asarray(counts, dtype=np.float32)
        if self.sublinear_tf:
            np.log(data, out=data)
            data += np.float32(1.0)
        data *= self.idf[idx]
        rows = []
        for a, b in zip(indptr[:-1], indptr[1:], strict=True):
            values = data[a:b]
            if self.norm == "l2" and b > a:
                # sklearn's inplace_csr_row_normalize_l2: float32 squares summed in order into a double, each value
                # divided by the double root and rounded back to float32.
                total = float(np.cumsum(values * values, dtype=np.float64)[-1])
                if total != 0.0:
                    values = (values.astype(np.float64) / math.sqrt(total)).astype(np.float32)
            rows.append((idx[a:b], values))
        return rows


class SentenceRuntime:
    """sentence.SentenceEncoder in onnxruntime: the exported sentence model (token ids and mask in, the mean-pooled,
    unit-length embedding out) behind the model's own tokenizer (the ``tokenizers`` package, no torch)."""

    def __init__(self, session: ort.InferenceSession, tokenizer_file: Path, spec: Mapping[str, Any]) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ExportLoadError(
                "This export reads titles with a sentence model, which needs the tokenizers package: "
                "pip install 'deepfusion[serve]'."
            ) from None
        self.session = session
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.enable_truncation(int(spec["max_length"]))
        self.tokenizer.enable_padding()
        self.dim = int(spec["dim"])
        self.weight = np.float32(spec["weight"])
        self.max_chars = int(spec["max_chars"])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) embeddings times the model's weight; an empty text gets zeros."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo = [i for i, t in enumerate(texts) if t]
        if todo:
            encoded = self.tokenizer.encode_batch([texts[i][: self.max_chars] for i in todo])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            out[todo] = self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
        return out * self.weight


class TitleVectorizer:
    """features.TitleEncoder in numpy: the analyzers' TF-IDF rows side by side (word features first), then the
    title's sentence embedding when the model has a sentence model."""

    def __init__(self, analyzers: list[TfidfAnalyzer], sentence: SentenceRuntime | None = None) -> None:
        self.analyzers = analyzers
        self.offsets = np.cumsum([0, *(len(a) for a in analyzers)])[:-1]
        self.sentence = sentence

    def rows(self, cleaned: Sequence[str], raw: Sequence[str | None]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per title, its whole row as (indices, values): the TF-IDF of the cleaned title, and the sentence
        embedding of the title as written (a title that cleans to nothing is absent: no embedding)."""
        tfidf = self.transform(cleaned)
        if self.sentence is None:
            return tfidf
        emb = self.sentence.embed([str(r) if c else "" for c, r in zip(cleaned, raw, strict=True)])
        columns = np.arange(self.n_features, self.n_features + self.sentence.dim, dtype=np.int64)
        return [
            (np.concatenate([idx, columns]), np.concatenate([values, e])) if c else (idx, values)
            for (idx, values), e, c in zip(tfidf, emb, cleaned, strict=True)
        ]

    @classmethod
    def from_state(cls, settings: Sequence[Mapping[str, Any]], state: Mapping[str, Any]) -> TitleVectorizer:
        parts = zip(settings, state["vocabularies"], state["idfs"], strict=True)
        return cls([TfidfAnalyzer(s, vocab, idf) for s, vocab, idf in parts])

    @property
    def n_features(self) -> int:
        return int(sum(len(a) for a in self.analyzers))

    def transform(self, titles: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per title (already cleaned), its TF-IDF row as (indices, values)."""
        parts = [a.transform(titles) for a in self.analyzers]
        return [
            (
                np.concatenate([idx + off for (idx, _), off in zip(row, self.offsets, strict=True)]),
                np.concatenate([values for _, values in row]),
            )
            for row in zip(*parts, strict=True)
        ]

    def dense(self, titles: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(titles), self.n_features), dtype=np.float32)
        for i, (idx, values) in enumerate(self.transform(titles)):
            out[i, idx] = values
        return out

    @staticmethod
    def padded(rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """Rows as the graphs' (batch, tokens) ``title_indices`` / ``title_values``, padded with index 0 and
        value 0 (which adds nothing); at least one token wide, so no tensor is empty."""
        width = max([1, *(len(idx) for idx, _ in rows)])
        indices = np.zeros((len(rows), width), dtype=np.int64)
        values = np.zeros((len(rows), width), dtype=np.float32)
        for i, (idx, vals) in enumerate(rows):
            indices[i, : len(idx)] = idx
            values[i, : len(vals)] = vals
        return indices, values


# ---------------------------------------------------------------------------------------------- metadata
class MetadataTransform:
    """features.MetadataEncoder in numpy, from its saved state: one-hot categoricals (a value unseen in
    training encodes as zeros, a missing one as "Unknown"), then the scaled numerics: each numeric field
    (median-imputed), the title's word count (median-imputed when there is no title) and, in models that have
    them, a 0/1 ``<field>_missing`` column per numeric field."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        self.categorical = list(state["categorical"])
        self.numeric = list(state["numeric"])
        # Models saved before the indicators existed have no flag and no such columns.
        self.missing_indicators = bool(state.get("missing_indicators", False))
        self.title_length = bool(state.get("title_length", True))  # False: no title word count (other schemas)
        self.medians = {str(k): float(v) for k, v in state["medians"].items()}
        # The training range of each number (clipped to it, as MetadataEncoder does); older models have none.
        self.ranges = {str(k): (float(lo), float(hi)) for k, (lo, hi) in state.get("ranges", {}).items()}
        self.categories = [{str(v): j for j, v in enumerate(cats)} for cats in state["categories"]]
        self.offsets = np.cumsum([0, *(len(c) for c in self.categories)])
        self.mean = np.asarray(state["scaler_mean"], dtype=np.float64)
        self.scale = np.asarray(state["scaler_scale"], dtype=np.float64)
        n_numeric = len(self.numeric) * (2 if self.missing_indicators else 1) + int(self.title_length)
        if len(self.categories) != len(self.categorical) or len(self.mean) != n_numeric or len(self.scale) != n_numeric:
            raise ValueError("the metadata encoder's categories or scaler do not match its fields")
        missing = [c for c in self.numeric if c not in self.medians]
        if missing:
            raise ValueError(f"the metadata encoder has no median for {', '.join(missing)}")

    @property
    def n_features(self) -> int:
        return int(self.offsets[-1]) + len(self.mean)

    def transform(self, products: Sequence[Fields]) -> np.ndarray:
        onehot = np.zeros((len(products), int(self.offsets[-1])), dtype=np.float32)
        for i, product in enumerate(products):
            for j, column in enumerate(self.categorical):
                value = product.text.get(column)
                k = self.categories[j].get(UNKNOWN if value is None else value)
                if k is not None:
                    onehot[i, self.offsets[j] + k] = 1.0
        cols = np.array([[p.numbers.get(c, math.nan) for c in self.numeric] for p in products], dtype=np.float64)
        cols = cols.reshape(len(products), len(self.numeric))
        lengths = []
        if self.title_length:
            lengths = [np.array([len(clean_title(p.title).split()) for p in products], dtype=np.float64)]
            lengths[0][lengths[0] == 0] = self.medians.get("name_length", 0.0)  # older models have no median
        flags = [np.isnan(cols).astype(np.float64)] if self.missing_indicators else []
        for j, column in enumerate(self.numeric):
            cols[np.isnan(cols[:, j]), j] = self.medians[column]
        values = np.column_stack([cols, *lengths, *flags])
        clipped = [*self.numeric, *(["name_length"] if self.title_length else [])]
        for j, name in enumerate(clipped):
            if name in self.ranges:
                np.clip(values[:, j], *self.ranges[name], out=values[:, j])
        numeric = ((values - self.mean) / self.scale).astype(np.float32)
        return np.hstack([onehot, numeric]).astype(np.float32)


# ---------------------------------------------------------------------------------------------- images
def letterbox(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """As catalog.letterbox (copied: this file runs on its own): resized keeping the aspect ratio, centred on
    white; the plain bilinear resize for an image of the target's aspect ratio."""
    w, h = size
    scale = min(w / image.width, h / image.height)
    inner = (max(1, min(w, round(image.width * scale))), max(1, min(h, round(image.height * scale))))
    resized = image.resize(inner, Image.BILINEAR)
    if inner == (w, h):
        return resized
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    canvas.paste(resized, ((w - inner[0]) // 2, (h - inner[1]) // 2))
    return canvas


def open_image_within_budget(
    data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, target_size: tuple[int, int] | None = None
) -> Image.Image:
    """Decode the image in ``data`` once, never more than ``max_pixels`` pixels (catalog.open_image_within_budget):
    the header is read first, a JPEG is decoded at the smallest built-in reduced scale that is still at least
    ``target_size`` (width, height), and anything still over the budget is refused before decoding."""
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own, larger, limit, checked while opening
        raise ImageTooLarge(f"image too large: {exc}", None, max_pixels) from exc
    try:
        if target_size is not None:
            image.draft(image.mode, target_size)  # a no-op for formats other than JPEG
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"image too large: {width}x{height} is {width * height:,} pixels to decode, more than the "
                f"limit of {max_pixels:,}",
                (width, height),
                max_pixels,
            )
        image.load()
    except BaseException:
        image.close()
        raise
    return image


@dataclass(frozen=True)
class ImageSpec:
    """The backbone's input and how its features are scaled for the network."""

    size: tuple[int, int]  # (height, width)
    mean: np.ndarray  # per channel, of pixels / 255
    std: np.ndarray
    dim: int
    feature_mean: np.ndarray  # training embeddings' mean and std (predictor.image_scaling)
    feature_std: np.ndarray
    clip: float


# ---------------------------------------------------------------------------------------------- category trees
class CategoryTree:
    """A tree label's classes as paths, for the per-level answers ``Predictor.level_columns`` gives (as
    taxonomy.level_probabilities and taxonomy.top_down compute them; copied, not imported).

    ``classes``: the model's classes, each a whole path spelled with ``display`` between its levels; ``levels``:
    the level names (the label columns, or ``level_1``, ...); ``decode``: "path" (the most probable class) or
    "top_down" (the most probable node level by level). Raises ValueError for a description that does not fit
    the classes."""

    def __init__(self, classes: Sequence[str], levels: Sequence[str], display: str, decode: str) -> None:
        if decode not in DECODERS:
            raise ValueError(f"decoding {decode!r} is not one of {', '.join(DECODERS)}")
        names = list(levels)
        if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"the tree's levels must be distinct non-empty names, got {names!r}")
        if not isinstance(display, str) or not display:
            raise ValueError(f"the tree's path joiner must be a non-empty string, got {display!r}")
        self.levels = names
        self.display = display
        self.decode = decode
        self.paths = [tuple(str(c).split(display)) for c in classes]
        for c, path in zip(classes, self.paths, strict=True):
            if len(path) > len(names) or not all(path):
                raise ValueError(f"class {c!r} is not a path of at most {len(names)} levels joined by {display!r}")
        # Per level: which node (path prefix) each class falls under, as a (classes, nodes) 0/1 matrix.
        self.members: list[np.ndarray] = []
        self.node_of: list[np.ndarray] = []  # per level, each class's node column (-1: the class ends above it)
        for k in range(len(names)):
            nodes = sorted({p[: k + 1] for p in self.paths if len(p) > k})
            index = {n: j for j, n in enumerate(nodes)}
            member = np.zeros((len(self.paths), len(nodes)), dtype=np.float64)
            node_of = np.full(len(self.paths), -1, dtype=np.int64)
            for c, path in enumerate(self.paths):
                if len(path) > k:
                    node_of[c] = index[path[: k + 1]]
                    member[c, node_of[c]] = 1.0
            self.members.append(member)
            self.node_of.append(node_of)

    def choose(self, proba: np.ndarray) -> np.ndarray:
        """The predicted class of each row (Predictor._decode): the most probable class, or with "top_down" the
        path chosen level by level. Either is a class, hence a path of the training taxonomy."""
        if self.decode != "top_down" or not len(proba):
            return proba.argmax(axis=1)
        chosen = np.empty(len(proba), dtype=np.int64)
        for i, row in enumerate(proba):
            prefix: tuple[str, ...] = ()
            candidates = list(range(len(self.paths)))
            while True:
                # Mass of each next step: the class ending at this prefix (None), or each child subtree.
                mass: dict[tuple[str, ...] | None, float] = {}
                for c in candidates:
                    key = None if len(self.paths[c]) == len(prefix) else self.paths[c][: len(prefix) + 1]
                    mass[key] = mass.get(key, 0.0) + float(row[c])
                best = max(mass, key=lambda key: mass[key])
                if best is None:
                    chosen[i] = next(c for c in candidates if len(self.paths[c]) == len(prefix))
                    break
                prefix = best
                candidates = [c for c in candidates if self.paths[c][: len(prefix)] == prefix]
                if len(candidates) == 1 and self.paths[candidates[0]] == prefix:
                    chosen[i] = candidates[0]
                    break
        return chosen

    def level_answers(self, proba: np.ndarray, chosen: np.ndarray) -> list[tuple[list[str | None], np.ndarray]]:
        """Per level: the chosen path's node there (None where the path ends above it) and that node's
        probability, the sum over every class under it (NaN where there is no node)."""
        out = []
        rows = np.arange(len(chosen))
        for k, (member, node_of) in enumerate(zip(self.members, self.node_of, strict=True)):
            nodes = node_of[chosen]
            marginal = proba @ member
            confidence = np.where(nodes >= 0, marginal[rows, np.maximum(nodes, 0)] if member.shape[1] else 0.0,
                                  np.nan)
            values = [self.paths[c][k] if len(self.paths[c]) > k else None for c in chosen]
            out.append((values, confidence))
        return out


# ---------------------------------------------------------------------------------------------- model
@dataclass
class _Network:
    session: ort.InferenceSession
    inputs: list[str]
    modalities: list[str]
    temperature: float


def _safe_name(folder: Path, name: object, what: str) -> Path:
    """``folder / name`` for a plain file name that stays inside ``folder``; ExportLoadError otherwise."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ExportLoadError(f"{folder / MANIFEST}: {what} names {name!r}, not a file of the folder. {REEXPORT}")
    path = folder / name
    if path.is_symlink() or not path.is_file():
        raise ExportLoadError(
            f"{path} is missing (named by {MANIFEST} as {what}). Restore the exported folder. {REEXPORT}"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _category_tree(folder: Path, manifest: Mapping[str, Any]) -> CategoryTree | None:
    """The manifest's ``tree`` (None: a flat label), checked against the classes and the catalog schema: a tree
    model's per-level answers depend on every value of it."""
    tree = manifest.get("tree")
    schema = manifest.get("schema") or {}
    columns = list(schema.get("levels") or []) if isinstance(schema, Mapping) else []
    if tree is None:
        if len(columns) > 1:  # label columns always make a tree: its description was removed
            raise ExportLoadError(f"{folder / MANIFEST}: the label is the columns {', '.join(columns)}, but the "
                                  f"manifest has no 'tree'. {REEXPORT}")
        return None
    if not isinstance(tree, Mapping):
        raise ExportLoadError(f"{folder / MANIFEST}: 'tree' must be an object. {REEXPORT}")
    # The joiners taxonomy.Taxonomy.fit writes: one of its DISPLAY_CHOICES (or JOIN) for label columns, the
    # separator as the labels spell it for a path label.
    sep, display = tree.get("sep"), tree.get("display")
    joiners = (" > ", " | ", " / ", " >> ", "\x1f") if columns else (sep, f" {sep} ") if sep else ()
    if display not in joiners:
        raise ExportLoadError(f"{folder / MANIFEST}: the tree's path joiner {display!r} is not one of "
                              f"{list(joiners)}. {REEXPORT}")
    try:
        built = CategoryTree(list(manifest["classes"]), tree.get("levels") or [], display, tree.get("decode"))
    except (TypeError, ValueError) as exc:
        raise ExportLoadError(f"{folder / MANIFEST}: 'tree' does not fit the model: {exc}. {REEXPORT}") from None
    n = len(built.levels)
    # A path label has as many levels as its longest class (taxonomy.Taxonomy.n_levels); label columns may have
    # more than any class reaches.
    if not columns and max((len(p) for p in built.paths), default=0) != n:
        raise ExportLoadError(f"{folder / MANIFEST}: the tree's {n} levels are not those of its classes, joined by "
                              f"{display!r}. {REEXPORT}")
    expected = columns[:n] if columns else [f"level_{k}" for k in range(1, n + 1)]
    if built.levels != expected:
        raise ExportLoadError(f"{folder / MANIFEST}: the tree's levels {built.levels} are not the label's "
                              f"{expected}. {REEXPORT}")
    return built


class ExportedModel:
    """An exported model, loaded for prediction. ``predict`` is thread-safe (onnxruntime sessions are, and
    nothing else changes after loading)."""

    def __init__(
        self,
        folder: Path,
        manifest: dict[str, Any],
        networks: dict[str, _Network],
        metadata: MetadataTransform | None,
        title: TitleVectorizer | None,
        image: ImageSpec | None,
        backbone: ort.InferenceSession | None,
        max_image_pixels: int,
        tree: CategoryTree | None = None,
    ) -> None:
        self.folder = folder
        self.manifest = manifest
        self.networks = networks
        self.metadata = metadata
        self.title = title
        self.image = image
        self.backbone = backbone
        self.max_image_pixels = max_image_pixels
        self.classes: list[str] = list(manifest["classes"])
        self.modalities: list[str] = list(manifest["modalities"])
        self.fields: dict[str, Any] = manifest["fields"]
        threshold = manifest.get("review_threshold")
        self.review_threshold: float | None = None if threshold is None else float(threshold)
        self.tree = tree

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        threads: int | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        verify: bool = True,
    ) -> ExportedModel:
        """Load the folder written by ``deepfusion.export.export_model``. ``threads``: onnxruntime's
        intra-op threads per session (None: its default, one per core). With ``verify`` every file's size and
        SHA-256 are checked against the manifest first. Raises ``ExportLoadError`` for a folder that is not a
        usable export."""
        folder = Path(path)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            hint = (
                " It looks like a model folder: export it with `deepfusion export MODEL_DIR --out DIR`."
                if (folder / "config.json").is_file()
                else ""
            )
            raise ExportLoadError(f"{folder} is not an exported DeepFusion model (no {MANIFEST}).{hint}")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ExportLoadError(f"{manifest_path} cannot be read as JSON ({exc}). {REEXPORT}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
            raise ExportLoadError(f"{manifest_path} is not a DeepFusion export manifest. {REEXPORT}")
        if manifest.get("format_version") != EXPORT_VERSION:
            raise ExportLoadError(
                f"{manifest_path} has export format {manifest.get('format_version')!r}; this runtime reads format "
                f"{EXPORT_VERSION}. {REEXPORT}"
            )
        try:
            return cls._build(folder, manifest, threads, max_image_pixels, verify)
        except ExportLoadError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ExportLoadError(f"{folder} is not a usable export: {type(exc).__name__}: {exc}. {REEXPORT}") from None

    @classmethod
    def _build(
        cls, folder: Path, manifest: dict[str, Any], threads: int | None, max_image_pixels: int, verify: bool
    ) -> ExportedModel:
        files = manifest["files"]
        if not isinstance(files, dict):
            raise ExportLoadError(f"{folder / MANIFEST}: 'files' is not a mapping. {REEXPORT}")
        for name, entry in files.items():
            file = _safe_name(folder, name, "a file")
            if verify and (file.stat().st_size != entry["bytes"] or _sha256(file) != entry["sha256"]):
                raise ExportLoadError(
                    f"{file} differs from the file that was exported (size or SHA-256). Restore "
                    f"the exported folder. {REEXPORT}"
                )

        def listed(name: object, what: str) -> Path:
            if name not in files:
                raise ExportLoadError(f"{folder / MANIFEST}: {what} {name!r} is not among its files. {REEXPORT}")
            return _safe_name(folder, name, what)

        options = ort.SessionOptions()
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # the graphs are chains: parallel branches would only add contention
        # Idle worker threads sleep instead of spinning: a server also decodes images and answers requests on these
        # cores, and spinning threads took that time from them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def session(file: Path, inputs: Sequence[str]) -> ort.InferenceSession:
            sess = ort.InferenceSession(str(file), sess_options=options, providers=["CPUExecutionProvider"])
            names = [i.name for i in sess.get_inputs()]
            if sorted(names) != sorted(inputs):
                raise ExportLoadError(f"{file} takes inputs {names}, the manifest says {list(inputs)}. {REEXPORT}")
            return sess

        prep_path = listed(manifest["preprocessing"], "preprocessing")
        prep = json.loads(prep_path.read_text(encoding="utf-8"))
        if list(prep["labels"]["classes"]) != list(manifest["classes"]):
            raise ExportLoadError(f"{prep_path} and {MANIFEST} name different classes. {REEXPORT}")
        networks = {}
        modalities = manifest["modalities"]
        for key, net in manifest["networks"].items():
            if key not in NETWORKS:  # a network this runtime would not route to: its products would be mis-scored
                raise ExportLoadError(f"{folder / MANIFEST}: network {key!r} is unknown to this runtime. {REEXPORT}")
            if not set(NETWORKS[key]) <= set(modalities):
                raise ExportLoadError(
                    f"{folder / MANIFEST}: network {key} needs the {' and '.join(NETWORKS[key])} modalities, "
                    f"but the model has {'+'.join(modalities)}. {REEXPORT}"
                )
            inputs = [str(i) for i in net["inputs"]]
            networks[key] = _Network(
                session(listed(net["file"], f"network {key}"), inputs),
                inputs,
                list(net["modalities"]),
                float(net["temperature"]),
            )
            if not (math.isfinite(networks[key].temperature) and networks[key].temperature > 0):
                raise ExportLoadError(
                    f"{folder / MANIFEST}: network {key} has temperature {networks[key].temperature}. {REEXPORT}"
                )
        if "main" not in networks:
            raise ExportLoadError(f"{folder / MANIFEST} has no main network. {REEXPORT}")
        metadata = MetadataTransform(prep["metadata"]) if "metadata" in modalities else None
        title = (
            TitleVectorizer.from_state(manifest["title"]["vectorizers"], prep["title"])
            if "title" in modalities
            else None
        )
        spec = (manifest.get("title") or {}).get("sentence")
        if title is not None and spec is not None:
            title.sentence = SentenceRuntime(
                session(listed(spec["file"], "sentence model"), ["input_ids", "attention_mask"]),
                listed(spec["tokenizer"], "sentence tokenizer"),
                spec,
            )
        image = backbone = None
        if "image" in modalities:
            spec = manifest["image"]
            image = ImageSpec(
                size=(int(spec["size"][0]), int(spec["size"][1])),
                mean=np.asarray(spec["mean"], dtype=np.float32),
                std=np.asarray(spec["std"], dtype=np.float32),
                dim=int(spec["dim"]),
                feature_mean=np.asarray(prep["image"]["mean"], dtype=np.float32),
                feature_std=np.asarray(prep["image"]["std"], dtype=np.float32),
                clip=float(spec["clip"]),
            )
            backbone = session(listed(spec["file"], "backbone"), [spec["input"]])
        return cls(folder, manifest, networks, metadata, title, image, backbone, max_image_pixels,
                   _category_tree(folder, manifest))

    @property
    def needs_images(self) -> bool:
        return self.image is not None

    # ------------------------------------------------------------------ images
    def image_pixels(self, data: bytes) -> np.ndarray:
        """The backbone's input pixels for one image: decoded within the pixel budget, RGB, letterboxed to
        the backbone's size; uint8 (height, width, 3). Raises one of ``DECODE_ERRORS`` (``ImageTooLarge`` over
        the budget) for data that is not a usable image."""
        if self.image is None:
            raise ValueError("this model does not read images")
        h, w = self.image.size
        with open_image_within_budget(data, self.max_image_pixels, (w, h)) as im:
            rgb = im.convert("RGB")  # grayscale, palette and CMYK images become 3-channel RGB
        return np.asarray(letterbox(rgb, (w, h)), dtype=np.uint8)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Backbone features (n, dim) of uint8 (n, height, width, 3) pixels, rounded to float16 as the training
        cache stores them, so an image's features do not depend on which path computed them."""
        if self.image is None or self.backbone is None:
            raise ValueError("this model does not read images")
        if not len(pixels):
            return np.zeros((0, self.image.dim), dtype=np.float32)
        x = pixels.astype(np.float32) / 255.0
        x = ((x - self.image.mean) / self.image.std).transpose(0, 3, 1, 2)
        out = self.backbone.run(None, {self.manifest["image"]["input"]: np.ascontiguousarray(x)})[0]
        return out.astype(np.float16).astype(np.float32)

    def embed_images(self, images: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
        """Features (n, dim) and the mask of images that decoded, for images as bytes (None: no image). An image
        that cannot be decoded is treated as missing; all such images of a call are reported in one warning."""
        assert self.image is not None
        out = np.zeros((len(images), self.image.dim), dtype=np.float32)
        ok = np.zeros(len(images), dtype=bool)
        decoded: list[tuple[int, np.ndarray]] = []
        failures: list[str] = []
        for i, data in enumerate(images):
            if data is None:
                continue
            try:
                decoded.append((i, self.image_pixels(data)))
            except DECODE_ERRORS as exc:
                failures.append(f"image {i}: {type(exc).__name__}: {exc}")
        for start in range(0, len(decoded), IMAGE_BATCH):
            chunk = decoded[start : start + IMAGE_BATCH]
            rows = [i for i, _ in chunk]
            out[rows] = self.embed_pixels(np.stack([p for _, p in chunk]))
            ok[rows] = True
        if failures:
            log.warning(
                "%d of %d images could not be decoded and are treated as missing; first: %s",
                len(failures),
                sum(d is not None for d in images),
                failures[0],
            )
        return out, ok

    # ------------------------------------------------------------------ prediction
    def _logits(
        self,
        products: Sequence[Mapping[str, Any]],
        images: Sequence[bytes | None] | None,
        image_embeddings: tuple[np.ndarray, np.ndarray] | None,
        batch_size: int,
    ) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Ids, uncalibrated logits, each row's temperature and which modality each product had."""
        n = len(products)
        if images is not None and len(images) != n:
            raise ValueError(f"{len(images)} images for {n} products: pass one (or None) per product")
        rows = [product_fields(p, i, self.fields) for i, p in enumerate(products)]
        features: dict[str, np.ndarray] = {}
        present: dict[str, np.ndarray] = {}
        cleaned: list[str] = []
        raw_titles: list[str | None] = []
        if self.metadata is not None:
            features["metadata"] = self.metadata.transform(rows)
            present["metadata"] = np.array(
                [
                    any(v is not None for v in r.text.values()) or any(not math.isnan(v) for v in r.numbers.values())
                    for r in rows
                ],
                dtype=bool,
            ).reshape(n)
        if self.title is not None:
            raw_titles = [r.title for r in rows]
            cleaned = [clean_title(t) for t in raw_titles]
            present["title"] = np.array([bool(t) for t in cleaned], dtype=bool).reshape(n)
        if self.image is not None:
            if image_embeddings is not None:
                emb, ok = np.asarray(image_embeddings[0], dtype=np.float32), np.asarray(image_embeddings[1], bool)
                if emb.shape != (n, self.image.dim) or ok.shape != (n,):
                    raise ValueError(f"image_embeddings must be ({n}, {self.image.dim}) features and ({n},) flags")
            else:
                emb, ok = self.embed_images(images if images is not None else [None] * n)
            scaled = (emb - self.image.feature_mean) / self.image.feature_std
            features["image"] = np.clip(scaled, -self.image.clip, self.image.clip).astype(np.float32)
            present["image"] = ok
        logits = np.zeros((n, len(self.classes)), dtype=np.float32)
        temperature = np.zeros(n, dtype=np.float64)
        for key, which in self._routes(present, n).items():
            net = self.networks[key]
            for start in range(0, len(which), batch_size):
                chunk = which[start : start + batch_size]
                feed = self._feed(net, chunk, features, present, cleaned, raw_titles)
                logits[chunk] = net.session.run(["logits"], feed)[0]
                temperature[chunk] = net.temperature
        return [r.id for r in rows], logits, temperature, {m: present[m] for m in self.modalities}

    def _routes(self, present: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """Which rows each network scores, as Predictor._logits routes them: a product without a title goes to the
        no-title network, one with a title but no attribute at all to the no-metadata route (each when the
        model has it), every other product to the main network."""
        network = np.full(n, "main", dtype=object)
        if "fallback" in self.networks:
            network[~present["title"]] = "fallback"
        if "no_metadata" in self.networks:
            network[present["title"] & ~present["metadata"]] = "no_metadata"
        return {key: np.flatnonzero(network == key) for key in self.networks if (network == key).any()}

    def _feed(
        self,
        net: _Network,
        rows: np.ndarray,
        features: dict[str, np.ndarray],
        present: dict[str, np.ndarray],
        cleaned: list[str],
        raw_titles: list[str | None],
    ) -> dict[str, np.ndarray]:
        feed: dict[str, np.ndarray] = {}
        for name in net.inputs:
            if name.startswith("present_"):
                feed[name] = present[name.removeprefix("present_")][rows]
            elif name in ("title_indices", "title_values"):
                continue
            else:
                feed[name] = features[name][rows]
        if "title_indices" in net.inputs:
            assert self.title is not None
            title_rows = self.title.rows([cleaned[i] for i in rows], [raw_titles[i] for i in rows])
            feed["title_indices"], feed["title_values"] = self.title.padded(title_rows)
        return feed

    def predict_proba(
        self,
        products: Sequence[Mapping[str, Any]],
        images: Sequence[bytes | None] | None = None,
        *,
        image_embeddings: tuple[np.ndarray, np.ndarray] | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> np.ndarray:
        """Calibrated class probabilities (n, classes), columns in ``classes`` order."""
        _, logits, temperature, _ = self._logits(products, images, image_embeddings, batch_size)
        return _softmax(logits / temperature[:, None])

    def predict(
        self,
        products: Sequence[Mapping[str, Any]],
        images: Sequence[bytes | None] | None = None,
        *,
        top_k: int = 3,
        image_embeddings: tuple[np.ndarray, np.ndarray] | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> list[dict[str, Any]]:
        """One dict per product: ``id``, ``prediction``, ``confidence`` (calibrated), ``top_k`` (a list of
        ``{"label", "confidence"}``, best first), ``inputs`` (the inputs the prediction used, "title+image";
        "none" for an empty product), when the export has a review threshold, ``needs_review``, and for a
        category-tree label ``levels``: per level ``{"level", "prediction", "confidence"}`` (the predicted path's
        node there and its probability, the paths under it summed; None below a shorter path). ``prediction`` is
        then the path the model's decoding chooses (``CategoryTree.choose``), not always the top-1 class.

        ``products``: dicts of catalog columns (every field optional; unknown keys are ignored). ``images``: per
        product the photo's bytes or None; an image that cannot be decoded counts as missing. Callers that embed
        images themselves (``image_pixels`` + ``embed_pixels``) pass ``image_embeddings=(features, decoded)``
        instead. All products go through each network in batches of ``batch_size``."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        ids, logits, temperature, present = self._logits(products, images, image_embeddings, batch_size)
        proba = _softmax(logits / temperature[:, None])
        k = min(top_k, len(self.classes))
        top = np.argsort(-proba, axis=1, kind="stable")[:, :k]
        chosen = self.tree.choose(proba) if self.tree is not None else top[:, 0]
        levels = self.tree.level_answers(proba, chosen) if self.tree is not None else []
        out = []
        for i, pid in enumerate(ids):
            ranked = [{"label": self.classes[j], "confidence": float(proba[i, j])} for j in top[i]]
            row: dict[str, Any] = {
                "id": pid,
                "prediction": self.classes[chosen[i]],
                "confidence": float(proba[i, chosen[i]]),
                "top_k": ranked,
                "inputs": "+".join(m for m in self.modalities if present[m][i]) or "none",
            }
            if self.review_threshold is not None:
                row["needs_review"] = row["confidence"] < self.review_threshold
            if self.tree is not None:
                # A path that ends above a level has no answer there: None (JSON has no NaN).
                row["levels"] = [
                    {"level": name, "prediction": values[i],
                     "confidence": None if values[i] is None else float(confidence[i])}
                    for name, (values, confidence) in zip(self.tree.levels, levels, strict=True)
                ]
            out.append(row)
        return out

    def predict_frame(self, frame: pd.DataFrame, *, top_k: int = 3, image_column: str | None = None) -> pd.DataFrame:
        """``predict`` for a pandas DataFrame (pandas must be installed), in ``Predictor.predict_frame``'s
        columns: id, prediction, confidence, for a tree label prediction_<level> and confidence_<level> per level,
        needs_review (with a review threshold), inputs, top1_label, top1_confidence, ... Images are read from the
        paths in ``image_column`` (default ``image_path``); a missing or unreadable file counts as a missing
        image."""
        import pandas as pd

        records = frame.astype(object).where(frame.notna(), None).to_dict("records")
        images = None
        column = image_column or "image_path"
        if self.needs_images and column in frame.columns:
            images = [_read_image_file(r.get(column)) for r in records]
        rows = self.predict(records, images, top_k=top_k)
        table: dict[str, list[Any]] = {
            "id": [r["id"] for r in rows],
            "prediction": [r["prediction"] for r in rows],
            "confidence": [r["confidence"] for r in rows],
            **self.level_columns(rows),
        }
        if self.review_threshold is not None:
            table["needs_review"] = [r["needs_review"] for r in rows]
        table["inputs"] = [r["inputs"] for r in rows]
        for j in range(min(top_k, len(self.classes))):
            table[f"top{j + 1}_label"] = [r["top_k"][j]["label"] for r in rows]
            table[f"top{j + 1}_confidence"] = [r["top_k"][j]["confidence"] for r in rows]
        return pd.DataFrame(table)


    def level_columns(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
        """``Predictor.level_columns`` from ``predict``'s rows: per level of a tree label ``prediction_<level>``
        (None where the path ends above it) and ``confidence_<level>`` (NaN there); nothing for a flat label."""
        out: dict[str, list[Any]] = {}
        for k, name in enumerate(self.tree.levels if self.tree is not None else []):
            out[f"prediction_{name}"] = [r["levels"][k]["prediction"] for r in rows]
            out[f"confidence_{name}"] = [
                math.nan if r["levels"][k]["confidence"] is None else r["levels"][k]["confidence"] for r in rows
            ]
        return out


def _read_image_file(path: object) -> bytes | None:
    if not isinstance(path, str | Path) or not str(path):
        return None
    try:
        file = Path(path)
        if file.stat().st_size > MAX_IMAGE_BYTES:  # no product photo comes near; do not read it whole
            log.warning("image %s is over %s bytes; treated as missing", file, f"{MAX_IMAGE_BYTES:,}")
            return None
        return file.read_bytes()
    except OSError as exc:
        log.warning("cannot read image %s (%s); treated as missing", path, exc)
        return None


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
