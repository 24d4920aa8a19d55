"""Catalogs in schemas nobody wrote code for: the user's columns, files and formats, through the public API and CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CLASSES, draw_product
from typer.testing import CliRunner

from deepfusion import schema as schema_module
from deepfusion.catalog import load_catalog
from deepfusion.cli import app
from deepfusion.schema import CatalogSchema, SchemaError, clean_text, combine_text, infer_schema, parse_number

runner = CliRunner()

# A retailer's own export: category paths as labels, a long HTML description, a brand, a price in pounds, and a
# relative image path. The paths' words are not in the titles, so a model must learn them, not copy them.
PATHS = {
    "Tshirts": "Clothing > Tops > T-Shirts",
    "Jeans": "Clothing > Bottoms > Denim",
    "Heels": "Shoes > Women > Heels",
    "Watches": "Accessories > Watches",
}
WORDS = {
    "Tshirts": "cotton crew neck tee",
    "Jeans": "slim fit denim trousers",
    "Heels": "stiletto pump heel",
    "Watches": "analogue wrist watch",
}


def toy_table(root: Path, n_per_class: int = 14, seed: int = 0, images: bool = True) -> pd.DataFrame:
    """The products of a generated export (images drawn under root/pics/), as the user's table."""
    rng = random.Random(seed)
    if images:
        (root / "pics" / "sub").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, article in enumerate(CLASSES):
        for i in range(n_per_class):
            sku = f"SKU-{k}{i:03d}"
            image = f"pics/sub/{sku}.png"
            if images:
                draw_product(article, rng, mark=k * 100 + i).save(root / image)
            description = (
                f"<p>The {WORDS[article]} you were looking for.&nbsp;</p><ul><li>Made by Brand{i % 3}</li>"
                + "<li>" + " ".join(f"filler{j}" for j in range(120)) + "</li></ul>\ufffd"
            )
            rows.append(
                {
                    "sku": sku,
                    "title": f"Brand{i % 3} {WORDS[article]} model {i}",
                    "description": description,
                    "brand": f"Brand{i % 3}",
                    "price": f"£{1000 + 10 * k + i:,}.99",
                    "image": image,
                    "category_path": PATHS[article],
                }
            )
    return pd.DataFrame(rows)


def write_table(table: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        table.to_parquet(path, index=False)
    elif path.suffix == ".jsonl":
        table.to_json(path, orient="records", lines=True, force_ascii=False)
    elif path.suffix == ".tsv":
        table.to_csv(path, sep="\t", index=False)
    else:
        table.to_csv(path, sep=";", index=False)
    return path


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def fails(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output + repr(result.exception)
    return result.output


def test_text_helpers_clean_and_balance() -> None:
    assert clean_text("<p>Soft&nbsp;toy&amp;co</p>\ufffd\u00a0 ") == "Soft toy&co"
    # A style sheet or script is no product text (it would fill the words a description may add).
    assert clean_text("<style>p { color: red }</style><script>var x=1;</script><p>Real</p>") == "Real"
    long = " ".join(f"w{i}" for i in range(500))
    combined = combine_text(["Short title", long])
    # The title comes whole and first; the description adds a bounded number of words, not 500.
    assert combined.startswith("Short title ")
    assert len(combined.split()) == 2 + schema_module.EXTRA_TEXT_WORDS
    assert combine_text([None, "", "  "]) is None
    assert parse_number("£1,299.99") == pytest.approx(1299.99)
    assert parse_number("$ 12") == 12
    assert pd.isna(parse_number("twelve")) and pd.isna(parse_number(""))
    # A unit after the number: one scale per family, so a column mixing pounds and ounces compares as it should.
    assert parse_number("1 pound") == pytest.approx(16 * parse_number("1 oz"))
    assert parse_number("2.5 kg") == pytest.approx(2500) and parse_number("12 inches") == pytest.approx(30.48)
    assert pd.isna(parse_number("5 new")) and pd.isna(parse_number("3 x 4 inches"))
    # Either decimal convention, currency codes and signs on either side, percentages, a few technical units.
    assert parse_number("1.816,55 €") == pytest.approx(1816.55) and parse_number("€ 12,99") == pytest.approx(12.99)
    assert parse_number("12.99 EUR") == pytest.approx(12.99) and parse_number("US$ 5") == 5
    assert parse_number("1.816.000") == 1816000 and parse_number("10%") == 10 and parse_number("2 TB") == 2000
    # A letter before the digits is a code, not a currency: "B0" stays a string.
    assert pd.isna(parse_number("B0")) and pd.isna(parse_number("A4 paper")) and pd.isna(parse_number("1,2,3"))


@pytest.mark.parametrize("name", ["products.csv", "products.tsv", "products.parquet", "products.jsonl"])
def test_formats_load_with_the_inferred_schema(tmp_path: Path, name: str) -> None:
    table = toy_table(tmp_path)
    path = write_table(table, tmp_path / name)
    catalog = load_catalog(path, label="category_path", progress=False)
    s = catalog.schema
    assert (s.id, s.label, s.image) == ("sku", "category_path", "image")
    assert s.text == ("title", "description") and s.categorical == ("brand",) and s.numeric == ("price",)
    products = catalog.products
    assert len(products) == len(table)
    assert not (catalog.rejects["action"] == "dropped").any()
    assert set(products["articleType"]) == set(PATHS.values())
    assert (products["image_status"] == "ok").all()
    # The price is a number, the description's HTML is gone and it does not drown the title.
    assert products["price"].between(1000, 1100).all()
    text = products["productDisplayName"].iloc[0]
    assert text.startswith("Brand0 cotton crew neck tee model 0 The cotton") and "<" not in text and "&" not in text
    # The folder holding the one table works too.
    assert len(load_catalog(tmp_path, label="category_path", progress=False).products) == len(table)


def test_schema_inference_and_errors(tmp_path: Path) -> None:
    table = toy_table(tmp_path, images=False)
    inferred = infer_schema(table, label="category_path")
    assert inferred.id == "sku" and inferred.image == "image"
    round_trip = CatalogSchema.from_json(json.loads(json.dumps(inferred.to_json())))
    assert round_trip == inferred
    # A column given a new role leaves its old one; given two roles at once, it is refused.
    moved = inferred.with_roles(text=("title", "brand"))
    assert moved.text == ("title", "brand") and moved.categorical == ()
    with pytest.raises(SchemaError, match="brand"):
        inferred.with_roles(text=("title", "brand"), categorical=("brand",))
    # A weight written with its unit is a number (pounds and ounces on one scale), not a category of strings; a
    # count followed by another word stays a string.
    rng = np.random.default_rng(0)
    pounds = rng.uniform(1, 9, len(table))
    weights = [f"{w:.1f} pounds" if i % 2 else f"{16 * w:.1f} ounces" for i, w in enumerate(pounds)]
    stock = [f"{i % 7} new" for i in range(len(table))]
    with_units = infer_schema(table.assign(shipping_weight=weights, stock=stock), label="category_path")
    assert "shipping_weight" in with_units.numeric and "stock" in with_units.categorical
    path = write_table(table, tmp_path / "p.csv")
    with pytest.raises(Exception, match="nope"):
        load_catalog(path, label="nope", progress=False)


def test_cli_train_predict_any_catalog(tmp_path: Path) -> None:
    table = toy_table(tmp_path)
    data = write_table(table, tmp_path / "export.csv")
    out = tmp_path / "run"
    text = run(
        "train", "--data", str(data), "--label", "category_path", "--model", "fusion", "--preset", "small",
        "--out", str(out), "--quiet",
    )
    # What inference decided is printed and saved, so the user can correct it.
    assert "category_path" in text and "sku" in text
    saved = json.loads((out / "schema.json").read_text())
    assert saved["id"] == "sku" and saved["text"] == ["title", "description"] and saved["image"] == "image"
    config = json.loads((out / "fusion" / "config.json").read_text())
    assert config["schema"] == saved

    # predict on the same products in another format, without the label: the id column keeps its name and the
    # prediction is the whole path as written.
    unlabelled = write_table(table.drop(columns=["category_path"]), tmp_path / "new.parquet")
    preds_path = tmp_path / "preds.csv"
    run("predict", str(out / "fusion"), "--data", str(unlabelled), "--images-dir", str(tmp_path), "--out",
        str(preds_path), "--quiet")
    preds = pd.read_csv(preds_path, dtype=str)
    assert list(preds.columns[:2]) == ["sku", "prediction"]
    assert list(preds["sku"]) == list(table["sku"])
    assert set(preds["prediction"]) <= set(PATHS.values())
    accuracy = (preds["prediction"].to_numpy() == table["category_path"].to_numpy()).mean()
    assert accuracy >= 0.9, accuracy

    # The image column can be found elsewhere at predict time; a product whose image is gone is still categorized.
    moved = table.drop(columns=["category_path"]).rename(columns={"image": "photo"})
    moved.loc[0, "photo"] = "pics/sub/not-there.png"
    moved_path = write_table(moved, tmp_path / "moved.tsv")
    run("predict", str(out / "fusion"), "--data", str(moved_path), "--image", "photo", "--images-dir", str(tmp_path),
        "--out", str(tmp_path / "moved.csv"), "--quiet")
    moved_preds = pd.read_csv(tmp_path / "moved.csv", dtype=str)
    assert len(moved_preds) == len(moved) and moved_preds["prediction"].notna().all()

    # evaluate follows the saved schema on a labelled file.
    run("evaluate", str(out / "fusion"), "--data", str(data), "--out", str(tmp_path / "eval"), "--quiet")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9

    # A schema file (the one train saved, corrected by the user) gives the roles instead of inference: here the
    # description is dropped from the text, and brand becomes ignored.
    corrected = dict(saved, text=["title"], categorical=[])
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(corrected))
    out2 = tmp_path / "run2"
    run("train", "--data", str(data), "--schema", str(schema_file), "--model", "metadata", "--preset", "small",
        "--out", str(out2), "--quiet")
    saved2 = json.loads((out2 / "schema.json").read_text())
    assert saved2["text"] == ["title"] and saved2["categorical"] == [] and saved2["numeric"] == ["price"]


def test_cli_flags_rows_without_id_and_several_images(tmp_path: Path) -> None:
    table = toy_table(tmp_path).drop(columns=["sku"])
    # Several images per product, separated by '|': the first that exists is used.
    table["image"] = "missing/" + table.index.astype(str) + ".png|" + table["image"]
    data = write_table(table, tmp_path / "export.csv")
    out = tmp_path / "run"
    run(
        "train", "--data", str(data), "--label", "category_path", "--text", "title", "--categorical", "brand",
        "--numeric", "price", "--image", "image", "--image-sep", "|", "--sep", ";", "--model", "fusion",
        "--preset", "small", "--out", str(out), "--quiet",
    )
    saved = json.loads((out / "schema.json").read_text())
    assert saved["id"] is None and saved["text"] == ["title"] and saved["image_sep"] == "|"
    catalog = load_catalog(data, schema=CatalogSchema.from_json(saved), progress=False)
    assert (catalog.products["image_status"] == "ok").all()
    preds_path = tmp_path / "preds.csv"
    run("predict", str(out / "fusion"), "--data", str(data), "--out", str(preds_path), "--quiet")
    preds = pd.read_csv(preds_path, dtype=str)
    # Products without an id column are numbered by their line in the file.
    assert preds.columns[0] == "id" and len(preds) == len(table)
    assert (preds["prediction"].to_numpy() == table["category_path"].to_numpy()).mean() >= 0.9


def test_cli_column_errors_exit_2(tmp_path: Path) -> None:
    data = write_table(toy_table(tmp_path, images=False), tmp_path / "export.csv")
    out = fails("train", "--data", str(data), "--label", "nope", "--model", "metadata", "--out", str(tmp_path / "r"))
    assert "nope" in out
    out = fails(
        "train", "--data", str(data), "--label", "category_path", "--text", "title,brand", "--categorical", "brand",
        "--model", "metadata", "--out", str(tmp_path / "r2"),
    )
    assert "brand" in out
    # Without a label, a non-fashion table cannot be trained on: the message names the flag.
    assert "--label" in fails("train", "--data", str(data), "--model", "metadata", "--out", str(tmp_path / "r3"))


def test_service_and_export_follow_the_schema(tmp_path: Path) -> None:
    """The service's request fields are the catalog's own columns (in /docs too); the model folder and its export
    answer the same, prices written as the catalog writes them included."""
    from fastapi.testclient import TestClient

    from deepfusion.runtime import combine_text as lean_combine
    from deepfusion.runtime import parse_number as lean_number
    from deepfusion.service import create_app

    table = toy_table(tmp_path, images=False)
    data = write_table(table.drop(columns=["image"]), tmp_path / "export.csv")
    out = tmp_path / "run"
    run("train", "--data", str(data), "--label", "category_path", "--model", "fusion", "--preset", "small",
        "--out", str(out), "--quiet")
    exported = tmp_path / "exported"
    run("export", str(out / "fusion"), "--out", str(exported))
    products = [
        {"sku": row.sku, "title": row.title, "description": row.description, "brand": row.brand,
         "price": row.price}
        for row in table.head(12).itertuples()
    ]
    products.append({"title": WORDS["Watches"]})  # no id: its position
    # A description as long as catalogs write them (5,000 characters): taken, only its first words read.
    products.append({"sku": "long", "title": WORDS["Heels"], "description": "<p>" + "lorem ipsum " * 420 + "</p>"})
    answers = []
    for folder in (out / "fusion", exported):
        with TestClient(create_app(folder)) as client:
            openapi = client.get("/openapi.json").json()
            fields = openapi["components"]["schemas"]["Product"]["properties"]
            assert {"sku", "title", "description", "brand", "price", "image_base64"} <= set(fields)
            assert "productDisplayName" not in fields and "gender" not in fields
            response = client.post("/v1/predict", json={"products": products, "top_k": 2})
            assert response.status_code == 200, response.text
            answers.append(response.json()["predictions"])
            refused = client.post("/v1/predict", json={"products": [{"sku": "x", "description": "   "}]})
            assert refused.status_code == 422 and "title (title, description)" in refused.json()["detail"]
            wrong = client.post("/v1/predict", json={"products": [{"productDisplayName": "a watch"}]})
            assert wrong.status_code == 422  # a field the catalog does not have
            form = client.post("/v1/predict/upload", data={"sku": "f1", "title": WORDS["Jeans"], "price": "£1,012.99"})
            assert form.status_code == 200, form.text
            assert form.json()["predictions"][0]["id"] == "f1"
            assert form.json()["predictions"][0]["prediction"] == PATHS["Jeans"]
    model_answers, export_answers = answers
    assert [p["id"] for p in model_answers] == [*table["sku"].head(12), "12", "long"]
    assert [p["prediction"] for p in model_answers] == [p["prediction"] for p in export_answers]
    for a, b in zip(model_answers, export_answers, strict=True):
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-4)
    truth = list(table["category_path"].head(12)) + [PATHS["Watches"], PATHS["Heels"]]
    assert sum(p["prediction"] == t for p, t in zip(model_answers, truth, strict=True)) >= 13
    # The lean runtime's copies of the text and number rules agree with the package's.
    for values in (["<b>Soft</b>&nbsp;toy", " ".join(["w"] * 80)], [None, "x\ufffd"], ["", ""],
                   ["Mug", "<style>p { color: red }</style><SCRIPT type='a'>var x=1;</SCRIPT><p>Real</p>"]):
        assert lean_combine(values) == combine_text(values)
    for value in ("£1,299.99", "$ 12", "twelve", "", None, 3.5, "1,2", "10.7 pounds", "4.8 Ounces", "5 new",
                  "1.816,55 €", "12.99 EUR", "10%", "B0", "1.816.000", "1,2,3", "65 W"):
        assert (pd.isna(lean_number(value)) and pd.isna(parse_number(value))) or lean_number(value) == parse_number(
            value)


def test_audit_and_eda_follow_the_schema(tmp_path: Path) -> None:
    """audit and eda on an export in its own columns, with only the label flag."""
    table = toy_table(tmp_path, n_per_class=20)
    # Six products filed under a wrong path: the audit should find them.
    for i in (0, 1, 2):
        table.loc[i, "category_path"] = PATHS["Watches"]
    for i in (20, 21, 22):
        table.loc[i, "category_path"] = PATHS["Heels"]
    data = write_table(table, tmp_path / "export.csv")
    run("eda", "--data", str(data), "--label", "category_path", "--out", str(tmp_path / "eda"), "--quiet")
    eda = json.loads((tmp_path / "eda" / "eda.json").read_text())
    assert eda["target"]["column"] == "category_path" and eda["target"]["n_classes"] == 4
    assert eda["meta"]["schema"]["categorical"] == ["brand"] and "price" in eda["quality"]["numeric"]
    assert set(eda["relationships"]) == {"brand", "hierarchy"} and eda["relationships"]["hierarchy"] is None
    kinds = {c["name"]: c["kind"] for c in eda["overview"]["columns"]}
    assert kinds["sku"] == "identifier" and kinds["price"] == "numeric" and kinds["description"] == "text"
    html = (tmp_path / "eda" / "eda.html").read_text()
    assert "category_path" in html and "gender" not in html

    out = tmp_path / "audit"
    run("audit", "--data", str(data), "--label", "category_path", "--modalities", "metadata,title", "--folds", "3",
        "--out", str(out), "--quiet")
    queue = pd.read_csv(out / "audit.csv", dtype=str)
    planted = {"SKU-0000", "SKU-0001", "SKU-0002", "SKU-1000", "SKU-1001", "SKU-1002"}
    assert planted <= set(queue["sku"].head(8)), queue.head(8)
    # The catalog's own terms: its id column, the text read, a tree's usual parent; no fashion columns.
    assert {"sku", "text", "expected_parent", "current_label", "suggested_label"} <= set(queue.columns)
    assert not {"id", "masterCategory", "expected_subCategory", "productDisplayName"} & set(queue.columns)
    assert "Tops" in (out / "audit.html").read_text()


def test_images_of_any_shape_keep_their_aspect_ratio() -> None:
    """A wide or tall photo is fitted and padded with white, not stretched; a photo of the input's shape is the
    plain resize (the fashion catalog's 60x80 photos give the same pixels as before); the lean runtime agrees."""
    from PIL import Image

    from deepfusion.catalog import letterbox
    from deepfusion.runtime import letterbox as lean_letterbox

    size = (168, 224)  # width, height of the default input
    wide = Image.new("RGB", (800, 100), (200, 30, 30))
    boxed = np.asarray(letterbox(wide, size))
    assert boxed.shape == (224, 168, 3)
    assert (boxed[:90] == 255).all() and (boxed[-90:] == 255).all()  # white bands above and below
    assert (boxed[112, :, 0] == 200).all()  # the photo spans the whole width, undistorted
    tall = Image.new("RGB", (50, 1000), (10, 120, 10))
    assert (np.asarray(letterbox(tall, size))[:, :70] == 255).all()
    same_shape = Image.effect_noise((60, 80), 40).convert("RGB")
    assert np.array_equal(np.asarray(letterbox(same_shape, size)), np.asarray(same_shape.resize(size, Image.BILINEAR)))
    for image in (wide, tall, same_shape):
        assert np.array_equal(np.asarray(letterbox(image, size)), np.asarray(lean_letterbox(image, size)))


def test_excel_unicode_text_export_loads(tmp_path: Path) -> None:
    # Excel's "Unicode Text" export: UTF-16 with its byte-order mark, tab-separated; it used to be read as Latin-1.
    table = toy_table(tmp_path, images=False).assign(brand=lambda t: t["brand"] + " Café")
    path = tmp_path / "export.txt"
    path.write_bytes(table.to_csv(sep="\t", index=False).encode("utf-16"))
    catalog = load_catalog(path, label="category_path", progress=False)
    assert len(catalog.products) == len(table)
    assert set(catalog.products["articleType"]) == set(PATHS.values())
    assert catalog.products["brand"].str.endswith(" Café").all()


def test_a_title_column_with_repeated_values_is_read_as_text(tmp_path: Path) -> None:
    # A small catalog with templated titles: few distinct, short values, which alone would look like a category.
    rng = random.Random(0)
    words = {"Kitchen > Knives": ["knife", "blade"], "Kitchen > Pans": ["pan", "wok"],
             "Garden > Hoses": ["hose", "reel"]}
    rows = []
    for i in range(300):
        label = rng.choice(list(words))
        rows.append({"sku": f"{i:06d}", "Item Title": f"{words[label][i % 2].title()} {rng.choice(['pro', 'mini'])}",
                     "Marke": f"Brand{rng.randint(1, 5)}", "Kategorie": label})
    path = tmp_path / "cat.csv"
    pd.DataFrame(rows).to_csv(path, sep=";", index=False)
    inferred = infer_schema(pd.read_csv(path, sep=";", dtype=str), label="Kategorie")
    assert inferred.text == ("Item Title",) and inferred.categorical == ("Marke",)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(path), "--label", "Kategorie", "--model", "fusion",
                                 "--preset", "small", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "schema.json").read_text())["text"] == ["Item Title"]
    assert json.loads((out / "fusion" / "metrics.json").read_text())["accuracy"] >= 0.9
