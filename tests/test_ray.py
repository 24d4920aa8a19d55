"""The Ray engine (distributed.py): `deepfusion predict --engine ray` writes what the local engine writes (same rows,
labels, confidences, rejects file), from a model folder or an exported one, on a Ray it starts itself, one already
running in the process, or a cluster joined by address; and the audit's folds as Ray tasks give the sequential
loop's probabilities, so `deepfusion audit --engine ray` finds the local engine's label issues. All on tiny
catalogs and a local Ray of two CPUs."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_catalog
from typer.testing import CliRunner

from deepfusion import Predictor, load_catalog, runs
from deepfusion import distributed as dist  # imports Ray only inside its functions
from deepfusion import runtime as rt
from deepfusion.cli import app
from deepfusion.export import export_model

ray = pytest.importorskip("ray")


SMALL = (64, 48)
runner = CliRunner()
EXTRA_ROWS = [
    "6001,Men,Apparel,Topwear,,Red,Summer,2011,Casual,",  # no title: the no-title network answers
    "6002,,,,,,,,,",  # nothing but the id
    "6003,,,,,,,,,Titan Unisex Black Watch",  # title only
]


@pytest.fixture(scope="module", autouse=True)
def ray_env(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Token authentication (Ray's default for a local cluster since 2.59) with a token in the environment, so
    no Ray started here writes ~/.ray/auth_token; no RAY_ADDRESS from the caller's shell; one embedding cache.

    RAY_AUTH_MODE is left unset: ``ray.init`` sets it to "token" for a new local cluster and refreshes the
    configuration it read when ray was imported. Setting it here, after that import, would leave this process
    reading "disabled" while the Ray it starts requires a token."""
    mp = pytest.MonkeyPatch()
    mp.delenv("RAY_AUTH_MODE", raising=False)
    mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    mp.delenv("RAY_ADDRESS", raising=False)
    mp.setenv("DEEPFUSION_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    if ray.is_initialized():
        ray.shutdown()
    os.environ.pop("RAY_AUTH_MODE", None)  # set by ray.init, not by the monkeypatch
    mp.undo()


@pytest.fixture
def ray_running() -> object:
    """The module's Ray, started on first use (a test that starts its own may have shut it down before)."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2, log_to_driver=False)
    return ray


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """metadata + title + image (64x48) with the no-title network, saved and exported."""
    root = tmp_path_factory.mktemp("model")
    frame = load_catalog(make_catalog(root / "catalog", messy=False, seed=1), progress=False).products
    predictor = Predictor(["metadata", "title", "image"], preset="small", progress=False, head={"epochs": 5},
                          image_size=SMALL)
    predictor.fit(frame.iloc[::2], frame.iloc[1::2])
    folder = predictor.save(root / "model")
    return folder, export_model(folder, root / "exported")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The messy catalog (missing, corrupt and truncated images, a duplicate id, unquoted commas) plus products
    without a title or without attributes."""
    root = make_catalog(tmp_path_factory.mktemp("data") / "catalog", seed=3)
    with (root / "styles.csv").open("a", encoding="utf-8") as f:
        f.write("\n".join(EXTRA_ROWS) + "\n")
    return root


@pytest.fixture(scope="module")
def local(model: tuple[Path, Path], catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local engine's CSV and Parquet predictions (and rejects) in one folder."""
    out = tmp_path_factory.mktemp("local")
    for name in ("preds.csv", "preds.parquet"):
        runs.predict_catalog(model[0], catalog, out / name, progress=False)
    return out


def _invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _assert_same(expected: pd.DataFrame, got: pd.DataFrame) -> None:
    """Identical rows and labels; confidences as written (4 decimals) equal up to one rounding step."""
    assert list(got.columns) == list(expected.columns)
    assert len(got) == len(expected)
    for col in expected.columns:
        if col == "confidence" or col.endswith("_confidence"):
            assert np.abs(got[col].to_numpy() - expected[col].to_numpy()).max() <= 1e-4 + 1e-12, col
        else:
            assert got[col].tolist() == expected[col].tolist(), col


# ---------------------------------------------------------------------------------------------- pieces
def test_helpers_agree_with_what_they_mirror(model: tuple[Path, Path], catalog: Path) -> None:
    """decode_pixels is ExportedModel.image_pixels without a loaded model; output_columns is runs'."""
    exported = rt.ExportedModel.load(model[1])
    images = sorted((catalog / "images").glob("*.jpg"))[:8]  # the first is a grayscale JPEG
    for image in images:
        data = image.read_bytes()
        try:
            expected = exported.image_pixels(data)
        except rt.DECODE_ERRORS:
            with pytest.raises(rt.DECODE_ERRORS):
                dist.decode_pixels(data, exported.image.size, exported.max_image_pixels)
            continue
        assert np.array_equal(dist.decode_pixels(data, exported.image.size, exported.max_image_pixels), expected)
    assert dist.CONFIDENCE_DECIMALS == runs.CONFIDENCE_DECIMALS
    frame = pd.DataFrame(
        {
            "id": ["a"],
            "confidence": [0.123456],
            "top1_label": ["x"],
            "top1_confidence": [0.1],
            "top2_confidence": [1 / 3],
        }
    )
    pd.testing.assert_frame_equal(dist.output_columns(frame), runs.output_columns(frame))


def test_unrounded_probabilities_match_the_predictor(model: tuple[Path, Path], catalog: Path) -> None:
    """What an actor computes, before the 4-decimal rounding of the file: the Predictor's labels, inputs and
    review flags, probabilities within 1e-5."""
    products = load_catalog(catalog, require_target=False, progress=False).products
    expected = Predictor.load(model[0], progress=False).predict_frame(products, top_k=3)
    predictor = dist.BatchPredictor(dist._export_files(model[1]), top_k=3, threads=1, max_image_pixels=10**7)
    columns = [*predictor.columns, dist.IMAGE_COLUMN]
    got = []
    for block in dist._blocks(products, columns, 16):  # several batches, as the actors get them
        batch = {c: block[c].to_numpy() for c in block.columns}
        decoded = dist.decode_images(batch, size=predictor.model.image.size, max_pixels=10**7)
        got.append(predictor.predict_table(decoded))
    table = pd.concat(got, ignore_index=True)
    assert table[dist.ROW].tolist() == list(range(len(products)))
    table = table.drop(columns=dist.ROW)
    assert list(table.columns) == list(expected.columns)
    for col in expected.columns:
        if col.endswith("confidence"):
            assert np.abs(table[col].to_numpy() - expected[col].to_numpy()).max() <= 1e-5, col
        else:
            assert table[col].tolist() == expected[col].tolist(), col
    assert set(table["inputs"]) >= {"metadata+title+image", "metadata+title", "title", "none"}


# ---------------------------------------------------------------------------------------------- predict
def test_cli_ray_engine_starts_its_own_ray_and_matches_local(
    model: tuple[Path, Path], catalog: Path, local: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`deepfusion predict MODEL --engine ray` with no Ray running: it starts a local one, writes the local
    engine's file and rejects, keeps the shards, and shuts its Ray down (RAY_AUTH_MODE as it was)."""
    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    out = tmp_path / "preds.csv"
    text = _invoke("predict", str(model[0]), "--data", str(catalog), "--out", str(out), "--engine", "ray", "--quiet")
    assert f"{len(pd.read_csv(local / 'preds.csv'))} predictions -> {out}" in text
    assert not ray.is_initialized()
    assert "RAY_AUTH_MODE" not in os.environ
    _assert_same(pd.read_csv(local / "preds.csv", dtype={"id": str}), pd.read_csv(out, dtype={"id": str}))
    # The same file but for Pillow's "<_io.BytesIO object at 0x...>" in a reason, which differs on every load.
    rejects = [re.sub(r" at 0x[0-9a-f]+", "", (d / "preds.rejects.csv").read_text()) for d in (tmp_path, local)]
    assert rejects[0] == rejects[1]
    shards = list((tmp_path / "preds.csv.parts").glob("*.parquet"))
    assert shards and sum(len(pd.read_parquet(s)) for s in shards) == len(pd.read_csv(out))


def test_exported_folder_parquet_many_blocks(
    ray_running: object, model: tuple[Path, Path], catalog: Path, local: Path, tmp_path: Path
) -> None:
    """An exported folder, the Ray already running in the process (left running), one actor, small batches:
    the Parquet file equals the local engine's, in catalog order; a second run replaces the shards."""
    out = tmp_path / "preds.parquet"
    n, _ = dist.predict_catalog_ray(model[1], catalog, out, actors=1, batch_size=7, progress=False)
    expected = pd.read_parquet(local / "preds.parquet")
    assert n == len(expected)
    got = pd.read_parquet(out)
    _assert_same(expected, got)
    assert got.dtypes.to_dict() == expected.dtypes.to_dict()
    assert ray.is_initialized()
    first = sorted(p.name for p in (tmp_path / "preds.parquet.parts").iterdir())
    dist.predict_catalog_ray(model[1], catalog, out, actors=1, batch_size=7, progress=False)
    again = sorted(p.name for p in (tmp_path / "preds.parquet.parts").iterdir())
    assert len(again) == len(first) and not set(again) & set(first)


def test_streamed_catalog_in_several_chunks_gives_the_whole_catalog_predictions(
    ray_running: object, model: tuple[Path, Path], catalog: Path, tmp_path: Path
) -> None:
    """The driver streams the catalog (chunks of 4 rows, a line that cannot be read in the middle one) into
    OUT.input/, which it removes afterwards: the file holds the predictions of the whole catalog loaded at once,
    and the rejects file is the whole load's."""
    lines = (catalog / "styles.csv").read_text(encoding="utf-8").splitlines()
    data = tmp_path / "catalog"
    (data / "images").mkdir(parents=True)
    for image in (catalog / "images").iterdir():
        (data / "images" / image.name).write_bytes(image.read_bytes())
    lines.insert(len(lines) // 2, "7001,Men,Apparel")
    (data / "styles.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    products = load_catalog(data, require_target=False, progress=False)
    expected = runs.output_columns(Predictor.load(model[0], progress=False).predict_frame(products.products, top_k=3))
    out = tmp_path / "preds.csv"
    n, totals = dist.predict_catalog_ray(model[1], data, out, actors=1, batch_size=3, chunk_rows=4, progress=False)
    assert n == len(products.products) == totals.n_products and totals.rows_in == products.rows_in
    assert "7001" in set(totals.dropped["id"])
    _assert_same(pd.read_csv(io.StringIO(expected.to_csv(index=False)), dtype={"id": str}),
                 pd.read_csv(out, dtype={"id": str}))
    written = re.sub(r" at 0x[0-9a-f]+", "", (tmp_path / "preds.rejects.csv").read_text())
    assert written == re.sub(r" at 0x[0-9a-f]+", "", products.rejects.to_csv(index=False))
    assert not (tmp_path / "preds.csv.input").exists()


def test_joins_a_cluster_by_address(
    ray_running: object, model: tuple[Path, Path], catalog: Path, local: Path, tmp_path: Path
) -> None:
    """A separate driver process joins the running Ray by --address (the package's code shipped to the workers
    as py_modules) and disconnects, leaving the cluster up."""
    address = ray.get_runtime_context().gcs_address
    out = tmp_path / "preds.csv"
    args = ["predict", str(model[1]), "--data", str(catalog), "--out", str(out), "--engine", "ray"]
    done = subprocess.run(
        [sys.executable, "-m", "deepfusion.cli", *args, "--address", address, "--actors", "1", "--quiet"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "RAY_AUTH_MODE": "token"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same(pd.read_csv(local / "preds.csv", dtype={"id": str}), pd.read_csv(out, dtype={"id": str}))
    assert ray.get(ray.put(1)) == 1  # still connected: the other driver only disconnected


def test_user_errors_exit_2(ray_running: object, model: tuple[Path, Path], catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", str(model[0]), "--data", str(catalog), "--out", str(out), "--address", "x"])
    assert result.exit_code == 2 and "--address needs --engine ray" in result.output
    parts = tmp_path / "preds.csv.parts"
    parts.mkdir()
    (parts / "notes.txt").write_text("mine")
    result = runner.invoke(
        app, ["predict", str(model[1]), "--data", str(catalog), "--out", str(out), "--engine", "ray", "--quiet"]
    )
    assert result.exit_code == 2 and "not prediction shards (notes.txt)" in result.output
    assert (parts / "notes.txt").read_text() == "mine"
    # Two actors and the reading/writing tasks do not fit two CPUs: refused, instead of Ray waiting forever.
    with pytest.raises(dist.DistributedError, match="has 2 CPUs"):
        dist.predict_catalog_ray(model[1], catalog, tmp_path / "other.csv", actors=2, progress=False)


# ---------------------------------------------------------------------------------------------- audit folds
def test_audit_folds_as_ray_tasks_match_the_sequential_loop(ray_running: object, tmp_path: Path) -> None:
    from deepfusion.audit import out_of_fold_probabilities, plan_folds
    from deepfusion.catalog import ID, TARGET
    from deepfusion.config import ModelConfig

    products = load_catalog(make_catalog(tmp_path / "c", n_per_class=25, messy=False, seed=2), progress=False).products
    products = products.sort_values(ID, kind="stable").reset_index(drop=True)
    plan = plan_folds(products, 2, seed=0, min_class_groups=2)
    classes = sorted(products[TARGET].astype(str).unique())
    config = ModelConfig.create(("metadata", "title"), preset="small", seed=0, head={"epochs": 5}, title_fallback=False)
    kwargs = {"config": config, "progress": False}
    expected, expected_stats = out_of_fold_probabilities(products, plan, classes, **kwargs)
    got, stats = dist.run_folds_ray(products, plan, classes, **kwargs)
    assert [s["fold"] for s in stats] == [0, 1]
    for a, b in zip(stats, expected_stats, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    assert np.abs(got - expected).max() <= 1e-5


def test_cli_audit_on_ray_gives_the_local_label_issues(ray_running: object, tmp_path: Path) -> None:
    """`deepfusion audit --engine ray` (fold models as Ray tasks on the module's Ray) finds the same out-of-fold
    label issues as the local engine with the same seed: the planted label errors, with the same suggestions."""
    from test_audit import FLIPS, plant_errors

    data = make_catalog(tmp_path / "catalog", n_per_class=20, messy=False, seed=1)
    plant_errors(data)
    args = ["audit", "--data", str(data), "--folds", "2", "--modalities", "metadata,title", "--seed", "0", "--quiet"]
    _invoke(*args, "--out", str(tmp_path / "local"))
    text = _invoke(*args, "--out", str(tmp_path / "ray"), "--engine", "ray")
    assert "products queued for review" in text
    assert ray.is_initialized()  # the Ray already running in the process was used and left running
    queues = {e: pd.read_csv(tmp_path / e / "audit.csv", dtype={"id": str}) for e in ("local", "ray")}
    issues = {e: q[q["issue"].str.contains("label")].set_index("id").sort_index() for e, q in queues.items()}
    assert set(FLIPS) <= set(issues["ray"].index)
    assert list(issues["ray"].index) == list(issues["local"].index)
    for col in ("current_label", "suggested_label", "issue"):
        assert issues["ray"][col].tolist() == issues["local"][col].tolist(), col
    assert np.abs(issues["ray"]["confidence"] - issues["local"]["confidence"]).max() <= 1e-4
    assert set(queues["ray"]["id"]) == set(queues["local"]["id"])
    summaries = {e: json.loads((tmp_path / e / "audit.json").read_text()) for e in ("local", "ray")}
    assert [summaries[e]["engine"] for e in ("local", "ray")] == ["local", "ray"]
    for a, b in zip(summaries["ray"]["fold_stats"], summaries["local"]["fold_stats"], strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}


def test_audit_engine_errors(tmp_path: Path) -> None:
    data = make_catalog(tmp_path / "catalog", messy=False)
    result = runner.invoke(app, ["audit", "--data", str(data), "--out", str(tmp_path / "o"), "--address", "x"])
    assert result.exit_code == 2 and "--address needs --engine ray" in result.output
    result = runner.invoke(app, ["audit", "--data", str(data), "--out", str(tmp_path / "o"), "--engine", "spark"])
    assert result.exit_code == 2


def test_embedding_on_ray_fills_the_cache_with_the_local_vectors(ray_running: object, tmp_path: Path) -> None:
    """embed_images_ray writes the vectors ImageEmbedder.embed computes (the same cache keys and float16 values),
    so a fit afterwards computes nothing; a second call finds nothing to embed."""
    from deepfusion.embeddings import ImageEmbedder

    frame = load_catalog(make_catalog(tmp_path / "catalog", messy=False, seed=4), progress=False).products
    paths = list(frame["image_path"])
    on_ray = ImageEmbedder(image_size=SMALL, cache_dir=tmp_path / "ray-cache", progress=False)
    assert dist.embed_images_ray(on_ray, paths, actors=1, progress=False) == len(set(paths))
    assert on_ray.uncached(paths) == {}
    assert dist.embed_images_ray(on_ray, paths, actors=1, progress=False) == 0
    local = ImageEmbedder(image_size=SMALL, cache_dir=tmp_path / "local-cache", progress=False)
    expected, ok = local.embed(paths)
    got, got_ok = ImageEmbedder(image_size=SMALL, cache_dir=tmp_path / "ray-cache", progress=False).embed(paths)
    assert ok.all() and got_ok.all()
    np.testing.assert_allclose(got, expected, atol=2e-3, rtol=2e-3)  # float16 vectors from two sessions


def test_cli_train_on_ray_embeds_there_and_trains_the_same_model(
    ray_running: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = make_catalog(tmp_path / "catalog", messy=False, seed=5)
    results = {}
    for engine in ("ray", "local"):
        monkeypatch.setenv("DEEPFUSION_CACHE", str(tmp_path / f"cache-{engine}"))  # each engine embeds afresh
        out = tmp_path / engine
        args = ["train", "--data", str(data), "--out", str(out), "--model", "image", "--preset", "small"]
        args += ["--image-size", "64x48", "--engine", engine, "--actors", "1", "--quiet"]
        with caplog.at_level("INFO", logger="deepfusion.distributed"):
            result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        results[engine] = pd.read_csv(out / "image" / "test_predictions.csv")
    assert any("new images on Ray" in r.getMessage() for r in caplog.records)
    assert list(results["ray"]["predicted"]) == list(results["local"]["predicted"])
    np.testing.assert_allclose(results["ray"]["confidence"], results["local"]["confidence"], atol=1e-3)
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "x"), "--address", "auto"])
    assert result.exit_code == 2 and "--address needs --engine ray" in result.output


def test_exported_tree_model_writes_the_local_engines_level_columns(ray_running: object, tmp_path: Path) -> None:
    """A category-tree model (three label columns, another schema than the fashion one), exported: the Ray engine
    writes the local engine's file, per-level columns included and the id column under the catalog's name."""
    from test_any_catalog import run, write_table
    from test_category_tree import TREE_FLAGS, _new_products, column_table

    table = column_table(tmp_path)
    data = write_table(table, tmp_path / "export.csv")
    run("train", "--data", str(data), "--label", "department,family,kind", "--out", str(tmp_path / "run"),
        *TREE_FLAGS)
    model_dir = tmp_path / "run" / "fusion"
    new = write_table(_new_products(table), tmp_path / "new.csv")
    runs.predict_catalog(model_dir, new, tmp_path / "local.csv", progress=False)
    exported = export_model(model_dir, tmp_path / "exported")
    dist.predict_catalog_ray(exported, new, tmp_path / "ray.csv", actors=1, progress=False)
    expected = pd.read_csv(tmp_path / "local.csv", dtype={"sku": str})
    got = pd.read_csv(tmp_path / "ray.csv", dtype={"sku": str})
    assert {"sku", "prediction_department", "confidence_family", "prediction_kind"} <= set(expected.columns)
    # needs_review sits on the threshold on this tiny catalog (float noise between torch and onnxruntime decides
    # it, as tests/test_export.py explains): its values are left out, its place in the columns is not.
    assert list(got.columns) == list(expected.columns)
    # Confidences as written (4 decimals) equal up to one rounding step; an empty level (NaN) equal to itself.
    pd.testing.assert_frame_equal(got.drop(columns="needs_review"), expected.drop(columns="needs_review"),
                                  check_exact=False, atol=1e-4 + 1e-12, rtol=0)


def test_merge_streams_a_shard_as_large_as_the_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray may write every block of a catalog into one shard, a row group per block and not always in catalog order:
    the merge reads a row group at a time (never a shard whole), restores the order, and a column empty in one
    part keeps the others' type."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = tmp_path / "preds.parquet.parts"
    parts.mkdir()
    frame = pd.DataFrame({dist.ROW: np.arange(13), "id": [f"p{i}" for i in range(13)],
                          "prediction": ["Shirts"] * 13, "level_2": [None] * 6 + ["Tops"] * 7})
    with pq.ParquetWriter(parts / "a.parquet", pa.Table.from_pandas(frame, preserve_index=False).schema) as writer:
        for rows in ([3, 4, 5], [0, 1, 2], [9, 10, 11], [6, 7, 8]):  # blocks in the order Ray finished them
            writer.write_table(pa.Table.from_pandas(frame.iloc[rows], preserve_index=False))
    last = frame.iloc[[12]].assign(level_2=None)  # a shard whose column is all empty: Arrow's null type
    pq.write_table(pa.Table.from_pandas(last, preserve_index=False), parts / "b.parquet")
    read_whole: list[str] = []
    real_read_table = dist.pq.read_table
    monkeypatch.setattr(dist.pq, "read_table", lambda path, *a, **k: read_whole.append(Path(path).name)
                        or real_read_table(path, *a, **k))
    for rows, name in itertools.product((4, 100), ("merged.parquet", "merged.csv")):  # batches within / across shards
        monkeypatch.setattr(dist, "CHUNK_ROWS", rows)
        out = tmp_path / name
        assert dist.merge_shards(parts, out, 13) == 13
        got = pd.read_parquet(out) if name.endswith(".parquet") else pd.read_csv(out)
        assert list(got["id"]) == [f"p{i}" for i in range(13)]
        assert list(got["level_2"].isna()) == [True] * 6 + [False] * 6 + [True]
    assert [n for n in read_whole if n != "merged.parquet"] == []
    with pytest.raises(dist.DistributedError, match="run the prediction again"):
        dist.merge_shards(parts, tmp_path / "short.csv", 14)
    (parts / "c.parquet").write_bytes((parts / "b.parquet").read_bytes())  # row 12 twice
    with pytest.raises(dist.DistributedError, match="each catalog row once"):
        dist.merge_shards(parts, tmp_path / "twice.csv", 14)
