"""hierarchy.py: one definition of a hierarchy break, and the EDA and the audit finding the same products with it."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
from conftest import make_catalog

from deepfusion import hierarchy, taxonomy
from deepfusion.audit import hierarchy_breaks
from deepfusion.catalog import load_catalog
from deepfusion.eda import build_eda
from deepfusion.hierarchy import Hierarchy, breaks_frame, catalog_hierarchy, tree_breaks


def rows_of(paths: list[tuple[str, ...]]) -> list[int]:
    return [b["row"] for b in tree_breaks(paths)]


def test_a_product_away_from_a_clear_home_is_a_break_a_split_is_not() -> None:
    paths = [("Apparel", "Topwear", "Tshirts")] * 19 + [("Apparel", "Bottomwear", "Tshirts")]  # 1 of 20: a break
    paths += [("Beauty", "Eyes", "Kajal")] * 7 + [("Beauty", "Makeup", "Kajal")] * 3  # 70 / 30: a choice
    # A generic name under many parents, each a small share: no home, so no break (a toy catalog's brand > Toys).
    paths += [("Brands", brand, "Toys") for brand in ("Disney", "Lego", "Marvel") for _ in range(8)]
    paths += [("Brands", "Pixar", "Toys")]
    assert rows_of(paths) == [19]
    brk = tree_breaks(paths)[0]
    assert (brk["level"], brk["node"], brk["parent"], brk["usual_parent"]) == (3, "Tshirts", "Apparel > Bottomwear",
                                                                                "Apparel > Topwear")
    assert (brk["n_usual"], brk["n_node"]) == (19, 20)
    # The home holds "at least 90%": nine of ten is a home and the tenth product a break; eight of nine is not.
    assert rows_of([("A", "x")] * 9 + [("B", "x")]) == [9]
    assert rows_of([("A", "x")] * 8 + [("B", "x")]) == []
    # Two stray products under two other parents: each is a break while the home keeps 90%.
    assert rows_of([("A", "x")] * 18 + [("B", "x"), ("C", "x")]) == [18, 19]
    assert rows_of([("A", "x")] * 17 + [("B", "x"), ("C", "x"), ("D", "x")]) == []


def test_a_path_breaks_once_at_its_shallowest_misplaced_level() -> None:
    # Socks filed under Apparel instead of Accessories: the subCategory is misplaced, and so the articleType below
    # it is too, but the product is one break, at the subCategory.
    paths = [("Accessories", "Socks", "Socks")] * 30 + [("Apparel", "Socks", "Socks")]
    breaks = tree_breaks(paths)
    assert [(b["row"], b["level"], b["node"]) for b in breaks] == [(30, 2, "Socks")]
    frame = breaks_frame(Hierarchy(hierarchy.FASHION_LEVELS, paths, fashion=True), pd.RangeIndex(len(paths)))
    assert frame.loc[30, "expected"] == ("Accessories", "Socks", "Socks")
    assert frame.loc[30, "reason"].startswith("subCategory Socks under masterCategory Apparel (usually Accessories)")


def test_the_answer_does_not_depend_on_the_order_of_the_products() -> None:
    paths = [("A", "x")] * 20 + [("C", "x")] + [("A", "y")] * 12 + [("D", "y")] + [("B", "z")] * 5 + [("E", "z")] * 5
    flagged = {paths[b["row"]] + (b["usual_parent"],) for b in tree_breaks(paths)}
    assert flagged == {("C", "x", "A"), ("D", "y", "A")}
    for seed in range(3):
        shuffled = paths[:]
        random.Random(seed).shuffle(shuffled)
        assert {shuffled[b["row"]] + (b["usual_parent"],) for b in tree_breaks(shuffled)} == flagged


def test_one_definition() -> None:
    """The taxonomy, the EDA and the audit reach the same function."""
    assert taxonomy.tree_breaks is hierarchy.tree_breaks
    from deepfusion import audit, eda

    assert audit.HIERARCHY_MAX_SHARE == hierarchy.MAX_SHARE
    assert eda.break_summary is hierarchy.break_summary and audit.breaks_frame is hierarchy.breaks_frame


def test_fashion_products_without_a_level_are_not_judged() -> None:
    products = pd.DataFrame({
        "masterCategory": ["Apparel"] * 12 + ["Footwear", None],
        "subCategory": ["Topwear"] * 12 + ["Topwear", "Topwear"],
        "articleType": ["Tshirts"] * 14,
    })
    tree = catalog_hierarchy(products)
    assert tree is not None and tree.fashion and tree.paths[13] == ()
    assert list(hierarchy_breaks(products).index) == [12]
    assert catalog_hierarchy(products[["articleType"]]) is None  # a flat label: no hierarchy
    assert hierarchy_breaks(products[["articleType"]]).empty


def planted_catalog(root: Path) -> Path:
    """The test catalog with two filing mistakes (a Tshirts row under Bottomwear, a Heels row under Apparel >
    Topwear) and one class genuinely split (Watches 9 / 5 between two subCategories): the EDA's old rule (any
    product off the majority parent) flagged the split, the audit's did not."""
    data = make_catalog(root, n_per_class=14, messy=False, seed=4)
    styles = data / "styles.csv"
    text = styles.read_text()
    text = text.replace("1002,Men,Apparel,Topwear,Tshirts", "1002,Men,Apparel,Bottomwear,Tshirts")
    text = text.replace("1030,Women,Footwear,Shoes,Heels", "1030,Women,Apparel,Topwear,Heels")
    for pid in range(1052, 1057):
        text = text.replace(f"{pid},Unisex,Accessories,Watches,Watches", f"{pid},Unisex,Accessories,Wallets,Watches")
    styles.write_text(text)
    return data


def test_the_eda_and_the_audit_flag_the_same_products(tmp_path: Path) -> None:
    catalog = load_catalog(planted_catalog(tmp_path / "c"), progress=False)
    assert {"1002", "1030"} <= set(catalog.products["id"])
    eda = build_eda(catalog, progress=False)["relationships"]["hierarchy"]
    audit = hierarchy_breaks(catalog.products)
    flagged = set(catalog.products.loc[audit.index, "id"])
    assert set(eda["break_ids"]) == flagged == {"1002", "1030"}
    assert eda["rows_breaking"] == len(audit) == 2
    assert eda["breaks"]["articleType"]["rows"] == 2 and eda["breaks"]["subCategory"]["rows"] == 0
    # The split class is described (found under two subCategories) but not a break.
    assert set(eda["placement"]["Watches"]["subCategories"]) == {"Watches", "Wallets"}


def test_the_eda_and_the_audit_agree_on_a_tree_label() -> None:
    labels = ["Toys > Trains > Rail"] * 12 + ["Toys > Cars > Rail"] + ["Games > Cards"] * 5 + ["Toys > Cards"]
    products = pd.DataFrame({"id": [f"p{i}" for i in range(len(labels))], "articleType": labels})
    tax = taxonomy.Taxonomy.fit(labels, min_count=1)
    from deepfusion.eda import hierarchy_section

    section = hierarchy_section(products, tax)
    audit = hierarchy_breaks(products, taxonomy=tax)
    assert set(section["break_ids"]) == set(products.loc[audit.index, "id"]) == {"p12"}
    # Cards: 5 under Games, 1 under Toys: a sixth, more than a tenth, so not a break.
    assert section["products"] == 1 and section["examples"][0]["node"] == "Rail"
