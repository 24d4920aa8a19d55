"""Streaming a catalog (catalog.CatalogStream) and `predict` on it (runs.predict_catalog): chunk by chunk, the
loader finds what load_catalog finds in the whole table (same products, same rejects in the same order, same
counts), and the predictions are those of the whole loaded catalog, while reading holds one chunk of the file."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import HEADER, make_catalog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_catalog import CLEAN, EDITS, damage

from deepfusion import CatalogError, Predictor, load_catalog, runs
from deepfusion import catalog as cat
from deepfusion.catalog import CatalogStream
from deepfusion.schema import FASHION

SMALL = (64, 48)
ROW = "{pid},Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,{title}"
EXTRA_ROWS = [
    "6001,Men,Apparel,Topwear,,Red,Summer,2011,Casual,",  # no title
    "6002,,,,,,,,,",  # nothing but the id
    "6003,,,,,,,,,Titan Unisex Black Watch",  # title only
]


def streamed(data: Path, chunk_rows: int, **options: object) -> tuple[list[pd.DataFrame], cat.CatalogTotals]:
    stream = CatalogStream(data, chunk_rows=chunk_rows, progress=False, **options)
    chunks = list(stream)
    assert stream.totals is not None
    return chunks, stream.totals


def _values(frame: pd.DataFrame) -> pd.DataFrame:
    # A chunk whose paths are all missing holds None in an object column where the whole table holds NaN in a
    # string one: the same values.
    return frame.astype(object).where(frame.notna(), None)


def _reasons(rejects: pd.DataFrame) -> pd.DataFrame:
    # Pillow names "<_io.BytesIO object at 0x...>" in some reasons, another address on every load.
    return rejects.assign(reason=rejects["reason"].str.replace(r" at 0x[0-9a-f]+", "", regex=True))


def assert_same_load(data: Path, chunk_rows: int, **options: object) -> cat.CatalogTotals:
    whole = load_catalog(data, progress=False, **options)
    chunks, totals = streamed(data, chunk_rows, **options)
    assert all(0 < len(c) <= chunk_rows for c in chunks)
    pd.testing.assert_frame_equal(_values(pd.concat(chunks, ignore_index=True)), _values(whole.products))
    pd.testing.assert_frame_equal(_reasons(totals.rejects), _reasons(whole.rejects))
    assert totals.summary() == whole.summary()
    assert (totals.rows_in, totals.continuation_lines, totals.recovered_rows, totals.notes) == (
        whole.rows_in, whole.continuation_lines, whole.recovered_rows, whole.notes
    )
    assert totals.schema == whole.schema and totals.separator == whole.separator
    return totals


def write_lines(folder: Path, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "styles.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


# ---------------------------------------------------------------------------------------------- the loader
@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 7, 1000])
def test_messy_catalog_streams_as_it_loads(catalog_dir: Path, chunk_rows: int) -> None:
    """Unquoted commas, missing / corrupt / truncated images, an empty target, a non-numeric year, a short line and
    an id repeated 20 rows after its first use (in another chunk)."""
    totals = assert_same_load(catalog_dir, chunk_rows)
    assert "duplicate id" in " ".join(totals.dropped["reason"])
    assert totals.rows_in == totals.n_products + len(totals.dropped)


def test_quoted_line_breaks_and_stray_quotes_across_chunk_and_window_edges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A title with line breaks inside quotes is one row, and a stray quote damages only its line, wherever the
    chunks and the windows of lines grouped into records end."""
    monkeypatch.setattr(cat, "RECORD_WINDOW", 3)
    lines = [HEADER]
    for i in range(30):
        if i % 7 == 3:
            lines += [ROW.format(pid=2000 + i, title='"Two line') + "", "title\"", ""]
        elif i % 7 == 5:
            lines.append(ROW.format(pid=2000 + i, title='"stray quote title'))
        else:
            lines.append(ROW.format(pid=2000 + i, title=f"Plain title {i}"))
    folder = write_lines(tmp_path / "c", lines)
    for chunk_rows in (1, 2, 4, 5):
        totals = assert_same_load(folder, chunk_rows, check_image_files=False)
    assert totals.continuation_lines > 0 and "unclosed quote" in " ".join(totals.rejects["reason"])


def test_shifted_rows_are_judged_by_the_whole_file(tmp_path: Path) -> None:
    """Whether a row with extra fields is mended depends on the values the whole file's clean rows take: here the
    usage and season of the first row appear only in the last rows, in another chunk."""
    lines = [HEADER, "3001,Men,Apparel,Topwear,Tshirts,Red,Monsoon,2012,Smart Work,Brand, with commas, in title"]
    lines += [ROW.format(pid=3002 + i, title=f"Plain {i}") for i in range(6)]
    lines.append("3100,Men,Apparel,Topwear,Tshirts,Red,Monsoon,2012,Smart Work,Last")
    folder = write_lines(tmp_path / "c", lines)
    totals = assert_same_load(folder, 2, check_image_files=False)
    assert totals.recovered_rows == 1 and totals.dropped.empty


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EDITS, st.integers(1, 4))
def test_random_damage_streams_as_it_loads(edits: list[tuple[bool, float, bytes]], chunk_rows: int) -> None:
    """Random bytes (quotes, separators, line breaks, NUL, invalid UTF-8) anywhere after the header: the stream
    fails when and as the whole load fails, and otherwise finds the same products and rejects."""
    data = damage(CLEAN, edits, start=CLEAN.index(b"\n") + 1)
    with tempfile.TemporaryDirectory() as name:
        Path(name, "styles.csv").write_bytes(data)
        try:
            load_catalog(name, progress=False, check_image_files=False)
        except CatalogError as exc:
            with pytest.raises(CatalogError) as streamed_error:
                streamed(Path(name), chunk_rows, check_image_files=False)
            assert str(streamed_error.value) == str(exc)
            return
        assert_same_load(Path(name), chunk_rows, check_image_files=False)


def test_parquet_and_json_lines_stream_as_they_load(clean_catalog_dir: Path, tmp_path: Path) -> None:
    """Parquet: an integer column whose only missing value is in the last chunk reads as floats in every chunk,
    as in the whole table. JSON Lines: a field that the first rows lack is a column of the whole table."""
    table = pd.read_csv(clean_catalog_dir / "styles.csv", dtype=str)
    table["year"] = pd.array([*map(int, table["year"][:-1]), None], dtype="Int64")
    table.to_parquet(clean_catalog_dir / "styles.parquet", index=False)
    (clean_catalog_dir / "styles.csv").unlink()
    assert_same_load(clean_catalog_dir, 5)
    folder = tmp_path / "json"
    folder.mkdir()
    records = table.drop(columns=["year"]).astype(object).to_dict("records")
    for i, record in enumerate(records):
        if i < 7:
            record.pop("productDisplayName")
    lines = pd.Series(records).map(lambda r: pd.io.json.ujson_dumps(r)).tolist()
    lines.insert(9, "{not json")
    (folder / "products.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # A table's roles are inferred from the first chunk; a model's saved schema gives them (here: the fashion one).
    totals = assert_same_load(folder, 4, check_image_files=False, schema=FASHION)
    assert "not a JSON object" in " ".join(totals.dropped["reason"])


def test_no_usable_product_fails_after_the_whole_table(tmp_path: Path) -> None:
    folder = write_lines(tmp_path / "c", [HEADER, *[f"{i},Men,Apparel" for i in range(5)]])
    report = tmp_path / "rejects.csv"
    with pytest.raises(CatalogError, match="all 5 rows were rejected") as error:
        streamed(folder, 2, rejects_path=report)
    assert len(pd.read_csv(report)) == 5 and len(error.value.rejects) == 5


def test_reading_holds_one_chunk_of_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the first chunk is handed over, only the lines of about one chunk (and one window of lines grouped
    into records) have been read from the file, and every chunk holds at most ``chunk_rows`` rows."""
    n, chunk_rows = 3000, 100
    folder = write_lines(tmp_path / "c", [HEADER, *[ROW.format(pid=10_000 + i, title=f"T {i}") for i in range(n)]])
    read = {"lines": 0}
    file_lines = cat._file_lines

    def counted(path: Path, encoding: str):  # noqa: ANN202
        for line in file_lines(path, encoding):
            read["lines"] += 1
            yield line

    monkeypatch.setattr(cat, "_file_lines", counted)
    monkeypatch.setattr(cat, "RECORD_WINDOW", 50)
    stream = iter(CatalogStream(folder, chunk_rows=chunk_rows, progress=False, check_image_files=False))
    first = next(stream)
    before = read["lines"]
    header_pass = 1  # _csv_header reads up to the header
    assert len(first) == chunk_rows
    assert before <= header_pass + 1 + chunk_rows + 50 + cat.MAX_RECORD_LINES
    sizes = [len(first), *map(len, stream)]
    assert max(sizes) <= chunk_rows and sum(sizes) == n


def test_seen_ids_find_duplicates_across_runs() -> None:
    seen = cat._SeenIds()
    for start in range(0, 1000, 37):
        ids = [str(i) for i in range(start, min(start + 37, 1000))]
        assert not seen.contains(ids).any()
        seen.add(ids)
    assert seen.contains([str(i) for i in range(1000)]).all()
    assert not seen.contains(["1000", "x", ""]).any()
    assert len(seen) == 1000 and len(seen._runs) < 10


# ---------------------------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """metadata + title + image (64x48) with the no-title network."""
    root = tmp_path_factory.mktemp("model")
    frame = load_catalog(make_catalog(root / "catalog", messy=False, seed=1), progress=False).products
    predictor = Predictor(["metadata", "title", "image"], preset="small", progress=False, head={"epochs": 5},
                          image_size=SMALL)
    predictor.fit(frame.iloc[::2], frame.iloc[1::2])
    return predictor.save(root / "model")


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The messy catalog, a line that cannot be read in the middle, products without a title or attributes."""
    root = make_catalog(tmp_path_factory.mktemp("data") / "catalog", seed=3)
    lines = (root / "styles.csv").read_text(encoding="utf-8").splitlines()
    lines.insert(len(lines) // 2, "7001,Men,Apparel")
    write_lines(root, [*lines, *EXTRA_ROWS])
    return root


def whole_catalog_predictions(model_dir: Path, data: Path, out: Path) -> None:
    """What predict wrote before it streamed: the whole catalog loaded, then predicted at once."""
    predictor = Predictor.load(model_dir, progress=False)
    catalog = runs.catalog_for_model(predictor, data, require_target=False, progress=False)
    preds = runs.user_columns(runs.output_columns(predictor.predict_frame(catalog.products, top_k=3)), catalog.schema)
    if out.suffix == ".parquet":
        preds.to_parquet(out, index=False)
    else:
        preds.to_csv(out, index=False)
    catalog.write_rejects(out.with_name(out.stem + ".rejects.csv"))


def _rejects_text(path: Path) -> str:
    return re.sub(r" at 0x[0-9a-f]+", "", path.read_text())


@pytest.mark.parametrize("name", ["preds.csv", "preds.parquet"])
def test_streamed_predict_writes_the_whole_catalog_predictions(
    model: Path, messy: Path, tmp_path: Path, name: str, cache_dir: Path
) -> None:
    expected, got = tmp_path / "whole" / name, tmp_path / "streamed" / name
    expected.parent.mkdir()
    whole_catalog_predictions(model, messy, expected)
    n, totals = runs.predict_catalog(model, messy, got, chunk_size=4, progress=False)
    assert n == totals.n_products and n > 8  # several chunks
    assert "line" in totals.dropped["reason"].iloc[0] and totals.rows_in == n + len(totals.dropped)
    if name.endswith(".csv"):
        assert got.read_text() == expected.read_text()
    else:
        pd.testing.assert_frame_equal(pd.read_parquet(got), pd.read_parquet(expected))
    assert _rejects_text(got.with_name("preds.rejects.csv")) == _rejects_text(expected.with_name("preds.rejects.csv"))


def test_rechunked_cuts_at_the_same_rows() -> None:
    frames = [pd.DataFrame({"a": range(start, start + size)}) for start, size in ((0, 3), (3, 0), (3, 5), (8, 1))]
    chunks = list(runs.rechunked(frames, 4))
    assert [c["a"].tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    assert all(c.index.tolist() == list(range(len(c))) for c in chunks)


# ---------------------------------------------------------------------------------------------- training's image rows
def test_embedding_rows_read_what_embed_returns(clean_catalog_dir: Path, tmp_path: Path) -> None:
    """Rows left in the memory-mapped cache read as ``embed``'s array: selected lazily, transformed as read, zeros
    for a product without a usable image; ``image_scaling`` gives the array's figures from them."""
    import numpy as np

    from deepfusion.embeddings import EmbeddingRows, ImageEmbedder, concatenate_rows
    from deepfusion.inputs import image_scaling

    paths = [*sorted(map(str, (clean_catalog_dir / "images").glob("*.jpg"))), None, str(tmp_path / "gone.jpg")]
    embedder = ImageEmbedder(image_size=SMALL, cache_dir=tmp_path / "cache", progress=False)
    array, ok = embedder.embed(paths)
    rows = embedder.rows(paths)
    assert rows.shape == array.shape and rows.ok.tolist() == ok.tolist() == [True] * (len(paths) - 2) + [False] * 2
    pick = [len(paths) - 1, 3, 0, 3]
    assert (rows[pick].read() == array[pick]).all() and (rows[2:5].read() == array[2:5]).all()
    doubled = rows.transformed(lambda x: x * 2)
    # What training.ModalityData.batch does with a batch of rows.
    assert (np.ascontiguousarray(doubled[pick], dtype=np.float32) == array[pick] * 2).all()
    assert doubled.astype("float32") is doubled
    # Joined rows (training + validation products) stay unread when they share the cache and the transform.
    joined = concatenate_rows([doubled[pick], doubled[2:5]])
    assert isinstance(joined, EmbeddingRows) and (joined.read() == np.concatenate([array[pick], array[2:5]]) * 2).all()
    mixed = concatenate_rows([doubled[pick], rows[2:5]])  # another transform: read
    assert isinstance(mixed, np.ndarray) and (mixed == np.concatenate([array[pick] * 2, array[2:5]])).all()
    for got, expected in zip(image_scaling(rows[ok], rows.dim), image_scaling(array[ok], rows.dim), strict=True):
        assert got.dtype == expected.dtype and (got == expected).all()


def test_mean_std_are_numpy_figures_bit_for_bit(tmp_path: Path) -> None:
    import numpy as np

    from deepfusion.embeddings import EmbeddingRows, EmbeddingStore

    rng = np.random.default_rng(0)
    values = rng.gamma(0.5, 1.0, size=(1001, 40)).astype(np.float16)
    store = EmbeddingStore(tmp_path / "store", dim=40)
    keys = [f"{i:040x}" for i in range(len(values))]
    store.add(keys[:600], values[:600])
    store.add(keys[600:], values[600:])
    shard, row = store.locate(keys)
    rows = EmbeddingRows(store, shard, row, 40)
    full = values.astype(np.float32)
    for chunk_rows in (1, 7, 256, 5000):
        mean, std = rows.mean_std(chunk_rows)
        assert (mean == full.mean(axis=0)).all() and (std == full.std(axis=0)).all()


def test_no_metadata_view_shares_the_first_rows() -> None:
    """The no-metadata network's inputs for the first rows (the products before their blanked copies) are views of
    the training inputs, a sparse title included, and batch exactly as a copy of those rows would."""
    import numpy as np
    import scipy.sparse as sp

    from deepfusion.inputs import no_metadata_view
    from deepfusion.training import ModalityData

    rng = np.random.default_rng(0)
    n, rows = 30, 12  # fewer than half of the rows: scipy's constructor would copy such a slice
    title = sp.random(n, 50, density=0.1, format="csr", dtype=np.float32, random_state=1)
    image = rng.normal(size=(n, 8)).astype(np.float32)
    present = {m: rng.random(n) < 0.8 for m in ("metadata", "title", "image")}
    data = ModalityData({"metadata": image[:, :3].copy(), "title": title, "image": image}, present)
    scores = rng.normal(size=(rows, 4)).astype(np.float32)
    view = no_metadata_view(data, np.arange(rows), ("title", "image"), scores)
    assert np.shares_memory(view.features["title"].data, title.data)
    assert np.shares_memory(view.features["image"], image)
    copied = no_metadata_view(data, np.arange(rows)[::-1].copy(), ("title", "image"), scores)  # fancy index: a copy
    idx = np.array([5, 0, 11, 3])
    got, want = view.batch(idx), copied.batch(rows - 1 - idx)
    for name in ("title", "image", "text_scores"):
        a, b = got.inputs[name], want.inputs[name]
        if name == "title":
            assert all(bool((x == y).all()) for x, y in zip(
                (a.indices, a.offsets, a.weights), (b.indices, b.offsets, b.weights), strict=True))
        elif name == "image":
            assert bool((a == b).all())
        assert bool((got.present[name] == want.present[name]).all())
