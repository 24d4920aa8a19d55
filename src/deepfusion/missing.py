"""Missing inputs as catalogs leave them: empty fields, one by one.

A new product often arrives with a title and a photo and its attributes not filled in yet, or with some of them.
The models learn to expect that from *blanked copies* of training products (each copy has some or all of its
metadata fields emptied, the way a catalog leaves them empty), and every measurement of a missing input blanks the
fields in the data itself, so it sees exactly what ``predict`` and the service see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .catalog import CATEGORICAL, NUMERIC, TITLE

METADATA_FIELDS = (*CATEGORICAL, *NUMERIC)
# The columns that carry each modality in a products frame (the metadata's: the fashion schema's, unless a model
# names its own).
MODALITY_COLUMNS: dict[str, tuple[str, ...]] = {
    "metadata": METADATA_FIELDS,
    "title": (TITLE,),
    "image": ("image_path",),
}


@dataclass(frozen=True)
class FieldBlanking:
    """How training blanks metadata fields in its copies of the training products.

    ``share``: blanked copies per training product (0 turns blanking off, 1 adds one copy of every product);
    ``p_all``: chance that a copy has every metadata field empty (the modality absent, as for a product whose
    attributes are not filled in yet); otherwise each field is emptied with chance ``p_field``.
    """

    share: float = 1.0
    p_all: float = 0.4
    p_field: float = 0.3

    def to_json(self) -> dict[str, float]:
        return {"share": self.share, "p_all": self.p_all, "p_field": self.p_field}


def blank_fields(
    products: pd.DataFrame,
    rng: np.random.Generator,
    *,
    p_field: float,
    p_all: float = 0.0,
    fields: Sequence[str] = METADATA_FIELDS,
) -> pd.DataFrame:
    """A copy of ``products`` with metadata fields emptied at random: every field of a row with chance ``p_all``,
    else each field on its own with chance ``p_field``."""
    out = products.copy()
    fields = [f for f in fields if f in out.columns]
    if not len(out) or not fields:
        return out
    whole = rng.random(len(out)) < p_all
    for f in fields:
        blank = whole | (rng.random(len(out)) < p_field)
        if blank.any():
            out[f] = out[f].astype(object)
            out.loc[blank, f] = None
    return out


def without_modalities(
    products: pd.DataFrame, absent: Sequence[str], metadata_fields: Sequence[str] = METADATA_FIELDS
) -> pd.DataFrame:
    """``products`` with the columns of the ``absent`` modalities emptied, as a product without them arrives
    (``metadata_fields``: the model's attribute columns)."""
    out = products.copy()
    columns = {**MODALITY_COLUMNS, "metadata": tuple(metadata_fields)}
    for modality in absent:
        for col in columns[modality]:
            if col in out.columns:
                out[col] = None
    return out


def blanked_copies(
    products: pd.DataFrame,
    blanking: FieldBlanking,
    seed: int,
    *,
    allow_all: bool = True,
    fields: Sequence[str] = METADATA_FIELDS,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Training's blanked copies: the row positions copied (``share`` copies per product on average) and the copies
    themselves, reproducible from ``seed``. ``allow_all`` is False for a metadata-only model, where a copy with every
    field empty teaches nothing."""
    if blanking.share <= 0 or not len(products):
        return np.zeros(0, dtype=np.int64), products.iloc[:0].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    whole, rest = divmod(blanking.share, 1.0)
    picks = [np.arange(len(products))] * int(whole)
    if rest > 0:
        picks.append(np.sort(rng.choice(len(products), size=round(rest * len(products)), replace=False)))
    rows = np.concatenate(picks)
    copies = blank_fields(
        products.iloc[rows].reset_index(drop=True),
        rng,
        p_field=blanking.p_field,
        p_all=blanking.p_all if allow_all else 0.0,
        fields=fields,
    )
    return rows, copies
