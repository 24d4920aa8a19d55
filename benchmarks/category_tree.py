"""Category trees: the tree model (one network over whole taxonomy paths) against flat per-level models.

For each catalog, the same products and inputs (title TF-IDF + the catalog's attributes) feed
- the tree model: DeepFusion's metadata + title model trained on whole paths (``Predictor`` with a tree label),
  decoded two ways: "path" (the most probable whole path) and "top_down" (the most probable node level by level,
  each conditioned on the parent chosen above it); both only ever predict paths of the training taxonomy;
- flat per-level models: one TF-IDF + linear SVM per level (``baselines.TextSVMBaseline``), each predicting its
  level's value independently; the share of products whose per-level answers form a path that does not exist in
  the training taxonomy is reported.

Catalogs:
- amazon: ``../shared/data/amazon-toys-uk/products.csv`` (label ``amazon_category_and_sub_category``, a path),
  levels 1 and 2 (``depth=2``), level-2 classes with at least 10 products, stratified 80/20 split with seed 0; the
  tree model holds out 10% of its 80% for early stopping and then refits on the whole 80% (``refit``), so both
  sides learn from the same products.
- fashion: ``../shared/data/fashion-product-images-small`` with masterCategory, subCategory and articleType as
  labels; the benchmark's leakage-safe split (``split.split_by_duplicate_groups``, seed 42); SVMs fit on train,
  the tree models on train with validation for early stopping. Two tree models: "text" (title + attributes, the
  SVMs' inputs) and "fusion" (the product's photo as well: DeepFusion's fusion model; the photos are embedded once
  into the embedding cache, a few minutes on 2 cores the first time). ``--variants`` picks them.

The title fallback network and the no-metadata route of the tree model are turned off: they answer only for
products without a title or without any attribute, which the test products here all have, and they add fit time.

Usage: ``PYTHONPATH=src python benchmarks/category_tree.py [--sections amazon,fashion] [--variants text,fusion]
[--preset regularized] [--min-class-size N] [--no-flat] [--results FILE]`` prints a markdown table and writes
``benchmarks/results/category_tree-<date>.json`` (or ``--results``; a variant not run keeps its figures from that
file). ``--min-class-size`` other than 5 (the default until 2026-12-05) stores the tree run under its own key
(``tree_fusion_min2``), so the earlier runs' figures stay beside it. ``--no-flat`` (fashion) fits only the tree
variants and reuses the SVM rows already in the results file, after checking that the split's sizes are the ones
they were measured on.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split

from deepfusion import Predictor
from deepfusion.baselines import TextSVMBaseline
from deepfusion.catalog import TARGET, load_catalog
from deepfusion.config import DEFAULT_MIN_CLASS_SIZE
from deepfusion.schema import CatalogSchema
from deepfusion.split import split_by_duplicate_groups
from deepfusion.taxonomy import Taxonomy, level_metrics

log = logging.getLogger("category_tree")
HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
AMAZON = SHARED / "amazon-toys-uk" / "products.csv"
FASHION = SHARED / "fashion-product-images-small"
FASHION_LEVELS = ["masterCategory", "subCategory", "articleType"]
# Tree model variants: the result key and the inputs.
VARIANTS = {"text": ("tree", ("metadata", "title")), "fusion": ("tree_fusion", ("metadata", "title", "image"))}


# The plain keys ("tree", "tree_fusion") hold runs with the min class size of 5, the default until 2026-12-05.
PLAIN_KEY_MIN_CLASS_SIZE = 5


def variant_key(key: str, min_class_size: int) -> str:
    """The results key of a tree run: the variant's key, with the min class size when it is not 5."""
    return key if min_class_size == PLAIN_KEY_MIN_CLASS_SIZE else f"{key}_min{min_class_size}"


def _level_values(paths: Sequence[tuple[str, ...]], k: int) -> list[str | None]:
    return [p[k] if len(p) > k else None for p in paths]


def flat_per_level(
    train: pd.DataFrame, test: pd.DataFrame, tax: Taxonomy, schema: CatalogSchema, seed: int
) -> dict[str, Any]:
    """One TF-IDF + linear SVM per level on that level's values; per-level accuracy and macro-F1 over the test
    products whose path reaches the level, and how many products' per-level answers form no training path."""
    train_paths = [tax.parse(v) for v in train[TARGET]]
    test_paths = [tax.parse(v) for v in test[TARGET]]
    fields = (list(schema.categorical), list(schema.numeric))
    levels, answers = [], []
    start = time.perf_counter()
    for k, name in enumerate(tax.level_names):
        y_train = _level_values(train_paths, k)
        rows = [i for i, y in enumerate(y_train) if y is not None]
        part = train.iloc[rows].assign(**{TARGET: [y_train[i] for i in rows]})
        model = TextSVMBaseline(("metadata", "title"), seed=seed, metadata_fields=fields).fit(part)
        pred = model.predict(test)
        answers.append(pred)
        truth = _level_values(test_paths, k)
        keep = [i for i, t in enumerate(truth) if t is not None]
        t = [truth[i] for i in keep]
        p = [pred[i] for i in keep]
        levels.append({
            "level": k + 1, "name": name, "products": len(keep),
            "accuracy": float(np.mean([a == b for a, b in zip(t, p, strict=True)])),
            "macro_f1": float(f1_score(t, p, labels=sorted(set(t)), average="macro", zero_division=0)),
        })
    known = {p[: tax.n_levels] for p in train_paths}
    combined = [tuple(str(a[i]) for a in answers) for i in range(len(test))]
    # A product's flat answers, cut where its true path ends, compared with the training taxonomy's paths.
    broken = sum(c[: max(len(t), 1)] not in known for c, t in zip(combined, test_paths, strict=True))
    return {"levels": levels, "paths_not_in_taxonomy": int(broken), "products": len(test),
            "fit_seconds": time.perf_counter() - start}


def path_svm(
    train: pd.DataFrame, test: pd.DataFrame, tax: Taxonomy, schema: CatalogSchema, seed: int
) -> dict[str, Any]:
    """The same TF-IDF + linear SVM trained on whole paths (truncated to the taxonomy's depth) as classes: a tree
    model with a linear classifier, each level read off the predicted path. It separates what whole-path scoring
    costs or gains from what the network does."""
    start = time.perf_counter()
    fields = (list(schema.categorical), list(schema.numeric))
    part = train.assign(**{TARGET: tax.canonical(train[TARGET])})
    model = TextSVMBaseline(("metadata", "title"), seed=seed, metadata_fields=fields).fit(part)
    pred = list(model.predict(test))
    return {**level_metrics(tax.canonical(test[TARGET]), pred, tax), "fit_seconds": time.perf_counter() - start}


def tree_model(
    train: pd.DataFrame,
    val: pd.DataFrame,
    test: pd.DataFrame,
    schema: CatalogSchema,
    *,
    depth: int | None,
    preset: str,
    seed: int,
    refit: bool,
    modalities: Sequence[str] = ("metadata", "title"),
    min_class_size: int = DEFAULT_MIN_CLASS_SIZE,
) -> dict[str, Any]:
    """The tree model's per-level figures under both decodings, and a check that every predicted path is one of
    the training taxonomy's."""
    predictor = Predictor(
        modalities, preset=preset, seed=seed, schema=schema, depth=depth, refit=refit,
        title_fallback=False, metadata_fallback=False, progress=False, min_class_size=min_class_size,
    )
    start = time.perf_counter()
    predictor.fit(train, val)
    tax = predictor.taxonomy
    # Test products whose true path is not one of the model's classes (backed off): wrong at the deeper levels.
    test_backed_off = sum(c != k for c, k in zip(tax.canonical(test[TARGET]), tax.to_known(test[TARGET]),
                                                 strict=True))
    out: dict[str, Any] = {"fit_seconds": time.perf_counter() - start, "paths": len(tax.paths),
                           "merged": tax.merged, "modalities": list(predictor.modalities),
                           "min_class_size": min_class_size, "test_products_backed_off": int(test_backed_off)}
    for decode in ("path", "top_down"):
        predictor.decode = decode
        metrics = predictor.evaluate(test)
        predicted = predictor.predict(test)
        out[decode] = {
            **metrics["levels"],
            "path_accuracy": metrics["accuracy"],
            "paths_not_in_taxonomy": int(sum(p not in set(predictor.taxonomy.paths) for p in predicted)),
        }
    return out


def amazon(
    data: Path = AMAZON, *, preset: str = "regularized", seed: int = 0, min_products: int = 10, tree: bool = True
) -> dict[str, Any]:
    catalog = load_catalog(data, label="amazon_category_and_sub_category", progress=False)
    schema = catalog.schema
    products = catalog.products
    tax = Taxonomy.fit(list(products[TARGET]), depth=2, min_count=1)
    level2 = pd.Series(tax.canonical(products[TARGET]), index=products.index)
    counts = level2.value_counts()
    products = products[level2.map(counts).fillna(0).to_numpy() >= min_products].reset_index(drop=True)
    strata = tax.canonical(products[TARGET])
    train_idx, test_idx = train_test_split(
        np.arange(len(products)), test_size=0.2, stratify=strata, random_state=seed
    )
    train, test = products.iloc[train_idx].reset_index(drop=True), products.iloc[test_idx].reset_index(drop=True)
    strata_train = tax.canonical(train[TARGET])
    fit_idx, val_idx = train_test_split(
        np.arange(len(train)), test_size=0.1, stratify=strata_train, random_state=seed
    )
    tree_result = tree_model(
        train.iloc[fit_idx].reset_index(drop=True), train.iloc[val_idx].reset_index(drop=True), test, schema,
        depth=2, preset=preset, seed=seed, refit=True,
    ) if tree else None
    tax2 = Taxonomy.fit(list(train[TARGET]), depth=2, min_count=1)
    flat = flat_per_level(train, test, tax2, schema, seed)
    flat["path_svm"] = path_svm(train, test, tax2, schema, seed)
    return {"catalog": str(data), "products": len(products), "train": len(train), "test": len(test),
            "level2_classes": int((counts >= min_products).sum()), "inputs": _inputs(schema),
            "tree": tree_result, "flat": flat}


def fashion(
    data: Path = FASHION,
    *,
    preset: str = "regularized",
    seed: int = 42,
    tree: bool = True,
    variants: Sequence[str] = ("text", "fusion"),
    flat: bool = True,
    min_class_size: int = DEFAULT_MIN_CLASS_SIZE,
    expect_split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``expect_split``: sizes the split must have (those the reused SVM rows were measured on), checked before
    any fitting."""
    # The photos are checked (decoded within the pixel budget) only when a variant reads them.
    images = tree and "fusion" in variants
    catalog = load_catalog(data, label=FASHION_LEVELS, progress=False, check_image_files=images)
    schema = catalog.schema
    split = split_by_duplicate_groups(catalog.products, seed=seed)
    indexed = catalog.products.set_index("id", drop=False)
    train, val, test = (indexed.loc[split.ids(s)].reset_index(drop=True) for s in ("train", "val", "test"))
    out: dict[str, Any] = {"catalog": str(data), "products": len(catalog.products), "train": len(train),
                           "val": len(val), "test": len(test), "inputs": _inputs(schema)}
    if images:
        out["test_with_image"] = int(test["image_path"].notna().sum())
    if expect_split is not None:
        differ = {k: (out.get(k), v) for k, v in expect_split.items() if out.get(k) != v}
        if differ:
            raise SystemExit(f"the split differs from the one the stored SVM rows were measured on: {differ}")
    for variant in variants if tree else ():
        key, modalities = VARIANTS[variant]
        out[variant_key(key, min_class_size)] = tree_model(
            train, val, test, schema, depth=None, preset=preset, seed=seed, refit=False, modalities=modalities,
            min_class_size=min_class_size,
        )
    if flat:
        tax = Taxonomy.fit(list(train[TARGET]), columns=schema.levels, min_count=1)
        out["flat"] = flat_per_level(train, test, tax, schema, seed)
        out["flat"]["path_svm"] = path_svm(train, test, tax, schema, seed)
    return out


def _inputs(schema: CatalogSchema) -> str:
    return f"text {', '.join(schema.text)}; attributes {', '.join(schema.metadata)}"


def markdown(name: str, result: dict[str, Any]) -> str:
    """One row per level: flat SVM, each tree model run (path and top-down decoding), the path SVM."""
    flat, svm = result["flat"], result["flat"].get("path_svm")
    trees = []
    for label, base in (("tree", "tree"), ("fusion tree", "tree_fusion")):
        for key in sorted(k for k in result if k == base or k.startswith(base + "_min")):
            if result.get(key):
                size = result[key].get("min_class_size", PLAIN_KEY_MIN_CLASS_SIZE)
                trees.append((label if key == base else f"{label} (min {size})", result[key]))
    header = "| level | flat SVM accuracy | flat SVM macro-F1 |"
    for label, _ in trees:
        header += f" {label} (path) accuracy | {label} (path) macro-F1 | {label} (top-down) accuracy |"
    header += " path SVM accuracy | path SVM macro-F1 |" if svm else ""
    lines = [
        f"### {name}: {result['products']:,} products, {result['test']:,} test; inputs: {result['inputs']}",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for k, f in enumerate(flat["levels"]):
        row = f"| {f['name']} | {f['accuracy']:.2%} | {f['macro_f1']:.4f} |"
        for _, tree in trees:
            p, t = tree["path"]["levels"][k], tree["top_down"]["levels"][k]
            row += f" {p['accuracy']:.2%} | {p['macro_f1']:.4f} | {t['accuracy']:.2%} |"
        if svm:
            row += f" {svm['levels'][k]['accuracy']:.2%} | {svm['levels'][k]['macro_f1']:.4f} |"
        lines.append(row)
    lines.append("")
    for label, tree in trees:
        lines += [
            f"{label} ({'+'.join(tree.get('modalities', ['metadata', 'title']))}): hierarchical F1 (path) "
            f"{tree['path']['hierarchical_f1']:.4f}, (top-down) {tree['top_down']['hierarchical_f1']:.4f}; "
            f"predicted paths not in the training taxonomy: {tree['path']['paths_not_in_taxonomy']} (path), "
            f"{tree['top_down']['paths_not_in_taxonomy']} (top-down); paths backed off to their parent: "
            f"{len(tree['merged'])}; fit {tree['fit_seconds']:.0f} s; first wrong level (path): "
            + ", ".join(f"{k} {v['products']}" for k, v in tree["path"]["first_wrong_level"].items()),
            "",
        ]
    lines.append(
        f"Flat per-level answers combined into a path not in the taxonomy: {flat['paths_not_in_taxonomy']} of "
        f"{flat['products']:,}; flat SVMs fit {flat['fit_seconds']:.0f} s."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="amazon,fashion", help="comma-separated: amazon, fashion")
    parser.add_argument("--preset", default="regularized", help="the tree model's preset")
    parser.add_argument("--variants", default="text,fusion",
                        help="fashion's tree models, comma-separated: text (title + attributes), fusion (+ photo)")
    parser.add_argument("--no-tree", action="store_true",
                        help="only the SVMs; the tree model's figures are kept from the day's results file")
    parser.add_argument("--min-class-size", type=int, default=DEFAULT_MIN_CLASS_SIZE,
                        help="the tree model's back-off: paths with fewer training products go to their parent; "
                             "other than the default, the run is stored under its own key (tree_fusion_min2)")
    parser.add_argument("--no-flat", action="store_true",
                        help="fashion: only the tree variants; the SVM rows are kept from the results file "
                             "(which must hold them, measured on a split of the same sizes)")
    parser.add_argument("--results", type=Path, default=None,
                        help="the results file to update (default benchmarks/results/category_tree-<date>.json)")
    args = parser.parse_args()
    if args.no_flat and args.no_tree:
        parser.error("--no-flat and --no-tree leave nothing to run")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    date = time.strftime("%Y-%m-%d")
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    out = args.results or out_dir / f"category_tree-{date}.json"
    # Sections run on their own keep the file's other sections.
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    if args.no_flat and not results.get("fashion", {}).get("flat"):
        parser.error(f"--no-flat: {out} holds no fashion SVM rows to reuse")
    # A file of another day keeps its date; each run records its own.
    results.setdefault("date", date)
    results.setdefault("preset", args.preset)
    for section in args.sections.split(","):
        # fashion's variants run one at a time (the SVMs with the first), each written as soon as it is measured.
        runs: list[dict[str, Any]] = [{"preset": args.preset, "tree": not args.no_tree}]
        if section == "fashion" and not args.no_tree:
            variants = [v.strip() for v in args.variants.split(",") if v.strip()]
            runs = [{**runs[0], "variants": [v], "flat": i == 0 and not args.no_flat,
                     "min_class_size": args.min_class_size} for i, v in enumerate(variants)] or runs
        elif section == "amazon" and args.min_class_size != DEFAULT_MIN_CLASS_SIZE:
            parser.error("--min-class-size is only wired to the fashion section")
        for options in runs:
            start = time.perf_counter()
            command = f"PYTHONPATH=src python benchmarks/category_tree.py --sections {section}"
            command += f" --variants {','.join(options['variants'])}" if "variants" in options else ""
            if args.min_class_size != DEFAULT_MIN_CLASS_SIZE:
                command += f" --min-class-size {args.min_class_size}"
            if args.no_flat:
                command += " --no-flat"
            if args.results is not None:
                command += f" --results {args.results}"
            if args.no_flat and section == "fashion":
                stored = results["fashion"]
                options["expect_split"] = {k: stored[k] for k in ("products", "train", "val", "test", "test_with_image")
                                           if k in stored}
            result = {"amazon": amazon, "fashion": fashion}[section](**options)
            keys = [k for k in result if k in {v for v, _ in VARIANTS.values()} or "_min" in k]
            for key in keys:
                if result.get(key):
                    result[key]["command"] = command
                    result[key]["date"] = date
                    result[key]["seconds"] = time.perf_counter() - start
            if args.no_flat:
                # Only the tree runs are new: the section's split description and SVM rows stay as they were,
                # which is right only if the split is the same one.
                old = results[section]
                same = {k: (result[k], old.get(k)) for k in ("products", "train", "val", "test", "test_with_image")}
                if any(a != b for a, b in same.values()):
                    raise SystemExit(f"--no-flat: the split differs from the stored one's {same}; not written")
                results[section] = {**old, **{k: result[k] for k in keys}}
                out.write_text(json.dumps(results, indent=2, default=str))
                print(markdown(section, results[section]), flush=True)
                continue
            if args.no_tree:
                result["tree"] = results.get(section, {}).get("tree")
                result["svm_command"] = command + " --no-tree"
            else:
                result["command"] = command
            result["seconds" if not args.no_tree else "svm_seconds"] = time.perf_counter() - start
            results[section] = {**results.get(section, {}), **result}
            out.write_text(json.dumps(results, indent=2, default=str))
            if results[section].get("tree"):
                print(markdown(section, results[section]), flush=True)
            else:
                print(json.dumps(results[section]["flat"], indent=2, default=str), flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
