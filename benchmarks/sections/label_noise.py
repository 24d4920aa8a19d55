"""How consistently the catalog labels products that should share a label, and how many of the fusion model's
test errors follow the training split's own labels for the same product family: how far any model can go."""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any

from bench import SPLIT_SEEDS, Bench
from compare import fusion_test_predictions, split_for, split_fusion_csv

# Two ways of grouping products that should carry one label, with how the section names them.
TWIN_GROUPINGS = {
    "identical": "the same title and attributes (the same item listed twice)",
    "variants": "the same title apart from colour words, gender and subCategory (colour variants)",
}
log = logging.getLogger("benchmark.label_noise")


def twin_keys(products: Any) -> dict[str, Any]:
    """Group keys per TWIN_GROUPINGS: the same item listed twice (as the leakage-safe split groups them) and its
    colour variants (same title once the colour words are removed, same gender and subCategory)."""
    from deepfusion.catalog import TITLE
    from deepfusion.split import same_item_key

    title = products[TITLE].astype("string").str.lower().str.strip().fillna("")
    colour_words = {w for v in products["baseColour"].dropna().unique() for w in re.split(r"\W+", str(v).lower())}
    colour_words |= {"", "&", "and", "toned", "coloured"}
    no_colour = title.map(lambda t: " ".join(w for w in t.split() if w not in colour_words))
    attrs = products[["gender", "subCategory"]].astype("string").fillna("")
    variants = no_colour.str.cat([attrs["gender"], attrs["subCategory"]], sep="|")
    return {"identical": same_item_key(products), "variants": variants.where(no_colour != "")}


def disagreement_with_twins(keys: Any, labels: Any) -> tuple[int, int, float]:
    """Products that have a twin, groups whose labels conflict, and the share of products whose label differs from
    the most common label among their twins (leave-one-out; a tie counts as the chance of picking another label)."""
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


def _split_errors(b: Bench, products: Any, labels: Any, keys: dict[str, Any], split_seed: int, csv: Any) -> dict:
    """One split's test set: errors forced by identical inputs, the fusion model's errors, and those of them that
    follow the label most of the product's colour variants in training carry (with the strongest such case)."""
    import pandas as pd

    from deepfusion.catalog import ID, TITLE

    assignment = products[ID].map(split_for(b, split_seed).assignment)
    train, test = assignment == "train", assignment == "test"
    # Identical inputs with different labels: any model that reads only title and attributes gets all but the most
    # common label of each such test group wrong.
    test_counts = labels[test].groupby([keys["identical"][test], labels[test]]).size()
    forced = int((test_counts.groupby(level=0).sum() - test_counts.groupby(level=0).max()).sum())
    variant_counts: dict[str, Counter[str]] = {}
    in_train = train & keys["variants"].notna()
    for key, label in zip(keys["variants"][in_train], labels[in_train], strict=True):
        variant_counts.setdefault(key, Counter())[label] += 1
    predicted = pd.Series(fusion_test_predictions(csv, products[test]), index=products.index[test])
    wrong = predicted != labels[test]
    counts = {i: variant_counts[k] for i, k in keys["variants"][test][wrong].dropna().items() if k in variant_counts}
    follows = [i for i, c in counts.items() if c.most_common(1)[0][0] == predicted[i]]
    example = (0, "")
    for i in follows:
        if counts[i][predicted[i]] > example[0]:
            example = (
                counts[i][predicted[i]],
                f"“{products.at[i, TITLE]}”, labelled {labels[i]}, predicted {predicted[i]}; "
                "its colour variants in training: " + ", ".join(f"{k} {v}" for k, v in counts[i].items()),
            )
    return {"tested": int(test.sum()), "forced": forced, "errors": int(wrong.sum()), "with_variants": len(counts),
            "as_variants": len(follows), "example": example}


def measure(b: Bench) -> dict[str, Any]:
    from deepfusion.catalog import TARGET

    products = b.catalog.products.reset_index(drop=True)
    labels = products[TARGET].astype(str)
    keys = twin_keys(products)
    groupings = []
    for kind, name in TWIN_GROUPINGS.items():
        n, conflicting, share = disagreement_with_twins(keys[kind], labels)
        groupings.append({"grouping": name, "products": n, "conflicting_groups": conflicting, "disagreement": share})
    per_split = []
    for split_seed in SPLIT_SEEDS:
        csv = split_fusion_csv(b, split_seed)
        if not csv.exists():
            log.warning("label_noise: no fusion predictions at %s (run the fusion and splits sections)", csv)
            continue
        per_split.append(_split_errors(b, products, labels, keys, split_seed, csv))
    example = max((s["example"] for s in per_split), default=(0, ""), key=lambda e: e[0])
    test = {
        "test_products": sum(s["tested"] for s in per_split),
        "forced_errors": sum(s["forced"] for s in per_split),
        "fusion_errors": sum(s["errors"] for s in per_split),
        "errors_with_training_variants": sum(s["with_variants"] for s in per_split),
        "errors_as_training_variants": sum(s["as_variants"] for s in per_split),
        "example": example[1],
    }
    return {"groupings": groupings, "test": test, "catalog_products": len(products), "splits": len(SPLIT_SEEDS)}
