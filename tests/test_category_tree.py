"""Category trees (taxonomy.py): a path label or several label columns train a model whose every predicted path
exists in the training taxonomy, with one column per level, rare leaves backed off to their parent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_any_catalog import PATHS, run, toy_table, write_table

from deepfusion import Predictor
from deepfusion.eda import hierarchy_section
from deepfusion.taxonomy import (
    JOIN,
    Taxonomy,
    back_off,
    detect_separator,
    level_metrics,
    level_probabilities,
    top_down,
    tree_breaks,
)

TREE_FLAGS = ("--model", "fusion", "--modalities", "metadata,title", "--preset", "small", "--quiet")


def path_table(tmp_path: Path, rare: bool = True) -> pd.DataFrame:
    """The generated export without images, its label a path; one product in a leaf of its own (too rare to
    learn) that must back off to its parent."""
    table = toy_table(tmp_path, images=False).drop(columns=["image"])
    if rare:
        table.loc[0, "category_path"] = "Clothing > Tops > Vests"
    return table


def column_table(tmp_path: Path) -> pd.DataFrame:
    """The same products with the tree in three label columns (Accessories > Watches has no third level)."""
    table = path_table(tmp_path)
    parts = table.pop("category_path").str.split(" > ")
    for k, name in enumerate(("department", "family", "kind")):
        table[name] = [p[k] if len(p) > k else "" for p in parts]
    return table


# ------------------------------------------------------------------------------------------ the module
def test_taxonomy_parses_both_spellings_and_backs_off() -> None:
    assert detect_separator(["A > B", "A > C", "D"]) == ">"
    assert detect_separator(["A>>B", "C>>D"]) == ">>"
    assert detect_separator(["T-shirts/Tops", "Jeans", "Shirts"]) is None  # a flat class with a slash
    tax = Taxonomy.fit(["A > B > C", "A > B > C", "A > B > X", "A > D", "A > D"], min_count=2)
    assert tax.is_tree and tax.display == " > " and tax.n_levels == 3
    assert tax.paths == ["A > B", "A > B > C", "A > D"]
    assert tax.merged == {"A > B > X": {"into": "A > B", "products": 1}}
    # Unseen leaves back off to their deepest known prefix; truncation to a depth.
    assert tax.to_known(["A > B > Y", "A > D", "Z > Q"]) == ["A > B", "A > D", "Z > Q"]
    assert Taxonomy.fit(["A > B > C"], depth=1).paths == ["A"]
    # Label columns: joined values, shown with ' > ' unless a value holds '>'.
    cols = Taxonomy.fit([f"a{JOIN}b>c", f"a{JOIN}d"], columns=("x", "y"), min_count=1)
    assert cols.display == " | " and cols.paths == ["a | b>c", "a | d"] and cols.level_names == ["x", "y"]
    # Siblings too small alone under a parent still too small go up to the first ancestor with enough products.
    paths, merged = back_off([("A", "B", "C"), ("A", "B", "D"), ("A", "E")] + [("A", "E")] * 3, 3)
    assert paths[:3] == [("A",), ("A",), ("A", "E")] and merged[("A", "B", "C")]["into"] == ("A",)
    # A flat label stays flat.
    flat = Taxonomy.fit(["Shirts", "Jeans", "Jeans"], min_count=5)
    assert not flat.is_tree and flat.paths == ["Jeans", "Shirts"] and flat.merged == {}


def test_decoding_and_level_metrics() -> None:
    tax = Taxonomy.fit(["A > B", "A > C", "D > E"], min_count=1)
    classes = tax.paths  # ["A > B", "A > C", "D > E"]
    proba = np.array([[0.3, 0.3, 0.4], [0.1, 0.2, 0.7]])
    # Whole-path argmax says D > E; level by level, A (0.6) wins level 1 and then its best child.
    assert list(proba.argmax(axis=1)) == [2, 2]
    assert list(top_down(proba, classes, tax)) == [0, 2]
    (nodes1, p1), (nodes2, p2) = level_probabilities(proba, classes, tax)
    assert nodes1 == ["A", "D"] and np.allclose(p1[0], [0.6, 0.4])
    assert nodes2 == classes and np.allclose(p2, proba)
    m = level_metrics(["A > B", "A > C", "D > E"], ["A > B", "A > B", "A > B"], tax)
    assert [lv["accuracy"] for lv in m["levels"]] == pytest.approx([2 / 3, 1 / 3])
    assert m["first_wrong_level"]["level_1"]["products"] == 1 and m["first_wrong_level"]["level_2"]["products"] == 1
    assert m["hierarchical_f1"] == pytest.approx(3 / 6)
    # A node reached from two parents breaks the tree; the product under the rarer parent is flagged.
    paths = [("A", "B"), ("A", "B"), ("C", "B"), ("C", "D")]
    breaks = tree_breaks(paths, max_share=0.5)
    assert [(b["row"], b["node"], b["usual_parent"]) for b in breaks] == [(2, "B", "A")]
    assert tree_breaks(paths, max_share=0.1) == []  # B under C is a third of the Bs: a real split at 0.1


# ------------------------------------------------------------------------------------------ CLI
def test_path_label_trains_a_tree(tmp_path: Path) -> None:
    table = path_table(tmp_path)
    data = write_table(table, tmp_path / "export.csv")
    out = tmp_path / "run"
    run("train", "--data", str(data), "--label", "category_path", "--out", str(out), *TREE_FLAGS)
    config = json.loads((out / "fusion" / "config.json").read_text())
    taxonomy = config["taxonomy"]
    assert taxonomy["sep"] == ">" and taxonomy["display"] == " > "
    # The rare leaf is not a class: it backed off to its parent and is listed.
    assert "Clothing > Tops > Vests" not in taxonomy["paths"]
    assert taxonomy["merged"]["Clothing > Tops > Vests"]["into"] == "Clothing > Tops"
    metrics = json.loads((out / "fusion" / "metrics.json").read_text())
    assert [lv["name"] for lv in metrics["levels"]["levels"]] == ["level_1", "level_2", "level_3"]
    assert metrics["taxonomy"]["merged"]
    report = (out / "report.html").read_text()
    assert "level_3" in report and "Clothing &gt; Tops &gt; Vests" in report

    preds_path = tmp_path / "preds.csv"
    unlabelled = write_table(table.drop(columns=["category_path"]), tmp_path / "new.csv")
    run("predict", str(out / "fusion"), "--data", str(unlabelled), "--out", str(preds_path), "--quiet")
    preds = pd.read_csv(preds_path, dtype=str, keep_default_na=False)
    assert list(preds.columns[:3]) == ["sku", "prediction", "confidence"]
    for k in (1, 2, 3):
        assert f"prediction_level_{k}" in preds.columns and f"confidence_level_{k}" in preds.columns
    assert set(preds["prediction"]) <= set(taxonomy["paths"])
    assert set(preds["prediction"]) <= set(PATHS.values()) | {"Clothing > Tops"}
    # Every level's column is the path's node at that level.
    for _, row in preds.iterrows():
        parts = row["prediction"].split(" > ")
        assert [row[f"prediction_level_{k}"] for k in range(1, len(parts) + 1)] == parts
    accuracy = (preds["prediction"] == table["category_path"]).mean()
    assert accuracy >= 0.9


def test_label_columns_are_levels_not_inputs(tmp_path: Path) -> None:
    table = column_table(tmp_path)
    data = write_table(table, tmp_path / "export.csv")
    out = tmp_path / "run"
    run("train", "--data", str(data), "--label", "department,family,kind", "--out", str(out), *TREE_FLAGS)
    schema = json.loads((out / "schema.json").read_text())
    assert schema["levels"] == ["department", "family", "kind"] and schema["label"] == "kind"
    assert not {"department", "family", "kind"} & set(schema["categorical"] + schema["text"])

    preds_path = tmp_path / "preds.csv"
    new = table.drop(columns=["department", "family", "kind"])
    run("predict", str(out / "fusion"), "--data", str(write_table(new, tmp_path / "new.csv")), "--out",
        str(preds_path), "--quiet")
    preds = pd.read_csv(preds_path, dtype=str, keep_default_na=False)
    for name in ("department", "family", "kind"):
        assert f"prediction_{name}" in preds.columns and f"confidence_{name}" in preds.columns
    truth = [" > ".join(p for p in row if p) for row in table[["department", "family", "kind"]].to_numpy()]
    paths = json.loads((out / "fusion" / "config.json").read_text())["taxonomy"]["paths"]
    assert set(preds["prediction"]) <= set(paths)
    assert (preds["prediction"].to_numpy() == np.array(truth)).mean() >= 0.9
    watches = preds[preds["prediction"] == "Accessories > Watches"]
    assert len(watches) and (watches["prediction_kind"] == "").all()  # a two-level path leaves level 3 empty

    # The Python API reads the same label columns from a DataFrame and answers the same way.
    predictor = Predictor.load(out / "fusion", progress=False)
    frame = predictor.predict_frame(new.head(4))
    assert list(frame["prediction"]) == list(preds["prediction"].head(4))
    assert predictor.evaluate(table)["levels"]["levels"][0]["accuracy"] >= 0.9


def test_depth_and_flat_label_sep(tmp_path: Path) -> None:
    data = write_table(path_table(tmp_path, rare=False), tmp_path / "export.csv")
    out = tmp_path / "run"
    run("train", "--data", str(data), "--label", "category_path", "--depth", "1", "--out", str(out), *TREE_FLAGS)
    paths = json.loads((out / "fusion" / "config.json").read_text())["taxonomy"]["paths"]
    assert paths == ["Accessories", "Clothing", "Shoes"]
    # --label-sep none: the path is one flat class, as before trees existed.
    flat = tmp_path / "flat"
    run("train", "--data", str(data), "--label", "category_path", "--label-sep", "none", "--out", str(flat),
        *TREE_FLAGS)
    metrics = json.loads((flat / "fusion" / "metrics.json").read_text())
    assert "levels" not in metrics and len(metrics["per_class"]) == len(PATHS)


def test_eda_hierarchy_section_flags_broken_tree() -> None:
    products = pd.DataFrame({"articleType": [f"A{JOIN}B"] * 10 + [f"C{JOIN}B", f"C{JOIN}D"]})
    section = hierarchy_section(products, Taxonomy(columns=("top", "leaf")))
    assert section["products"] == 1 and section["examples"][0]["node"] == "B"
    assert section["levels"] == ["top", "leaf"] and section["paths"] == 3


def test_cli_choices_match_the_code() -> None:
    from deepfusion import cli, predictor, taxonomy

    assert cli.DECODE_CHOICES == predictor.DECODERS
    assert cli.DEFAULT_MIN_CLASS_SIZE == taxonomy.DEFAULT_MIN_CLASS_SIZE


def test_audit_flags_tree_breaks_of_a_tree_label() -> None:
    from deepfusion.audit import hierarchy_breaks

    products = pd.DataFrame({"articleType": ["A > B"] * 10 + ["C > B", "C > D"]})
    tax = Taxonomy.fit(list(products["articleType"]), min_count=1)
    breaks = hierarchy_breaks(products, 0.1, tax)
    assert list(breaks.index) == [10]
    assert breaks.loc[10, "expected_masterCategory"] == "A" and "usually A" in breaks.loc[10, "reason"]


def test_fashion_label_columns_and_the_service_backend(clean_catalog_dir: Path, tmp_path: Path) -> None:
    """The fashion layout with masterCategory and subCategory as labels: they leave the inputs, the other
    attributes stay, and the service's backend returns each level."""
    from deepfusion.service import ModelFolderBackend

    out = tmp_path / "run"
    run("train", "--data", str(clean_catalog_dir), "--label", "masterCategory,subCategory,articleType",
        "--out", str(out), *TREE_FLAGS)
    schema = json.loads((out / "schema.json").read_text())
    assert schema["levels"] == ["masterCategory", "subCategory", "articleType"]
    assert "gender" in schema["categorical"] and "masterCategory" not in schema["categorical"]
    backend = ModelFolderBackend(out / "fusion", max_image_pixels=10**7)
    rows = backend.predict_rows([{"id": "1", "productDisplayName": "Brand1 Men Blue Tshirt 3", "gender": "Men"}], 2,
                                None)
    assert [lv["level"] for lv in rows[0]["levels"]] == ["masterCategory", "subCategory", "articleType"]
    assert rows[0]["prediction"] == " > ".join(lv["prediction"] for lv in rows[0]["levels"])
    assert rows[0]["prediction"] in backend.predictor.taxonomy.paths
    # Over HTTP: the same levels in the response (a flat model's predictions have no "levels" key).
    from fastapi.testclient import TestClient

    from deepfusion.service import create_app

    with TestClient(create_app(out / "fusion")) as client:
        response = client.post("/v1/predict", json={"products": [
            {"id": "1", "productDisplayName": "Brand1 Men Blue Tshirt 3", "gender": "Men"}]})
    assert response.status_code == 200, response.text
    answer = response.json()["predictions"][0]
    assert answer["prediction"] == rows[0]["prediction"]
    assert [lv["level"] for lv in answer["levels"]] == ["masterCategory", "subCategory", "articleType"]
    assert answer["levels"][0]["confidence"] >= answer["levels"][2]["confidence"]
