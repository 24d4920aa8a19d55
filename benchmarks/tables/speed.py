"""Tables of speed: image embedding, image links, batch prediction, serving."""

from __future__ import annotations

from typing import Any

from result_files import Runs

from . import md_table, source


def embedding(runs: Runs) -> str | None:
    run = runs.latest("embedding")
    if not run:
        return None
    f = run.figures
    base = next(r for r in f["rows"] if r["size"] == "224x168")
    md = [
        "## Image embedding throughput",
        "",
        f"Frozen EfficientNet-Lite0, batch 64, same {f['sample_images']} real images for every option, measured in "
        "one run (onnxruntime decodes the next batch on worker threads while the current one runs; eager torch is "
        "timed on pre-decoded tensors, so its figure flatters it).",
        "",
        "| input (HxW) | eager torch img/s | onnxruntime img/s | cached img/s | onnxruntime vs 224x168 |",
        "|---|---|---|---|---|",
    ]
    for r in f["rows"]:
        eager = f"{r['torch_eager_img_s']:.0f}" if "torch_eager_img_s" in r else "—"
        md.append(
            f"| {r['size']} | {eager} | {r['onnxruntime_img_s']:.0f} | {r['cached_img_s']:.0f} | "
            f"{r['onnxruntime_img_s'] / base['onnxruntime_img_s']:.2f}x |"
        )
    cold, n = f["cold_seconds"], f["n_images"]
    md += [
        "",
        f"Whole catalog ({n:,} images, default 224x168): cold {cold:.0f} s ({n / cold:.0f} img/s), warm (all from "
        f"the cache) {f['warm_seconds']:.1f} s. ONNX vs eager torch at "
        f"224x168: {base['onnxruntime_img_s'] / base['torch_eager_img_s']:.1f}x.",
        "",
        source(run),
    ]
    return "\n".join(md)


def _spread(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,.0f}" if round(lo) == round(hi) else f"{lo:,.0f}-{hi:,.0f}"


def links(runs: Runs) -> str | None:
    run = runs.latest("links")
    if not run:
        return None
    f = run.figures
    rate = f["images_per_s"]
    n_runs = len(rate["fetch"])
    where = f" {f['note']}" if f.get("note") else ""
    return md_table(
        "Image links: fetched vs local files",
        f"`{f['command']}`: {f['images']} generated JPEG photos ({f['mean_kb']} KB on average) served by a "
        f"loopback HTTP server in the same process, {f['workers']} downloads at once.{where}",
        ["images from", "img/s"],
        [
            ["links, empty URL cache (download, type/magic/decode checks, atomic cache write)", _spread(rate["fetch"])],
            ["links, second run (every link found in the URL cache; no request)", _spread(rate["cached"])],
            ["local files (`check_images`: read, hash, decode check)", _spread(rate["local"])],
        ],
    ) + (
        f"\n\n{n_runs} runs; the ranges are their spread. " if n_runs > 1 else "\n\n"
    ) + "A second run then reads the cached files at local-file speed.\n\n" + source(run)


def prediction(runs: Runs) -> str | None:
    run = runs.latest("prediction")
    if not run:
        return None
    f = run.figures
    return "\n".join([
        "## Batch prediction throughput",
        "",
        f"`Predictor.predict_frame` on the {f['test_products']:,} test products, one process, measured in the same "
        "run:",
        "",
        "| what | products/s |",
        "|---|---|",
        f"| fusion model, image embeddings cached | {f['warm']:.0f} |",
        f"| fusion model, images embedded on the fly | {f['cold']:.0f} |",
        f"| backbone forward pass alone (the floor for new images) | {f['floor']:.0f} |",
        f"| metadata-only model | {f['metadata']:.0f} |",
        "",
        source(run),
    ])


def _serving_table(f: dict[str, Any], date: str) -> str:
    rows = f["rows"]

    def find(backend: str, image: str, c: int) -> dict[str, Any]:
        return next(r for r in rows if r["backend"] == backend and r["image"] == image and r["concurrency"] == c)

    table = []
    for r in rows:
        other = find("model folder", r["image"], r["concurrency"])
        table.append([
            "exported folder (onnxruntime)" if r["backend"] == "export" else "model folder (torch)",
            f"{r['image']} image",
            str(r["concurrency"]),
            f"{r['p50_ms']:.1f}",
            f"{r['p95_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['requests_per_s']:.0f}",
            f"{r['requests_per_s'] / other['requests_per_s']:.2f}x",
        ])
    new1, new4, cached4 = find("export", "new", 1), find("export", "new", 4), find("export", "cached", 4)
    return md_table(
        "Serving: latency and throughput, one product per request",
        f"Measured {date} on {f['cpus']} CPUs (`python benchmarks/run.py --sections "
        "serving`, benchmarks/latency.py): the server (`deepfusion.service.serve`, what `deepfusion serve` runs) "
        "started in a process of its own per scenario, the fusion model (metadata + "
        f"title + image), {f['requests']} requests per scenario, each one test product with its photo inline "
        "(base64 JSON), sent from 1 or 4 client threads with keep-alive connections; client and server share the "
        f"cores. New image: a photo the server has not seen; cached: the same {f['cached_products']} products "
        "repeated after one pass. Latency is the client's time per request; the last column is throughput against "
        "the model folder's in the same scenario.",
        ["served", "image", "concurrency", "p50 ms", "p95 ms", "p99 ms", "requests/s", "vs model folder"],
        table,
    ) + (
        f"\n\nAims (issue #25): p95 at most 20 ms for a new image at concurrency 1: {new1['p95_ms']:.1f} ms; at "
        f"least 100 requests/s at concurrency 4: {new4['requests_per_s']:.0f} with new images, "
        f"{cached4['requests_per_s']:.0f} with cached ones."
    )


def _agreement_table(rows: list[dict[str, Any]]) -> str:
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


def serving(runs: Runs) -> str | None:
    run = runs.latest("serving")
    if not run:
        return None
    return "\n\n".join([_serving_table(run.figures, run.date), _agreement_table(run.figures["agreement"]),
                        source(run)])
