"""Tables of the cost-growth section: time and memory from 10k to 400k products, and batch prediction on Ray."""

from __future__ import annotations

from typing import Any

from result_files import Runs

from . import md_table, source


def _per_product(a: dict[str, Any], b: dict[str, Any], key: str = "products") -> float | None:
    """Peak RSS added per product (bytes) from step row ``a`` to the larger ``b``."""
    if b[key] == a[key]:
        return None
    return (b["peak_rss_mb"] - a["peak_rss_mb"]) * 1e6 / (b[key] - a[key])


def _what(r: dict[str, Any]) -> str:
    if r["step"] == "load":
        return f"validated table {r['table_bytes_per_product']:.0f} B/product"
    if r["step"] == "embed":
        return f"{r['cache']} cache, {r['computed']:,} images computed"
    if r["step"] == "fit":
        return f"{r['inputs']}, {r['train']:,} train + {r['val']:,} validation, {r['epochs_run']} epochs"
    return "local engine, warm cache, Parquet out"


def _steps_table(f: dict[str, Any], date: str) -> str:
    catalogs = f["catalogs"]
    return md_table(
        "Cost growth: time and memory from 10k to 400k products",
        f"Measured {date} on {f['cpus']} CPUs (`python benchmarks/run.py --sections scaling`, "
        "opt-in; benchmarks/scaling.py). Each step runs in a process of its own; peak RSS is that process's "
        "high-water mark (VmHWM), imports included. Model: the default fusion model (metadata + title + image), "
        "predicting with the model fitted at 40k. The 400k catalog is the real one repeated "
        f"{f['repeats']} times with changed ids (same image files), so its distinct images are the 40k "
        "catalog's: they are embedded once (cold, 40k) and embedding at 400k reads the cache. Products/s counts "
        "training products for fit.",
        ["step", "catalog products", "what", "wall s", "products/s", "peak RSS MB"],
        [
            [
                r["step"],
                f"{catalogs[r['catalog']]:,}",
                _what(r),
                f"{r['seconds']:,.1f}",
                f"{r.get('train', r['products']) / r['seconds']:,.0f}",
                f"{r['peak_rss_mb']:,.0f}",
            ]
            for r in f["rows"]
        ],
    )


def _growth(f: dict[str, Any]) -> str:
    rows, catalogs = f["rows"], f["catalogs"]

    def find(step: str, catalog: str, **tags: Any) -> dict[str, Any]:
        return next(r for r in rows if r["step"] == step and r["catalog"] == catalog
                    and all(r.get(k) == v for k, v in tags.items()))

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
    return (
        "Peak RSS added per product from 40k to 400k: "
        + "; ".join(growth)
        + f". Fit: {fit_per:,.0f} B per training product from 10k to 40k. Fit was not run at 400k: growing "
        f"as measured, its {train400:,} training products would take about {fit_s400 / 3600:.1f} h and "
        f"{fit_mb400 / 1000:.1f} GB here."
        + (f"\n\n{f['note']}" if f.get("note") else "")
        + "\n\nImage features at training time: `ImageEmbedder.embed` hands the trainer float32 vectors of "
        f"{e40['dim']:,} values, {e40['features_bytes_per_product']:,.0f} B per product; the embedding cache "
        "behind it is memory-mapped float16 shards, of which the process keeps only a sorted key index. With the "
        "fit's own copies of those features (scaled, and for the blanked training copies), the fusion fit at 40k "
        f"peaks at {fit40['peak_rss_mb']:,.0f} MB against {text_fit['peak_rss_mb']:,.0f} MB for the same fit "
        f"without images (metadata + title, {text_fit['seconds']:,.0f} s): {image_share:,.0f} B per training "
        "product for the image input."
    )


def _agreement_cell(agreement: dict[str, Any] | None) -> str:
    if not agreement:
        return ""
    if not agreement["same_rows"]:
        return "rows differ"
    return f"{agreement['same_labels']:.2%} (confidence within {agreement['max_confidence_diff']:.4f})"


def _ray(f: dict[str, Any]) -> str:
    ray_rows = f["ray"]["rows"]
    local = ray_rows[0]
    md = md_table(
        "Batch prediction on Ray",
        f"The {local['products']:,} products of the {f['ray']['catalog']} catalog with the fusion model fitted at "
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
    ray = {r["actors"]: r for r in ray_rows if r["engine"] == "ray"}
    if 1 in ray and 2 in ray:
        one, added = ray[1]["products_per_s"], ray[2]["products_per_s"] - ray[1]["products_per_s"]
        md += (
            f"\n\nThe second actor added {added:,.0f} products/s ({added / one:.0%} of the first actor's rate) on "
            f"this {f['cpus']}-CPU machine, where both actors share the cores with the image-decoding tasks and the "
            "driver. Where each actor gets a core of its own (a cluster, or a node with cores to spare), an added "
            f"actor is expected to add up to one actor's rate, about {one:,.0f} products/s per core; here the "
            f"second one added {added:,.0f}."
        )
    return md


def scaling(runs: Runs) -> str | None:
    run = runs.latest("scaling")
    if not run:
        return None
    f = run.figures
    return "\n\n".join([_steps_table(f, run.date), _growth(f), _ray(f), source(run)])


def scaling_memory(runs: Runs) -> str | None:
    """The scaling_memory section's steps, beside the cost-growth section's (measured before streaming)."""
    run = runs.latest("scaling_memory")
    if not run:
        return None
    f = run.figures
    rows, catalogs = f["rows"], f["catalogs"]
    before = (runs.latest("scaling").figures["rows"] if runs.latest("scaling") else [])

    def find(rows: list[dict[str, Any]], step: str, catalog: str, **tags: Any) -> dict[str, Any] | None:
        return next((r for r in rows if r["step"] == step and r["catalog"] == catalog
                     and all(r.get(k) == v for k, v in tags.items())), None)

    def what(r: dict[str, Any]) -> str:
        if r["step"] == "embed":
            return f"{r['cache']} cache, {r['computed']:,} images computed"
        if r["step"] == "fit":
            return f"{r['inputs']}, {r['train']:,} train + {r['val']:,} validation, {r['epochs_run']} epochs"
        if r["step"] == "predict":
            return "local engine, streamed, warm cache, Parquet out"
        return f"Ray driver, {r['actors']} actor, every image computed"

    md = md_table(
        "Memory that does not grow with the catalog",
        f"Measured on {f['cpus']} CPUs shared with other jobs (wall times are not comparable with the cost-growth "
        "table's), `python benchmarks/run.py --sections scaling_memory`: the steps of benchmarks/scaling.py, each "
        f"in a process of its own, peak RSS its VmHWM. `predict` streams the catalog ({f['chunk_rows']:,} rows at a "
        "time) and predicts with the fusion model fitted at 10k, every image in the cache; the fits read image "
        "vectors memory-mapped from the cache (`EmbeddingRows`); the Ray rows are the driver's peak with one actor. "
        "The catalogs are the cost-growth section's 10k sample: its first 4k products, all of it, and all of it "
        "repeated 4 and 40 times with changed ids (same image files).",
        ["step", "catalog products", "what", "wall s", "peak RSS MB"],
        [[r["step"], f"{catalogs[r['catalog']]:,}", what(r), f"{r['seconds']:,.1f}", f"{r['peak_rss_mb']:,.0f}"]
         for r in rows],
    )
    notes = []
    p40, p400 = find(rows, "predict", "40k"), find(rows, "predict", "400k")
    if p40 and p400:
        old = (find(before, "predict", "40k"), find(before, "predict", "400k"))
        was = f" (before streaming: {_per_product(*old):,.0f} B)" if all(old) else ""  # type: ignore[arg-type]
        notes.append(f"`predict` peak RSS added per product from 40k to 400k: {_per_product(p40, p400):,.0f} B{was}.")
    f4, f10 = find(rows, "fit", "4k", inputs="fusion"), find(rows, "fit", "10k", inputs="fusion")
    if f4 and f10:
        old = (find(before, "fit", "10k", inputs="fusion"), find(before, "fit", "40k", inputs="fusion"))
        was = (f" (before, from 10k to 40k: {_per_product(*old, key='train'):,.0f} B)"  # type: ignore[arg-type]
               if all(old) else "")
        notes.append(f"Fusion fit: {_per_product(f4, f10, key='train'):,.0f} B of peak RSS per training product "
                     f"from 4k to 10k{was}.")
    r10, r40 = find(rows, "ray_predict", "10k"), find(rows, "ray_predict", "40k")
    if r10 and r40:
        notes.append(f"Ray driver: {_per_product(r10, r40):,.0f} B per product from 10k to 40k.")
    notes += [f["note"]] if f.get("note") else []
    return "\n\n".join([md, *([" ".join(notes)] if notes else []), source(run)])
