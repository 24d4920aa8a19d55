"""The input side of a model: how products become the networks' inputs, and the variants training adds.

``Predictor._encode`` turns a DataFrame of products into a ``training.ModalityData`` (one array per input plus a
"present" flag per product) with the fitted encoders (features.py); this module holds the pieces around it:

* image features: standardised with the training images' statistics and clipped (``image_scaling``,
  ``scale_image``);
* stacking: what the stacked SVM reads (``stacking_features``: the title's TF-IDF beside the metadata encoding);
* training rows: blanked copies of each product (``with_blanked_copies``, missing.py) and augmented image views
  (``with_augmented_views``);
* the inputs of the models that answer for partial products: without the title (``without_title``), without
  metadata (``no_metadata_view``);
* ``inputs_used``: per product, the inputs it had ("title+image"), as predictions report them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .missing import FieldBlanking, blanked_copies
from .training import ModalityData

IMAGE_CLIP = 8.0  # standardised image features are clipped, so one odd image cannot blow up the head


def image_scaling(train_embeddings: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of training embeddings. Pooled ReLU6 features are often (almost) constant
    on a small catalog; their std is floored at a tenth of the median std so they are not blown up."""
    if len(train_embeddings) == 0:
        return np.zeros(dim, np.float32), np.ones(dim, np.float32)
    if hasattr(train_embeddings, "mean_std"):  # embeddings.EmbeddingRows: the same figures, read chunk by chunk
        mean, std = train_embeddings.mean_std()
    else:
        mean, std = train_embeddings.mean(axis=0), train_embeddings.std(axis=0)
    floor = max(float(np.median(std)) * 0.1, 1e-3)
    return mean.astype(np.float32), np.maximum(std, floor).astype(np.float32)


def scale_image(emb: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return np.clip((emb - mean) / std, -IMAGE_CLIP, IMAGE_CLIP).astype(np.float32)


def stacking_features(title: sp.csr_matrix, metadata: np.ndarray | None) -> sp.csr_matrix:
    """What the stacked SVM reads: the title's TF-IDF and, when the model has it, the metadata encoding."""
    parts = [title] if metadata is None else [title, sp.csr_matrix(metadata, dtype=np.float32)]
    return sp.hstack(parts, format="csr", dtype=np.float32)


def with_blanked_copies(
    products: pd.DataFrame,
    *,
    share: float,
    fields: Sequence[str],
    seed: int,
    allow_all: bool,
) -> tuple[np.ndarray, pd.DataFrame]:
    """``products`` followed by their blanked copies (``share`` copies per product, missing.py; 0: none), and for
    every row the position of the product it is. ``allow_all``: a copy may lose every field (when no other
    network answers for products without attributes)."""
    rows = np.zeros(0, dtype=np.int64)
    copies = products.iloc[:0]
    if share > 0 and fields:
        rows, copies = blanked_copies(
            products, FieldBlanking(share=share), seed, allow_all=allow_all, fields=tuple(fields)
        )
    source = np.concatenate([np.arange(len(products)), rows])
    return source, pd.concat([products, copies], ignore_index=True)


def with_augmented_views(
    data: ModalityData, y: np.ndarray, source: np.ndarray, n_products: int, views: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[ModalityData, np.ndarray]:
    """``data`` followed by one copy per augmented image view (scaled embeddings and decode flags of the
    ``n_products`` training products, in ``views``), each copy with that view's image; row i of ``data`` is
    product ``source[i]``. The backbone is frozen, so augmentation happens on cached embeddings of augmented
    images."""
    feats = {k: [v] for k, v in data.features.items()}
    present = {k: [v] for k, v in data.present.items()}
    for emb, ok in views:
        emb, ok = emb[source], ok[source]
        for k in feats:
            feats[k].append(emb.astype(np.float32) if k == "image" else data.features[k])
            present[k].append(ok & data.present["image"] if k == "image" else data.present[k])
    stacked = {k: sp.vstack(v, format="csr") if sp.issparse(v[0]) else np.concatenate(v) for k, v in feats.items()}
    # Each view is a product of its own (as before blanked copies existed): the epoch grows by one set per view.
    product = np.concatenate([source + view * n_products for view in range(len(views) + 1)])
    out = ModalityData(stacked, {k: np.concatenate(v) for k, v in present.items()}, data.follows, product)
    return out, np.tile(y, len(views) + 1)


def without_title(data: ModalityData, rows: np.ndarray | None = None) -> ModalityData:
    """The no-title network's inputs: everything but the title and what follows it (the stacked SVM scores),
    optionally only ``rows``."""
    keep = [k for k in data.features if k != "title" and data.follows.get(k) != "title"]
    pick = (lambda a: a) if rows is None else (lambda a: a[rows])
    product = None if data.product is None else pick(data.product)
    features, present = {k: pick(data.features[k]) for k in keep}, {k: pick(data.present[k]) for k in keep}
    return ModalityData(features, present, {}, product)


def no_metadata_view(
    data: ModalityData, rows: np.ndarray, modalities: Sequence[str], scores: np.ndarray
) -> ModalityData:
    """The no-metadata route's inputs for ``rows`` of ``data``: its ``modalities`` (title, and image if the model
    has one) and the title-only SVM's ``scores`` for those rows."""
    names = [m for m in modalities if m in data.features]
    # The first rows in order (training: the products before their blanked copies) are a slice: views of the
    # image features instead of a copy of them.
    pick: np.ndarray | slice = slice(0, len(rows)) if np.array_equal(rows, np.arange(len(rows))) else rows
    features = {m: _first_rows(data.features[m], len(rows)) if isinstance(pick, slice) else data.features[m][pick]
                for m in names}
    present = {m: data.present[m][pick] for m in names}
    features["text_scores"] = scores
    present["text_scores"] = present["title"].copy()
    return ModalityData(features, present, {"text_scores": "title"})


def _first_rows(feats: np.ndarray | sp.csr_matrix, n: int) -> np.ndarray | sp.csr_matrix:
    """The first ``n`` rows of ``feats`` without copying them: a slice of a dense array or of what the rows are made
    of in a CSR matrix (scipy's row slicing copies them)."""
    if not (sp.issparse(feats) and feats.format == "csr"):
        return feats[:n]
    end = feats.indptr[n]
    out = sp.csr_matrix((n, feats.shape[1]), dtype=feats.dtype)
    # Set, not passed to the constructor: its check copies a slice that is less than half of the array it views.
    out.data, out.indices, out.indptr = feats.data[:end], feats.indices[:end], feats.indptr[: n + 1]
    return out


def inputs_used(present: dict[str, np.ndarray], n: int) -> list[str]:
    """Per product, the inputs it had, joined by '+' in modality order ("none" when it had none)."""
    names = list(present)
    return ["+".join(m for m in names if present[m][i]) or "none" for i in range(n)]
