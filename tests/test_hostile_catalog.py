"""Broken and hostile catalogs: nothing lost, nothing escapes the catalog folder, nothing hangs.

Every catalog is built here in tmp_path. The invariant checked throughout: every row read is either a product or
a dropped reject (``rows_in == len(products) + len(dropped)``), and a broken row damages only itself.
"""

from __future__ import annotations

import csv
import io
import re
import resource
import struct
import tempfile
import time
import zlib
from pathlib import Path

import pandas as pd
import pytest
from conftest import HEADER, make_catalog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from deepfusion import CatalogError, load_catalog
from deepfusion.catalog import (
    OUTSIDE_FOLDER,
    REJECT_COLUMNS,
    UNCLOSED_QUOTE,
    ImageTooLarge,
    open_image_within_budget,
)

ROW = "{pid},Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,{title}"


def catalog(tmp_path: Path, n_per_class: int = 3) -> Path:
    """A clean catalog of 4 * n_per_class products (ids from 1001), images included."""
    return make_catalog(tmp_path / "catalog", n_per_class=n_per_class, messy=False)


def styles_lines(folder: Path) -> list[str]:
    return (folder / "styles.csv").read_text(encoding="utf-8").splitlines()


def write_lines(folder: Path, lines: list[str]) -> None:
    (folder / "styles.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def data_lines(text: str) -> int:
    """Non-blank physical lines after the header, split at the line breaks csv knows."""
    lines = [line for line in re.split(r"\r\n|\r|\n", text) if line.strip()]
    return max(len(lines) - 1, 0)


def assert_nothing_lost(cat, text: str) -> None:
    assert cat.rows_in == len(cat.products) + len(cat.dropped)
    assert cat.rows_in + cat.continuation_lines == data_lines(text)
    assert f"{cat.rows_in:,} rows read" in cat.summary()


def by_id(cat) -> dict[str, dict[str, object]]:
    """The first reject row of each id (the row's own problem comes before its image's)."""
    first: dict[str, dict[str, object]] = {}
    for row in cat.rejects.to_dict("records"):
        first.setdefault(row["id"], row)
    return first


# -- 1. quotes ---------------------------------------------------------------------------------------------------


def test_stray_quote_mid_file_loses_only_its_row(tmp_path: Path) -> None:
    folder = catalog(tmp_path, n_per_class=10)
    lines = styles_lines(folder)
    broken = ROW.format(pid=9001, title='"Broken title that never closes')
    mid_column = '9002,Men,"Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Quote in a category'
    lines[20:20] = [broken, mid_column]
    lines.append(ROW.format(pid=9003, title='"Properly, quoted title"'))
    write_lines(folder, lines)
    cat = load_catalog(folder, progress=False)
    text = (folder / "styles.csv").read_text()
    assert_nothing_lost(cat, text)
    assert cat.rows_in == 43 and len(cat.products) == 43 and len(cat.dropped) == 0
    products = cat.products.set_index("id")
    assert products.loc["9001", "productDisplayName"] == '"Broken title that never closes'
    assert products.loc["9003", "productDisplayName"] == "Properly, quoted title"
    assert set(products.index) >= {str(pid) for pid in range(1001, 1041)}  # the rows after it are all there
    notes = by_id(cat)
    assert notes["9001"]["reason"] == UNCLOSED_QUOTE and notes["9001"]["action"] == "kept"
    assert notes["9001"]["raw"] == broken and notes["9001"]["line"] == 21
    assert notes["9002"]["action"] == "kept"


def test_stray_quote_before_a_huge_tail_is_not_a_crash(tmp_path: Path) -> None:
    folder = tmp_path / "catalog"
    folder.mkdir()
    rows = [ROW.format(pid=pid, title=f"Brand Men Red Tshirt {'x' * 100} {pid}") for pid in range(1, 2001)]
    rows.insert(3, ROW.format(pid=9001, title='"Never closed'))
    write_lines(folder, [HEADER, *rows])  # far more than csv's default field limit follows the quote
    cat = load_catalog(folder, progress=False, check_image_files=False)
    assert_nothing_lost(cat, (folder / "styles.csv").read_text())
    assert len(cat.products) == 2001 and cat.dropped.empty


def test_legitimate_multiline_quoted_title_is_one_row(tmp_path: Path) -> None:
    folder = catalog(tmp_path)
    lines = styles_lines(folder)
    lines.insert(4, ROW.format(pid=9001, title='"First line of the title\nsecond line"'))
    write_lines(folder, lines)
    cat = load_catalog(folder, progress=False)
    assert_nothing_lost(cat, (folder / "styles.csv").read_text())
    assert cat.continuation_lines == 1 and cat.rows_in == 13
    title = cat.products.set_index("id").loc["9001", "productDisplayName"]
    assert title == "First line of the title\nsecond line"


def test_line_breaks_inside_a_middle_column_keep_every_row(tmp_path: Path) -> None:
    """RFC 4180: a quoted description with line breaks (and a separator, and doubled quotes) in the middle of the
    row, as Shopify's and spreadsheet exports write them; the lines after the break hold the rest of the row."""
    rows = [["sku", "name", "description", "brand", "price", "category"]]
    for i in range(30):
        category = ("Toys", "Books", "Garden")[i % 3]
        text = f'"Top" quality;\nsecond line\r\nand {category.lower()} words' if i % 2 else "one line"
        rows.append([f"P{i}", f"{category} item {i}", text, f"Maker{i % 4}", f"{i}.99", category])
    path = tmp_path / "export.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=";").writerows(rows)
    cat = load_catalog(path, label="category", progress=False)
    assert len(cat.products) == 30 and cat.dropped.empty
    assert cat.continuation_lines == 2 * 15
    products = cat.products.set_index("sku")
    assert products.loc["P1", "description"] == '"Top" quality;\nsecond line\nand books words'
    assert products.loc["P1", "price"] == 1.99 and products.loc["P1", "category"] == "Books"


def test_over_long_field_is_a_reject_not_a_crash(tmp_path: Path) -> None:
    folder = catalog(tmp_path)
    lines = styles_lines(folder)
    lines.insert(2, ROW.format(pid=9001, title="y" * 150_000))
    lines.insert(3, ROW.format(pid=9002, title='"' + "z" * 150_000 + '"'))
    write_lines(folder, lines)
    cat = load_catalog(folder, progress=False)
    assert_nothing_lost(cat, (folder / "styles.csv").read_text())
    rejects = by_id(cat)
    for pid in ("9001", "9002"):
        assert rejects[pid]["action"] == "dropped"
        assert "field 'productDisplayName' too long (150,000 characters" in rejects[pid]["reason"]
        assert len(rejects[pid]["raw"]) < 400 and "characters]" in rejects[pid]["raw"]
    assert len(cat.products) == 12
    with pytest.raises(CatalogError, match="too long .*the limit is 10, max_field_chars"):
        load_catalog(folder, progress=False, check_image_files=False, max_field_chars=10)


# -- 2. shifted columns ------------------------------------------------------------------------------------------


def test_shifted_columns_are_rejected_with_the_raw_line(tmp_path: Path) -> None:
    folder = catalog(tmp_path)
    shifted = "26106,Men,Apparel,Topwear,Extra,Tshirts,Red,Summer,2012,Casual,Brand Men Red Tshirt"
    # A missing season and a stray field: the year still parses, but the label would be 'Extra'.
    label_only = "26107,Men,Apparel,Topwear,Extra,Tshirts,Red,2012,Casual,Brand Men Red Tshirt,Again"
    # A subCategory value in the articleType column.
    wrong_column = "26108,Men,Apparel,Topwear,Topwear,Red,Summer,2012,Casual,Brand Men,Red Tshirt"
    write_lines(folder, [*styles_lines(folder), shifted, label_only, wrong_column])
    cat = load_catalog(folder, progress=False)
    assert_nothing_lost(cat, (folder / "styles.csv").read_text())
    assert {"Extra", "Topwear"}.isdisjoint(set(cat.products["articleType"]))
    rejects = by_id(cat)
    for pid, raw in (("26106", shifted), ("26107", label_only), ("26108", wrong_column)):
        assert rejects[pid]["action"] == "dropped" and rejects[pid]["raw"] == raw
        assert "fields, the header has 10 (not rejoined into the title" in rejects[pid]["reason"]
    assert "year 'Summer' is not a number" in rejects["26106"]["reason"]
    assert "articleType 'Extra' appears in no other row" in rejects["26107"]["reason"]
    assert "articleType 'Topwear' is a subCategory value" in rejects["26108"]["reason"]
    assert cat.recovered_rows == 0


def test_title_with_commas_is_still_recovered(tmp_path: Path) -> None:
    folder = catalog(tmp_path)
    rows = [
        "9001,Men,Apparel,Topwear,Tshirts,White,Summer,2011,Casual,Myntra Men's Yes, its all about me Tee",
        "9002,Women,Footwear,Shoes,Heels,Black,Fall,2012,Casual,Catwalk Women Black, Gold and Red Heels",  # new season
        "9003,Men,Apparel,Topwear,Tshirts,Red,,,,Brand, Men, Red, Tshirt",  # empty values are no evidence
    ]
    write_lines(folder, [*styles_lines(folder), *rows])
    cat = load_catalog(folder, progress=False)
    assert_nothing_lost(cat, (folder / "styles.csv").read_text())
    products = cat.products.set_index("id")
    assert products.loc["9002", "productDisplayName"] == "Catwalk Women Black, Gold and Red Heels"
    assert products.loc["9003", "productDisplayName"] == "Brand, Men, Red, Tshirt"
    assert cat.recovered_ids == ["9001", "9002", "9003"] and cat.recovered_rows == 3


# -- 3. references outside the catalog folder --------------------------------------------------------------------


def secret_image(tmp_path: Path) -> Path:
    path = tmp_path / "secret.jpg"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    return path


@pytest.mark.parametrize("kind", ["traversal", "absolute", "backslash"])
def test_ids_that_are_paths_keep_the_product_without_image(tmp_path: Path, kind: str) -> None:
    folder = catalog(tmp_path)
    secret = secret_image(tmp_path)
    pid = {"traversal": "../../secret", "absolute": str(secret.with_suffix("")), "backslash": "..\\..\\secret"}[kind]
    write_lines(folder, [*styles_lines(folder), ROW.format(pid=pid, title="Path id")])
    cat = load_catalog(folder, progress=False)
    assert_nothing_lost(cat, (folder / "styles.csv").read_text())
    product = cat.products.set_index("id").loc[pid]
    assert pd.isna(product["image_path"]) and product["image_status"] == "missing"
    assert pd.isna(product["image_sha1"])
    note = by_id(cat)[pid]
    assert note["reason"].startswith(OUTSIDE_FOLDER) and note["action"] == "kept"
    strict = load_catalog(folder, progress=False, require_images=True)
    assert pid not in set(strict.products["id"]) and by_id(strict)[pid]["action"] == "dropped"


def test_symlink_out_of_images_is_not_followed(tmp_path: Path) -> None:
    folder = catalog(tmp_path)
    secret = secret_image(tmp_path)
    images = folder / "images"
    (images / "1001.jpg").unlink()
    (images / "1002.jpg").unlink()
    try:
        (images / "1001.jpg").symlink_to(secret)
        (images / "1002.jpg").symlink_to(images / "1003.jpg")  # a link within the folder is fine
    except OSError:
        pytest.skip("symbolic links are not available here")
    cat = load_catalog(folder, progress=False)
    assert_nothing_lost(cat, (folder / "styles.csv").read_text())
    products = cat.products.set_index("id")
    assert pd.isna(products.loc["1001", "image_path"]) and products.loc["1001", "image_status"] == "missing"
    assert products.loc["1002", "image_status"] == "ok"
    note = by_id(cat)["1001"]
    assert note["reason"] == f"{OUTSIDE_FOLDER} (1001.jpg resolves to a file outside images/)"
    assert note["action"] == "kept" and len(cat.products) == 12


def test_images_folder_that_is_itself_a_link_still_works(tmp_path: Path) -> None:
    folder = catalog(tmp_path)
    linked = tmp_path / "linked"
    linked.mkdir()
    (folder / "styles.csv").rename(linked / "styles.csv")
    try:
        (linked / "images").symlink_to(folder / "images", target_is_directory=True)
    except OSError:
        pytest.skip("symbolic links are not available here")
    cat = load_catalog(linked, progress=False)
    assert (cat.products["image_status"] == "ok").all()


# -- 4. pixel bombs ----------------------------------------------------------------------------------------------


def bomb_png(path: Path, side: int = 13_000) -> None:
    """A valid 1-bit PNG of side x side black pixels: a few tens of KB on disk, never held whole in memory."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_bomb_png_is_rejected_quickly(tmp_path: Path) -> None:
    folder = catalog(tmp_path)
    (folder / "images" / "1001.jpg").unlink()
    bomb_png(folder / "images" / "1001.png")
    assert (folder / "images" / "1001.png").stat().st_size < 1_000_000
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    cat = load_catalog(folder, progress=False)
    assert time.perf_counter() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 150_000  # never decoded
    product = cat.products.set_index("id").loc["1001"]
    assert product["image_status"] == "corrupt" and pd.isna(product["image_path"])
    reason = by_id(cat)["1001"]["reason"]
    assert "image too large: 13000x13000 is 169,000,000 pixels" in reason and "max_image_pixels" in reason
    assert len(cat.products) == 12
    # The budget is a parameter: a tiny one refuses the ordinary photos too.
    assert load_catalog(folder, progress=False, max_image_pixels=10).products["image_status"].eq("corrupt").all()


def jpeg_bytes(size: tuple[int, int], fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


def test_open_image_within_budget_decodes_large_jpegs_cheaply() -> None:
    data = jpeg_bytes((2000, 1500))
    with open_image_within_budget(data, max_pixels=1_000_000, target_size=(256, 256)) as image:
        assert image.mode == "RGB" and 256 <= image.width <= 500 and 256 <= image.height <= 375
    with pytest.raises(ImageTooLarge, match="2000x1500 is 3,000,000 pixels") as error:
        open_image_within_budget(data, max_pixels=1_000_000)
    assert error.value.size == (2000, 1500) and error.value.max_pixels == 1_000_000
    assert isinstance(error.value, ValueError)
    with pytest.raises(ImageTooLarge):  # other formats cannot be decoded at a reduced scale
        open_image_within_budget(jpeg_bytes((2000, 1500), "PNG"), max_pixels=1_000_000, target_size=(256, 256))
    with open_image_within_budget(jpeg_bytes((64, 48), "PNG"), max_pixels=1_000_000) as image:
        assert image.size == (64, 48)
    with pytest.raises(OSError):
        open_image_within_budget(b"not an image")


# -- 5. nothing usable -------------------------------------------------------------------------------------------


def test_all_rejected_catalog_raises_and_still_writes_rejects(tmp_path: Path) -> None:
    folder = tmp_path / "catalog"
    folder.mkdir()
    write_lines(folder, [HEADER, "1,Men,Apparel", ROW.format(pid=2, title="x").replace("Tshirts", ""), ",Men"])
    report = tmp_path / "out" / "rejects.csv"
    with pytest.raises(CatalogError, match="No usable product .* all 3 rows were rejected") as error:
        load_catalog(folder, progress=False, rejects_path=report)
    assert str(report) in str(error.value)
    written = pd.read_csv(report, dtype=str)
    assert list(written.columns) == REJECT_COLUMNS and len(written) == 3
    assert (written["action"] == "dropped").all() and written.loc[0, "raw"] == "1,Men,Apparel"
    assert error.value.rejects is not None and len(error.value.rejects) == 3
    again = error.value.write_rejects(tmp_path / "again.csv")
    assert again is not None and pd.read_csv(again, dtype=str).equals(written)


def test_header_only_catalog_raises_and_writes_an_empty_report(tmp_path: Path) -> None:
    folder = tmp_path / "catalog"
    folder.mkdir()
    write_lines(folder, [HEADER, "", "   "])
    report = tmp_path / "rejects.csv"
    with pytest.raises(CatalogError, match="has a header but no product rows") as error:
        load_catalog(folder, progress=False, rejects_path=report)
    assert list(pd.read_csv(report).columns) == REJECT_COLUMNS
    assert error.value.rejects is not None and error.value.rejects.empty


def test_repeated_header_names_are_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "catalog"
    folder.mkdir()
    write_lines(folder, [HEADER + ",gender", ROW.format(pid=1, title="x") + ",Men"])
    with pytest.raises(CatalogError, match="repeated column name"):
        load_catalog(folder, progress=False)


# -- 6. random damage --------------------------------------------------------------------------------------------

CLEAN = "\n".join(
    [HEADER]
    + [
        f"{1001 + i},{g},{m},{s},{a},{c},Summer,{2010 + i % 3},Casual,Brand{i} {g} {c} {a}"
        for i, (g, m, s, a, c) in enumerate(
            [
                ("Men", "Apparel", "Topwear", "Tshirts", "Red"),
                ("Men", "Apparel", "Bottomwear", "Jeans", "Blue"),
                ("Women", "Footwear", "Shoes", "Heels", "Black"),
                ("Unisex", "Accessories", "Watches", "Watches", "White"),
            ]
            * 2
        )
    ]
).encode() + b"\n"
N_ROWS = 8
SPECIAL = [b'"', b",", b"\n", b"\r", b"\x00", b"\xff", b" "]
BYTES = st.one_of(st.sampled_from(SPECIAL), st.binary(min_size=1, max_size=1))
EDITS = st.lists(st.tuples(st.booleans(), st.floats(0, 1), BYTES), min_size=1, max_size=8)


def damage(data: bytes, edits: list[tuple[bool, float, bytes]], start: int = 0) -> bytes:
    out = bytearray(data)
    for insert, where, byte in edits:
        pos = start + int(where * (len(out) - start))
        if insert or pos >= len(out):
            out[pos:pos] = byte
        else:
            out[pos : pos + 1] = byte
    return bytes(out)


def load_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "styles.csv").write_bytes(data)
        return load_catalog(folder, progress=False, check_image_files=False)


def decoded(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EDITS, st.booleans())
def test_random_damage_either_fails_clearly_or_loses_nothing(
    edits: list[tuple[bool, float, bytes]], header_too: bool
) -> None:
    # A damaged header mostly ends in a clear CatalogError; sparing it half the time exercises the rows.
    data = damage(CLEAN, edits, start=0 if header_too else CLEAN.index(b"\n") + 1)
    try:
        cat = load_bytes(data)
    except CatalogError:
        return
    assert_nothing_lost(cat, decoded(data))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=6))
def test_random_quotes_damage_only_their_own_rows(where: list[float]) -> None:
    # Quotes take no comma away, so every line still reads as a row of its own: none may swallow another.
    # (They go before the final line break: after it, a quote would be a line of its own.)
    data = damage(CLEAN[:-1], [(True, w, b'"') for w in where], start=CLEAN.index(b"\n") + 1) + b"\n"
    cat = load_bytes(data)
    assert_nothing_lost(cat, data.decode())
    assert cat.continuation_lines == 0 and cat.rows_in == data_lines(data.decode()) >= N_ROWS
    titles = cat.products["productDisplayName"].dropna()
    assert not titles.str.contains("\n").any()  # no title took in the line after it
    kept = " ".join([*cat.products["id"], *cat.dropped["raw"]]).replace('"', "")
    assert all(str(1001 + i) in kept for i in range(N_ROWS))


def test_clean_property_input_loads_whole() -> None:
    cat = load_bytes(CLEAN)
    assert cat.rows_in == data_lines(CLEAN.decode()) == len(cat.products) == N_ROWS
