"""Category trees (taxonomy.py): a path label or several label columns train a model whose every predicted path
exists in the training taxonomy, with one column per level, rare leaves backed off to their parent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_any_catalog import PATHS, run, toy_table, write_table

from deepfusion import Predictor, load_catalog
from deepfusion import runtime as rt
from deepfusion.eda import hierarchy_section
from deepfusion.export import export_model
from deepfusion.runtime import ExportedModel, ExportLoadError
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
    # The usual parent path in the catalog's own spelling of its paths.
    products = pd.DataFrame({"articleType": ["X / A / B"] * 10 + ["X / C / B", "X / C / D"]})
    tax = Taxonomy.fit(list(products["articleType"]), min_count=1)
    assert hierarchy_breaks(products, 0.1, tax).loc[10, "expected_masterCategory"] == "X / A"


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


# ------------------------------------------------------------------------------------------ exported models
def _new_products(table: pd.DataFrame) -> pd.DataFrame:
    """The catalog's products without their labels, plus products that take the other networks' routes: no
    title, a title and no attribute, nothing at all."""
    labels = [c for c in ("category_path", "department", "family", "kind") if c in table.columns]
    odd = pd.DataFrame([
        {"sku": "no-title", "brand": "Brand1", "price": "£1,020.99"},
        {"sku": "title-only", "title": "stiletto pump heel"},
        {"sku": "empty"},
    ])
    return pd.concat([table.drop(columns=labels), odd], ignore_index=True)


@pytest.fixture(scope="module")
def tree_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, pd.DataFrame]]:
    """A tiny tree model of each kind, trained by the CLI: a path label (with a rare leaf backed off) and three
    label columns (a two-level branch among three-level ones); each with its training table."""
    root = tmp_path_factory.mktemp("trees")
    models = {}
    for kind, table, label in (("path", path_table(root), "category_path"),
                               ("columns", column_table(root), "department,family,kind")):
        data = write_table(table, root / f"{kind}.csv")
        run("train", "--data", str(data), "--label", label, "--out", str(root / kind), *TREE_FLAGS)
        models[kind] = (root / kind / "fusion", table)
    return models


def _decoded(model_dir: Path, decode: str, out: Path) -> Path:
    """The model folder with another decoding (what `train --decode` saves): the same networks."""
    if decode == "path":
        return model_dir
    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    config["config"]["tree"]["decode"] = decode
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_runtime_decodes_and_sums_levels_as_the_taxonomy() -> None:
    """runtime.CategoryTree (numpy, no package import) against taxonomy.top_down / level_probabilities on random
    probabilities over paths of one, two and three levels."""
    tax = Taxonomy.fit(["A > B > C", "A > B > D", "A > E", "F", "F > G > H", "F > G", "F > I"], min_count=1)
    classes = tax.paths
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.full(len(classes), 0.5), size=400)
    for decode in ("path", "top_down"):
        tree = rt.CategoryTree(classes, tax.level_names, tax.display, decode)
        chosen = tree.choose(proba)
        want = top_down(proba, classes, tax) if decode == "top_down" else proba.argmax(axis=1)
        assert np.array_equal(chosen, want)
        for k, (values, confidence) in enumerate(tree.level_answers(proba, chosen)):
            nodes, marginal = level_probabilities(proba, classes, tax)[k]
            for i, c in enumerate(chosen):
                path = tax.split(classes[c])
                if len(path) > k:
                    assert values[i] == path[k]
                    assert confidence[i] == pytest.approx(marginal[i, nodes.index(tax.format(path[: k + 1]))])
                else:
                    assert values[i] is None and np.isnan(confidence[i])
    # The decodings disagree on some rows, so the comparison above tells them apart.
    assert (top_down(proba, classes, tax) != proba.argmax(axis=1)).any()


@pytest.mark.parametrize("kind", ["path", "columns"])
@pytest.mark.parametrize("decode", ["path", "top_down"])
def test_export_answers_each_level_as_the_model_folder(
    tree_models: dict[str, tuple[Path, pd.DataFrame]], kind: str, decode: str, tmp_path: Path
) -> None:
    """`deepfusion export` of a tree model: the lean runtime writes the model folder's columns, per-level
    answers and confidences (within 1e-4), under either decoding, for products on every network's route."""
    model_dir = _decoded(tree_models[kind][0], decode, tmp_path / "model")
    exported = export_model(model_dir, tmp_path / "exported")
    manifest = json.loads((exported / "manifest.json").read_text())
    names = ["level_1", "level_2", "level_3"] if kind == "path" else ["department", "family", "kind"]
    assert manifest["tree"]["levels"] == names and manifest["tree"]["decode"] == decode
    products = _new_products(tree_models[kind][1])
    expected = Predictor.load(model_dir, progress=False).predict_frame(products)
    got = ExportedModel.load(exported).predict_frame(products)
    assert list(got.columns) == list(expected.columns)
    assert [c for c in got.columns if c.startswith("prediction_")] == [f"prediction_{n}" for n in names]
    assert list(got["id"]) == list(expected["id"])
    for column in ["prediction", "inputs", *[f"prediction_{n}" for n in names], "top1_label", "top2_label"]:
        assert got[column].tolist() == expected[column].tolist(), column
    for column in ["confidence", *[f"confidence_{n}" for n in names], "top1_confidence", "top2_confidence"]:
        np.testing.assert_allclose(got[column].astype(float), expected[column].astype(float), atol=1e-4, rtol=0,
                                   equal_nan=True, err_msg=column)
    assert set(got["inputs"]) >= {"metadata+title", "title", "metadata", "none"}
    if kind == "columns":  # a two-level path leaves the third level empty, with no confidence
        watches = got[got["prediction"] == "Accessories > Watches"]
        assert len(watches) and watches["prediction_kind"].isna().all() and watches["confidence_kind"].isna().all()


def test_service_of_an_export_returns_the_model_folders_levels(
    tree_models: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from deepfusion.service import create_app

    model_dir = tree_models["columns"][0]
    exported = export_model(model_dir, tmp_path / "exported")
    request = {"products": [{"sku": "1", "title": "Brand1 stiletto pump heel model 3", "brand": "Brand1"},
                            {"sku": "2", "title": "analogue wrist watch"}, {"sku": "3", "price": "£1,033.99"}],
               "top_k": 2}
    answers = []
    for folder in (model_dir, exported):
        with TestClient(create_app(folder)) as client:
            response = client.post("/v1/predict", json=request)
            assert response.status_code == 200, response.text
            assert client.get("/v1/model").json()["backend"] == ("model" if folder == model_dir else "export")
        answers.append(response.json()["predictions"])
    for folder_answer, export_answer in zip(*answers, strict=True):
        assert export_answer["prediction"] == folder_answer["prediction"]
        assert [lv["level"] for lv in export_answer["levels"]] == ["department", "family", "kind"]
        for a, b in zip(folder_answer["levels"], export_answer["levels"], strict=True):
            # A level below a shorter path has no prediction and no confidence (None fields are left out).
            assert b.get("prediction") == a.get("prediction") and b.keys() == a.keys()
            if "confidence" in a:
                assert b["confidence"] == pytest.approx(a["confidence"], abs=1e-4)
    watch = next(a for a in answers[1] if a["id"] == "2")
    assert watch["prediction"] == "Accessories > Watches" and watch["levels"][2] == {"level": "kind"}


def test_tampered_tree_descriptions_are_refused(
    tree_models: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path
) -> None:
    """Every value the per-level answers are read from is checked: the export's manifest by the runtime, the
    model folder's config.json by validate_model_folder."""
    from deepfusion.model_files import ModelLoadError, validate_model_folder

    for kind in ("path", "columns"):
        model_dir = tree_models[kind][0]
        exported = export_model(model_dir, tmp_path / kind / "exported")
        manifest = json.loads((exported / "manifest.json").read_text())
        tree = manifest["tree"]
        tampered = {
            "decoding": ({**tree, "decode": "greedy"}, "decoding 'greedy'"),
            "levels renamed": ({**tree, "levels": ["a", "b", "c"]}, "not the label's"),
            "levels cut": ({**tree, "levels": tree["levels"][:2]}, "at most 2 levels|not those of its classes"),
            "joiner": ({**tree, "display": " ~ "}, "path joiner"),
            "not an object": (["levels"], "must be an object"),
        }
        if kind == "path":
            tampered["separator"] = ({**tree, "sep": "/", "display": " / "}, "not those of its classes")
        else:
            tampered["removed"] = (None, "has no 'tree'")
        for value, message in tampered.values():
            (exported / "manifest.json").write_text(json.dumps({**manifest, "tree": value}))
            with pytest.raises(ExportLoadError, match=message):
                ExportedModel.load(exported)
        (exported / "manifest.json").write_text(json.dumps(manifest))
        assert ExportedModel.load(exported).tree is not None

        folder = tmp_path / kind / "model"
        shutil.copytree(model_dir, folder)
        config = json.loads((folder / "config.json").read_text())
        taxonomy = config["taxonomy"]
        bad = {
            "decode": ({**config, "config": {**config["config"], "tree": {**config["config"]["tree"],
                                                                           "decode": "greedy"}}}, "decode must be"),
            "paths": ({**config, "taxonomy": {**taxonomy, "paths": taxonomy["paths"][1:]}}, "not the model's classes"),
            "display": ({**config, "taxonomy": {**taxonomy, "display": " ~ "}}, "taxonomy.display"),
            "depth": ({**config, "taxonomy": {**taxonomy, "depth": 0}}, "taxonomy.depth"),
            "object": ({**config, "taxonomy": "A > B"}, "'taxonomy' must be a JSON object"),
        }
        if kind == "columns":
            bad["columns"] = ({**config, "taxonomy": {**taxonomy, "columns": ["family", "department", "kind"]}},
                              "not the schema's label columns")
            bad["too deep"] = ({**config, "taxonomy": {**taxonomy, "depth": 1}}, "at most 1 levels")
        for value, message in bad.values():
            (folder / "config.json").write_text(json.dumps(value))
            with pytest.raises(ModelLoadError, match=message):
                validate_model_folder(folder)
        (folder / "config.json").write_text(json.dumps(config))
        validate_model_folder(folder)


def test_ray_actor_writes_the_level_columns(tree_models: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path) -> None:
    """What a Ray engine actor (distributed.BatchPredictor) computes from an exported tree model: the model
    folder's columns, per-level ones included (within 1e-5 before rounding), then the file's columns (rounded,
    the id under the catalog's name, as the local engine writes them). The whole run on Ray is in
    tests/test_ray.py."""
    pytest.importorskip("ray")
    from deepfusion import distributed as dist
    from deepfusion import runs

    model_dir, table = tree_models["columns"]
    exported = export_model(model_dir, tmp_path / "exported")
    predictor = Predictor.load(model_dir, progress=False)
    products = load_catalog(write_table(_new_products(table), tmp_path / "new.csv"), require_target=False,
                            schema=predictor.schema_, progress=False).products
    expected = predictor.predict_frame(products, top_k=3)
    actor = dist.BatchPredictor(dist._export_files(exported), top_k=3, threads=1, max_image_pixels=10**7)
    block = dist._blocks(products, actor.columns, len(products))[0]
    batch = {c: block[c].to_numpy() for c in block.columns}
    got = actor.predict_table(batch).drop(columns=dist.ROW)
    assert list(got.columns) == list(expected.columns)
    assert {"prediction_department", "confidence_family", "confidence_kind"} <= set(got.columns)
    for column in expected.columns.drop("needs_review"):  # the flag sits on the threshold here (test_export)
        if "confidence" in column:
            np.testing.assert_allclose(got[column].astype(float), expected[column].astype(float), atol=1e-5,
                                       rtol=0, equal_nan=True, err_msg=column)
        else:
            assert got[column].tolist() == expected[column].tolist(), column
    written = actor(batch).drop(columns=dist.ROW)
    local = runs.user_columns(runs.output_columns(expected), predictor.schema_)
    assert list(written.columns) == list(local.columns) and written.columns[0] == "sku"
    assert written["confidence_kind"].round(4).equals(written["confidence_kind"])
