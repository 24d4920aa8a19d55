"""Leakage-safe, reproducible train/validation/test split.

Products that are the same item (a byte-identical image, or the same title and attributes under another id)
form one duplicate group, and a group never straddles two splits: otherwise the test set would contain
products the model has effectively seen. An image file shared by more than ``PLACEHOLDER_PRODUCTS`` products is a
placeholder ("no photo yet"), not a photo of one item, and a file that does not decode shows no item at all: neither
ties products together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from .catalog import CATEGORICAL, ID, TARGET, TITLE
from .taxonomy import JOIN

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# The same item is listed a few times at most (4 in the fashion catalog); a file behind more products than this is a
# placeholder, and grouping by it would send every product that lacks a real photo to one split.
PLACEHOLDER_PRODUCTS = 10


def duplicate_groups(products: pd.DataFrame) -> np.ndarray:
    """Group id per product: connected components over shared image hash or shared title+attributes."""
    n = len(products)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union_by(keys: pd.Series) -> None:
        # keys has a RangeIndex, so group labels are row positions.
        valid = keys[keys.notna()]
        for idx in valid.groupby(valid).groups.values():
            root = find(idx[0])
            for j in idx[1:]:
                parent[find(j)] = root

    frame = products.reset_index(drop=True)
    if "image_sha1" in frame.columns:
        images = frame["image_sha1"].astype(object)
        if "image_status" in frame.columns:
            images = images.where(frame["image_status"] == "ok")
        counts = images.map(images.value_counts())
        placeholders = images[counts > PLACEHOLDER_PRODUCTS]
        if len(placeholders):
            log.warning(
                "%d products share %d image file(s), each behind more than %d products (placeholders): not grouped "
                "by image",
                len(placeholders), placeholders.nunique(), PLACEHOLDER_PRODUCTS,
            )
        union_by(images.where(counts <= PLACEHOLDER_PRODUCTS))
    if TITLE in frame.columns:
        union_by(same_item_key(frame))
    return np.array([find(i) for i in range(n)])


def same_item_key(products: pd.DataFrame) -> pd.Series:
    """Lower-cased title plus every categorical attribute: products sharing it are the same item listed twice.
    Missing (NA) where the title is missing or empty."""
    title = products[TITLE].astype("string").str.lower().str.strip()
    attrs = products[[c for c in CATEGORICAL if c in products.columns]].astype("string").fillna("")
    key = title.str.cat([attrs[c] for c in attrs.columns], sep="|")
    return key.where(title.notna() & (title != ""))


@dataclass
class Split:
    """Which split each product is in, plus what was decided about classes too small to stratify."""

    assignment: pd.Series  # index: product id, values: train | val | test
    seed: int
    n_groups: int
    n_grouped_products: int
    train_only_classes: list[str] = field(default_factory=list)

    def ids(self, name: str) -> pd.Index:
        return self.assignment.index[self.assignment == name]

    def to_frame(self) -> pd.DataFrame:
        return self.assignment.rename("split").rename_axis(ID).reset_index()

    def report(self) -> dict:
        counts = self.assignment.value_counts()
        return {
            "seed": self.seed,
            "sizes": {s: int(counts.get(s, 0)) for s in SPLITS},
            "duplicate_groups": self.n_groups,
            "products_in_multi_product_groups": self.n_grouped_products,
            "train_only_classes": self.train_only_classes,
        }


def split_by_duplicate_groups(
    products: pd.DataFrame,
    *,
    seed: int = 42,
    test_fraction: float = 0.1,
    val_fraction: float = 0.1,
    min_groups_per_class: int = 3,
) -> Split:
    """Stratified (by target) group split; deterministic for a seed.

    Classes with fewer than ``min_groups_per_class`` distinct duplicate groups cannot appear in all three
    splits; they go wholly to train (so the model can still learn them) and are listed in the report.
    """
    if not 0 < test_fraction < 0.5 or not 0 < val_fraction < 0.5:
        raise ValueError("test_fraction and val_fraction must be between 0 and 0.5")
    # Sorting by id makes the split depend on the products, not on the order of the rows in the file.
    frame = products.sort_values(ID, kind="stable").reset_index(drop=True)
    groups = duplicate_groups(frame)
    y = frame[TARGET].astype(str).to_numpy()
    # A group's class is its most common label; groups rarely mix labels, and when they do they still stay whole.
    group_label = pd.Series(y).groupby(groups).agg(lambda s: s.value_counts().index[0])
    groups_per_class = group_label.value_counts()
    small = sorted(groups_per_class.index[groups_per_class < min_groups_per_class])
    assignment = np.full(len(frame), "train", dtype=object)
    eligible = ~pd.Series(groups).map(group_label).isin(small).to_numpy()

    n_folds = max(3, round(1 / test_fraction))
    sgkf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    idx = np.flatnonzero(eligible)
    folds = np.empty(len(idx), dtype=int)
    for k, (_, fold_idx) in enumerate(sgkf.split(idx, y[idx], groups[idx])):
        folds[fold_idx] = k
    n_val_folds = max(1, round(val_fraction / (1 / n_folds)))
    assignment[idx[folds == 0]] = "test"
    assignment[idx[(folds >= 1) & (folds <= n_val_folds)]] = "val"

    sizes = pd.Series(groups).value_counts()
    split = Split(
        assignment=pd.Series(assignment, index=frame[ID].to_numpy(), name="split"),
        seed=seed,
        n_groups=int(len(sizes)),
        n_grouped_products=int(sizes[sizes > 1].sum()),
        # Label columns' paths are joined with an invisible character (taxonomy.JOIN): shown as ' > ' paths.
        train_only_classes=[c.replace(JOIN, " > ") for c in small],
    )
    if small:
        log.info(
            "%d classes have fewer than %d distinct products and are kept in train only: %s",
            len(small),
            min_groups_per_class,
            ", ".join(split.train_only_classes),
        )
    log.info("split sizes %s", split.report()["sizes"])
    return split
