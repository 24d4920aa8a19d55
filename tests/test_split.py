from __future__ import annotations

import numpy as np
import pandas as pd

from deepfusion import split_by_duplicate_groups
from deepfusion.split import duplicate_groups


def products(n_per_class: int = 40, classes: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(classes):
        for i in range(n_per_class):
            rows.append(
                {
                    "id": f"{c}-{i}",
                    "articleType": f"class{c}",
                    "productDisplayName": f"title {c} {i}",
                    "gender": "Men",
                    "masterCategory": "Apparel",
                    "subCategory": "Topwear",
                    "baseColour": "Blue",
                    "season": "Summer",
                    "usage": "Casual",
                    "image_sha1": f"sha-{c}-{i}",
                }
            )
    frame = pd.DataFrame(rows)
    # Same photo under three ids, and the same title + attributes under two ids.
    frame.loc[[0, 1, 2], "image_sha1"] = "shared-photo"
    frame.loc[[40, 41], "productDisplayName"] = "Same Title"
    frame.loc[5, "image_sha1"] = None  # a product without an image
    # A class too small to appear in all three splits.
    frame = pd.concat(
        [
            frame,
            pd.DataFrame(
                [
                    {
                        **rows[0],
                        "id": "tiny-1",
                        "articleType": "tiny",
                        "image_sha1": "t1",
                        "productDisplayName": "tiny one",
                    }
                ]
            ),
        ]
    )
    return frame.sample(frac=1, random_state=int(rng.integers(1000))).reset_index(drop=True)


def test_duplicates_form_groups() -> None:
    frame = products()
    groups = pd.Series(duplicate_groups(frame), index=frame["id"])
    assert groups["0-0"] == groups["0-1"] == groups["0-2"]
    assert groups["1-0"] == groups["1-1"]
    assert groups["0-3"] != groups["0-4"]


def test_placeholder_and_broken_images_tie_no_products_together() -> None:
    """One "no photo yet" file behind 60 products of every class is no duplicate: grouping by it would send all of
    them to one split. Nor are byte-identical files that do not decode."""
    frame = products()
    frame["image_status"] = "ok"
    placeholder = frame.index[frame["id"].str.endswith(("-1", "-2", "-3", "-4", "-5", "-6", "-7", "-8", "-9", "-10"))]
    frame.loc[placeholder, "image_sha1"] = "placeholder"
    broken = frame.index[frame["id"].str.endswith(("-20", "-21", "-22"))]
    frame.loc[broken, ["image_sha1", "image_status"]] = ["same-broken-bytes", "corrupt"]
    groups = pd.Series(duplicate_groups(frame), index=frame["id"])
    assert groups[frame.loc[placeholder, "id"]].nunique() == len(placeholder) > 60
    assert groups[frame.loc[broken, "id"]].nunique() == len(broken)
    assignment = split_by_duplicate_groups(frame, seed=0).assignment
    share = assignment[frame.loc[placeholder, "id"]].value_counts(normalize=True)
    assert share["train"] > 0.5 and share.get("test", 0) < 0.3  # spread as the catalog is, not all in one split


def test_split_keeps_duplicate_groups_together_and_is_deterministic() -> None:
    frame = products()
    a = split_by_duplicate_groups(frame, seed=7)
    b = split_by_duplicate_groups(frame.sample(frac=1, random_state=3), seed=7)
    assert a.assignment.sort_index().equals(b.assignment.sort_index())
    assert len(set(a.assignment[["0-0", "0-1", "0-2"]])) == 1
    assert len(set(a.assignment[["1-0", "1-1"]])) == 1
    sizes = a.report()["sizes"]
    assert sum(sizes.values()) == len(frame)
    assert 0.05 < sizes["test"] / len(frame) < 0.2 and 0.05 < sizes["val"] / len(frame) < 0.2
    # Stratified: every regular class is in every split.
    joined = frame.set_index("id").join(a.assignment)
    for _, part in joined.groupby("split"):
        assert set(part["articleType"]) >= {f"class{c}" for c in range(6)}


def test_small_classes_go_to_train_and_are_reported() -> None:
    split = split_by_duplicate_groups(products(), seed=1)
    assert split.assignment["tiny-1"] == "train"
    assert split.report()["train_only_classes"] == ["tiny"]


def test_different_seeds_give_different_splits() -> None:
    frame = products()
    assert not split_by_duplicate_groups(frame, seed=1).assignment.equals(
        split_by_duplicate_groups(frame, seed=2).assignment
    )
