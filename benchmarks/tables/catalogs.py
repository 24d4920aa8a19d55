"""Tables about the data: how noisy the fashion catalog's labels are, and catalogs in other schemas."""

from __future__ import annotations

from result_files import Run, Runs

from . import md_table, source


def label_noise(runs: Runs) -> str | None:
    run = runs.latest("label_noise")
    if not run:
        return None
    f = run.figures
    n_products = f["catalog_products"]
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
        [
            [g["grouping"], f"{g['products']:,} ({g['products'] / n_products:.1%})", f"{g['conflicting_groups']:,}",
             f"{100 * g['disagreement']:.2f}%"]
            for g in f["groupings"]
        ],
    )
    t = f["test"]
    if t["test_products"]:
        md += (
            f"\n\nOver the {f['splits']} splits' test sets ({t['test_products']:,} products, the fusion models of the "
            f"splits section): identical inputs with different labels force at least {t['forced_errors']} errors "
            f"({100 * t['forced_errors'] / t['test_products']:.2f}%) on any model that reads only title and "
            f"attributes. Of the fusion model's {t['fusion_errors']} errors, {t['errors_with_training_variants']} are "
            "products with colour variants in their training split, and "
            f"{t['errors_as_training_variants']} of those were answered with the label most of those variants "
            f"carry, e.g. {t['example']}."
        )
    return md + "\n\n" + source(run)


def _variant(row: dict) -> tuple[str, str]:
    """A row's catalog and how its fusion model read titles (runs with ``--sentence-model`` are their own rows)."""
    return row["catalog"], row.get("sentence_model") or ""


def _latest_per_catalog(runs: list[Run]) -> list[tuple[Run, dict]]:
    """A run may cover some catalogs only: each catalog's rows (per title reading: TF-IDF, or with a sentence
    model) come from the newest run that measured it."""
    chosen: dict[tuple[str, str], Run] = {}
    for run in runs:  # newest first
        for row in run.figures["rows"]:
            chosen.setdefault(_variant(row), run)
    order = list(dict.fromkeys(_variant(row) for run in reversed(runs) for row in run.figures["rows"]))
    catalogs = list(dict.fromkeys(c for c, _ in order))
    order.sort(key=lambda v: catalogs.index(v[0]))  # a catalog's variants side by side (the sort is stable)
    return [(chosen[v], row) for v in order for row in chosen[v].figures["rows"] if _variant(row) == v]


def _accuracy_cell(rows: list[dict], model: str) -> str:
    """Accuracy / macro-F1 of one model over a catalog level's split seeds: the value, or with several seeds their
    mean and each seed's accuracy."""
    acc = [100 * r[f"{model}_accuracy"] for r in rows]
    f1 = [r[f"{model}_macro_f1"] for r in rows]
    if len(rows) == 1:
        return f"{acc[0]:.2f}% / {f1[0]:.3f}"
    return f"{sum(acc) / len(acc):.2f}% / {sum(f1) / len(f1):.3f} ({' / '.join(f'{a:.2f}' for a in acc)})"


def other_catalogs(runs: Runs) -> str | None:
    if not runs.all("other_catalogs"):
        return None
    rows = _latest_per_catalog(runs.all("other_catalogs"))
    used = list(dict.fromkeys(run for run, _ in rows))
    levels: dict[tuple[str, str, int], list[dict]] = {}
    for _, r in rows:
        levels.setdefault((*_variant(r), r["level"]), []).append(r)
    seeds = sorted({r.get("split_seed", 0) for _, r in rows})
    table = [
        [
            catalog,
            f"TF-IDF + {sentence}" if sentence else "TF-IDF",
            str(level),
            str(group[0]["classes"]),
            f"{group[0]['test']:,}",
            _accuracy_cell(group, "fusion"),
            _accuracy_cell(group, "svm"),
            f"{sum(100 * (r['fusion_accuracy'] - r['svm_accuracy']) for r in group) / len(group):+.2f}",
        ]
        for (catalog, sentence, level), group in levels.items()
    ]
    reads = (" Rows whose fusion reads the title with TF-IDF + a sentence model come from the default model "
             "(`sentence_model=\"auto\"`: a text-only model with the `sentence` extra installed) or from runs with "
             "`--sentence-model NAME`; TF-IDF rows from `--sentence-model none` or runs before the default.")
    split = f"seed {seeds[0]}"
    if len(seeds) > 1:
        split = (f"seeds {', '.join(map(str, seeds))}: mean, then each seed's accuracy; classes and test products "
                 f"of seed {seeds[0]}")
    return md_table(
        "Catalogs in other schemas",
        "`python benchmarks/run.py --sections other_catalogs [--catalog-seeds 0,1,2]` (or `python "
        "benchmarks/other_catalogs.py [--seeds 0,1,2]`; each catalog's rows from the latest run that measured it): "
        "only `--label` given, every other column's role inferred; the label cut to level k of its category path, "
        "classes with at least 10 products (5 for the 1,000 US products), stratified 80/20 split "
        f"({split}). The fusion model reads the text, attributes and "
        "numbers (no images: none are reachable here) and holds out 10% of its 80% for early stopping and "
        "calibration (since a124117 its stacked SVM is then fitted again on the whole 80%); the baseline is the "
        "any-catalog issue's reference, TF-IDF (word 1-2 + character 2-5 grams) of name + manufacturer (US: name + "
        "about) and a linear SVM, fitted on the whole 80%." + reads,
        ["catalog", "fusion reads the title with", "level", "classes", "test products", "fusion accuracy / macro-F1",
         "TF-IDF + SVM accuracy / macro-F1", "fusion - SVM (points)"],
        table,
    ) + "\n\n" + source(*used)
