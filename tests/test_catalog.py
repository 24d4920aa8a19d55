from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from deepfusion import CatalogError, load_catalog
from deepfusion.catalog import resolve_data_dir


def reasons(catalog) -> dict[str, str]:
    return dict(zip(catalog.rejects["id"], catalog.rejects["reason"], strict=True))


def test_unquoted_commas_are_recovered_not_dropped(catalog_dir: Path) -> None:
    catalog = load_catalog(catalog_dir, progress=False)
    products = catalog.products.set_index("id")
    assert products.loc["5001", "productDisplayName"] == "Myntra Men's Yes, its all about me Tee"
    assert products.loc["5002", "productDisplayName"] == "Catwalk Women Black, Gold and Red Heels"
    assert products.loc["5002", "articleType"] == "Heels"
    assert catalog.recovered_rows == 2


def test_every_bad_row_has_a_reason(catalog_dir: Path) -> None:
    catalog = load_catalog(catalog_dir, progress=False)
    why = reasons(catalog)
    assert "missing image" in why["5003"]
    assert "corrupt image" in why["5004"]
    assert "corrupt image" in why["5005"]  # truncated JPEG
    assert "non-numeric year 'twenty-twelve'" in why["5007"]
    assert "empty target" in why["5006"]
    assert "line" in why["5008"] and "fields" in why["5008"]
    dup = catalog.rejects[catalog.rejects["reason"].str.startswith("duplicate id")]
    assert list(dup["id"]) == ["1001"]
    # Nothing silently dropped: every data row of the file is either a product or a dropped reject.
    n_rows = len((catalog_dir / "styles.csv").read_text().strip().splitlines()) - 1
    assert len(catalog.products) + len(catalog.dropped) == n_rows


def test_image_problems_keep_the_product_unless_images_are_required(catalog_dir: Path) -> None:
    lenient = load_catalog(catalog_dir, progress=False).products.set_index("id")
    assert lenient.loc["5003", "image_status"] == "missing" and pd.isna(lenient.loc["5003", "image_path"])
    assert lenient.loc["5004", "image_status"] == "corrupt"
    assert pd.isna(lenient.loc["5007", "year"]) and pd.isna(lenient.loc["5007", "season"])
    strict = load_catalog(catalog_dir, require_images=True, progress=False)
    assert not {"5003", "5004", "5005"} & set(strict.products["id"])
    assert set(strict.dropped["id"]) >= {"5003", "5004", "5005"}


def test_grayscale_images_are_valid(catalog_dir: Path) -> None:
    products = load_catalog(catalog_dir, progress=False).products.set_index("id")
    assert products.loc["1001", "image_mode"] == "L"
    assert products.loc["1001", "image_status"] == "ok"


def test_rejects_file(catalog_dir: Path, tmp_path: Path) -> None:
    catalog = load_catalog(catalog_dir, progress=False)
    path = catalog.write_rejects(tmp_path / "rejects.csv")
    frame = pd.read_csv(path, dtype=str)
    assert list(frame.columns) == ["id", "reason", "action", "line", "raw"]
    assert set(frame["action"]) == {"dropped", "kept"}
    # Each reject points at its line of styles.csv and carries that line's text.
    lines = (catalog_dir / "styles.csv").read_text().splitlines()
    for line, raw in zip(frame["line"], frame["raw"], strict=True):
        assert lines[int(line) - 1] == raw
    short = frame.set_index("id").loc["5008"]
    assert short["raw"] == "5008,Men,Apparel" and short["line"] == str(len(lines))
    assert "rows rejected" in catalog.summary()
    n_rows = len(lines) - 1
    assert catalog.rows_in == n_rows and f"{n_rows:,} rows read" in catalog.summary()


def test_parquet_catalog(clean_catalog_dir: Path) -> None:
    csv = load_catalog(clean_catalog_dir, progress=False).products
    table = pd.read_csv(clean_catalog_dir / "styles.csv", dtype=str)
    (clean_catalog_dir / "styles.csv").unlink()
    table.to_parquet(clean_catalog_dir / "styles.parquet")
    parquet = load_catalog(clean_catalog_dir, progress=False).products
    pd.testing.assert_frame_equal(csv.drop(columns=["image_path"]), parquet.drop(columns=["image_path"]))


def test_missing_required_column_names_file_and_fix(tmp_path: Path) -> None:
    (tmp_path / "styles.csv").write_text("id,gender\n1,Men\n")
    with pytest.raises(CatalogError, match=r"styles.csv lacks required column\(s\) articleType"):
        load_catalog(tmp_path, progress=False)


def test_missing_folder_and_table(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "nope", progress=False)
    with pytest.raises(CatalogError, match="No product table found"):
        load_catalog(tmp_path, progress=False)


def test_unreadable_parquet_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "styles.parquet").write_bytes(b"not parquet")
    with pytest.raises(CatalogError, match="styles.parquet"):
        load_catalog(tmp_path, progress=False)


def test_kaggle_source_fails_fast_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import kagglehub

    def offline(handle: str) -> str:
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(CatalogError, match="pass the local folder"):
        resolve_data_dir("kaggle:paramaggarwal/fashion-product-images-small")
