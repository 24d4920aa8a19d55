"""Catalog audit: planted label errors rank first with the right suggestion, hierarchy breaks are flagged."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CLASSES, draw_product, make_catalog

from deepfusion.audit import audit_catalog, hierarchy_breaks, plan_folds
from deepfusion.catalog import load_catalog

SMALL = (64, 48)
N_PER_CLASS = 20  # ids 1001-1020 Tshirts, 1021-1040 Jeans, 1041-1060 Heels, 1061-1080 Watches
# id -> (true label, the wrong label written into styles.csv).
FLIPS = {"1003": ("Tshirts", "Jeans"), "1043": ("Heels", "Watches"), "1065": ("Watches", "Tshirts")}
BREAK_ID = "1046"  # a Heels product moved under subCategory "Sandal"


def plant_errors(catalog_dir: Path) -> None:
    """Flip the labels in FLIPS and move BREAK_ID under another subCategory. Also redraw each class's first
    picture in colour: make_catalog draws it in greyscale, and a grey picture is genuinely ambiguous to a tiny
    image model (the only other grey pictures it sees belong to other classes), which is not what this tests."""
    rng = random.Random(0)
    for k, article in enumerate(CLASSES):
        pid = 1001 + k * N_PER_CLASS
        draw_product(article, rng, "RGB", mark=pid).save(catalog_dir / "images" / f"{pid}.jpg", quality=90)
    styles = catalog_dir / "styles.csv"
    lines = styles.read_text().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        fields = line.split(",")
        if fields[0] in FLIPS:
            true, wrong = FLIPS[fields[0]]
            assert fields[4] == true
            fields[4] = wrong
        if fields[0] == BREAK_ID:
            assert fields[3] == "Shoes"
            fields[3] = "Sandal"
        out.append(",".join(fields))
    styles.write_text("\n".join(out) + "\n")


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """One audit run shared by the tests below (the expensive part: 5 folds x one fusion model)."""
    root = tmp_path_factory.mktemp("audit")
    data = make_catalog(root / "catalog", n_per_class=N_PER_CLASS, messy=False, seed=1)
    plant_errors(data)
    out = root / "out"
    queue = audit_catalog(
        data,
        out,
        folds=5,
        seed=0,
        preset="small",
        progress=False,
        image_size=SMALL,
        cache_dir=root / "cache",
        epochs=60,
        modality_dropout=0.2,
    )
    return out, queue


def test_flipped_labels_rank_first_with_the_true_label_suggested(audited: tuple[Path, pd.DataFrame]) -> None:
    out, queue = audited
    csv = pd.read_csv(out / "audit.csv", dtype={"id": str})
    assert list(csv.columns[:6]) == ["rank", "id", "current_label", "suggested_label", "confidence", "reason"]
    assert list(csv["id"]) == list(queue["id"].astype(str))
    top = csv.head(len(FLIPS)).set_index("id")
    assert set(top.index) == set(FLIPS)
    for pid, (true, wrong) in FLIPS.items():
        row = top.loc[pid]
        assert row["current_label"] == wrong and row["suggested_label"] == true
        assert "label" in row["issue"]
        assert f"sure this is {true}, labelled {wrong}" in row["reason"]
        assert row["confidence"] > 0.5
    assert (csv["rank"] == np.arange(1, len(csv) + 1)).all()
    assert csv["score"].is_monotonic_decreasing


def test_hierarchy_break_is_flagged(audited: tuple[Path, pd.DataFrame]) -> None:
    out, _ = audited
    csv = pd.read_csv(out / "audit.csv", dtype={"id": str}).set_index("id")
    row = csv.loc[BREAK_ID]
    assert "hierarchy" in row["issue"]
    assert row["current_label"] == "Heels" and row["suggested_label"] == "Heels"  # the label itself is fine
    assert "articleType Heels under subCategory Sandal (usually Shoes)" in row["reason"]
    assert row["expected_subCategory"] == "Shoes"
    # The flipped products also sit under an unusual subCategory for their (wrong) label: both signals.
    assert all(csv.loc[pid, "issue"] == "label+hierarchy" for pid in FLIPS)


def test_review_page_and_summary(audited: tuple[Path, pd.DataFrame]) -> None:
    out, queue = audited
    page = (out / "audit.html").read_text()
    assert page.count('class="item"') == min(len(queue), 200)
    assert page.count("data:image/jpeg;base64,") >= len(queue)  # every queued product here has a picture
    assert "<script src" not in page and "http" not in page.replace("http://www.w3.org", "")  # self-contained
    positions = [page.index(f"id {pid} ") for pid in queue["id"]]
    assert positions == sorted(positions)  # cards in ranking order
    summary = json.loads((out / "audit.json").read_text())
    assert summary["folds"] == 5 and len(summary["fold_stats"]) == 5
    assert summary["judged_products"] == 4 * N_PER_CLASS and summary["not_judged_classes"] == []
    assert summary["cleanlab_version"]
    assert (out / "rejects.csv").is_file()


def test_folds_keep_duplicates_together_and_rare_classes_in_training(tmp_path: Path) -> None:
    data = make_catalog(tmp_path / "c", n_per_class=12, messy=False, seed=2)
    styles = data / "styles.csv"
    text = styles.read_text()
    # A copy of product 1001 under another id (same title and attributes) and a class with only two products.
    row = next(line for line in text.splitlines() if line.startswith("1001,"))
    extra = [
        row.replace("1001,", "9001,", 1),
        "9002,Men,Accessories,Eyewear,Sunglasses,Black,Summer,2012,Casual,Fastrack Men Sunglasses",
        "9003,Men,Accessories,Eyewear,Sunglasses,Brown,Summer,2012,Casual,Ray-Ban Men Sunglasses",
    ]
    styles.write_text(text + "\n".join(extra) + "\n")
    products = load_catalog(data, progress=False).products.sort_values("id").reset_index(drop=True)
    plan = plan_folds(products, folds=4, seed=0, min_class_groups=5)
    fold = pd.Series(plan.fold, index=products["id"])
    judged = pd.Series(plan.judged, index=products["id"])
    assert fold["1001"] == fold["9001"] >= 0
    assert plan.rare_classes == ["Sunglasses"]
    assert fold["9002"] == fold["9003"] == -1 and not judged["9002"]
    assert judged.sum() == len(products) - 2


def test_hierarchy_ignores_articletypes_genuinely_split() -> None:
    rows = [("Eyeshadow", "Personal Care", "Makeup")] * 7 + [("Eyeshadow", "Personal Care", "Eyes")] * 3
    rows += [("Belts", "Accessories", "Belts")] * 30 + [("Belts", "Apparel", "Topwear")]
    products = pd.DataFrame(rows, columns=["articleType", "masterCategory", "subCategory"])
    breaks = hierarchy_breaks(products, max_share=0.1)
    assert list(breaks.index) == [40]
    assert breaks.loc[40, "reason"].startswith(
        "articleType Belts under subCategory Topwear (usually Belts) and masterCategory Apparel (usually Accessories)"
    )


def test_classes_too_rare_to_judge_leave_the_hierarchy_check(tmp_path: Path) -> None:
    data = make_catalog(tmp_path / "c", n_per_class=12, messy=False, seed=3)
    styles = data / "styles.csv"
    styles.write_text(styles.read_text().replace("1002,Men,Apparel,Topwear", "1002,Men,Apparel,Bottomwear"))
    queue = audit_catalog(data, tmp_path / "out", folds=3, progress=False, min_class_groups=20)
    assert list(queue["id"]) == ["1002"] and queue.loc[0, "issue"] == "hierarchy"
    assert "too rare for the model to judge" in queue.loc[0, "reason"]
    summary = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert summary["judged_products"] == 0 and len(summary["not_judged_classes"]) == 4
    assert summary["fold_stats"] == [] and summary["out_of_fold_accuracy"] is None
    assert 'class="item"' in (tmp_path / "out" / "audit.html").read_text()
