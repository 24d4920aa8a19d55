"""Exploratory data analysis of a product catalog: ``eda.json`` (the figures) and ``eda.html`` (the same
figures as a self-contained page, html_page.py; its charts are eda_charts.py's).

Everything comes from the loaded ``Catalog`` (catalog.load_catalog), so the report sees exactly the products,
rejects and images that training sees. Formatting checks (trailing spaces, casing) run on ``Catalog.table``, the
strings as read, because the loader strips whitespace. Hierarchy breaks are hierarchy.py's, the audit's too.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import eda_charts as charts
from .catalog import CATEGORICAL, COLUMNS, ID, TARGET, TITLE, Catalog, find_image, load_catalog
from .hierarchy import break_summary, breaks_frame, catalog_hierarchy
from .html_page import Markup, card, escape, img, mini, number, page, pct, table, thumbnail_uri
from .schema import CatalogSchema
from .taxonomy import Taxonomy

log = logging.getLogger(__name__)

GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
TOP_K = (1, 5, 10, 20, 50)
COVERAGE_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
METADATA_COLUMNS = ["gender", "masterCategory", "subCategory", "baseColour", "season", "year", "usage"]
RELATION_COLUMNS = ["gender", "season", "usage"]
N_EXAMPLES = 10
HEATMAP_CLASSES = 25
SAMPLE_CLASSES = 8
SAMPLES_PER_CLASS = 4
PLAUSIBLE_YEARS = (1990, datetime.now(UTC).year + 1)
SMALL_THUMB = (45, 60)  # inside table cells (hierarchy breaks)
BREAK_GROUPS = 25
RELATION_MAX_VALUES = 30  # a categorical column of another catalog is drawn against the target up to this many values
METADATA_BARS = 40  # values of a categorical column kept in its chart (and eda.json); the rest are summed
NUMERIC_BINS = 12
PLACEHOLDER_PATTERN = r"na|n/a|nan|null|none|-|\?|unknown"


# ------------------------------------------------------------------------------------------------ figures


@dataclass(frozen=True)
class _Roles:
    """Which columns of the catalog the report treats as what: the fashion catalog's fixed ones, or those its
    schema names (schema.py)."""

    label: str
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    relation: tuple[str, ...]
    text: tuple[str, ...]
    columns: tuple[str, ...]
    fashion: bool

    @property
    def metadata(self) -> tuple[str, ...]:
        return METADATA_COLUMNS if self.fashion else (*self.categorical, *self.numeric)


def _roles(schema: CatalogSchema, products: pd.DataFrame) -> _Roles:
    if schema.is_fashion:
        return _Roles(TARGET, tuple(CATEGORICAL), ("year",), tuple(RELATION_COLUMNS), (TITLE,), tuple(COLUMNS), True)
    relation = tuple(c for c in schema.categorical
                     if 2 <= products[c].nunique(dropna=True) <= RELATION_MAX_VALUES)[:3]
    columns = tuple(dict.fromkeys(c for _, c in schema.columns()))
    return _Roles(schema.label or TARGET, tuple(schema.categorical), tuple(schema.numeric), relation,
                  tuple(schema.text), columns, False)


def _clean(obj: Any) -> Any:
    """Make numpy/pandas values JSON-serialisable; NaN becomes None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return None if math.isnan(obj) or math.isinf(obj) else float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj


def _counts(values: pd.Series) -> dict[str, int]:
    """Value counts (missing values excluded) sorted by count, ties by name."""
    vc = values.dropna().astype(str).value_counts()
    return {k: int(v) for k, v in sorted(vc.items(), key=lambda kv: (-kv[1], kv[0]))}


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 6) if whole else None


def _column_kind(name: str, roles: _Roles, schema: CatalogSchema) -> str:
    if name == (schema.id if not roles.fashion else ID):
        return "identifier"
    if name == roles.label:
        return "categorical (target)"
    if name in roles.categorical:
        return "categorical"
    if name in roles.numeric:
        return "numeric"
    if name in roles.text:
        return "text"
    if name == schema.image:
        return "image"
    return "other"


def _is_missing(values: pd.Series) -> pd.Series:
    return values.isna() | (values.astype(str).str.strip() == "")


def _reason_kind(reason: str) -> str:
    if re.match(r"line \d+ has \d+ fields", reason):
        return "malformed line (wrong number of fields)"
    if reason.startswith("non-numeric "):
        return f"non-numeric {reason.split()[1]} (treated as missing)"
    return reason.split(":")[0].split(" (")[0]


def _dominant(products: pd.DataFrame, key: str, col: str) -> pd.Series:
    """For each value of ``key`` its most frequent ``col`` (ties broken by name)."""
    pairs = products[[key, col]].dropna()
    if pairs.empty:
        return pd.Series(dtype=object)
    counts = pairs.groupby([key, col]).size().reset_index(name="n")
    counts = counts.sort_values([key, "n", col], ascending=[True, False, True])
    return counts.drop_duplicates(key).set_index(key)[col]


def _duplicate_groups(products: pd.DataFrame, key: str) -> dict[str, Any]:
    """Groups of products sharing the same ``key`` (image hash or title)."""
    values = products[key]
    present = products[values.notna()]
    sizes = present.groupby(key).size()
    dup_keys = sizes[sizes > 1]
    in_groups = present[present[key].isin(dup_keys.index)]
    n_labels = in_groups.groupby(key)[TARGET].nunique()
    conflicting = n_labels[n_labels > 1]
    order = sorted(dup_keys.items(), key=lambda kv: (-kv[1], str(kv[0])))

    def example(value: Any, size: int) -> dict[str, Any]:
        rows = in_groups[in_groups[key] == value]
        return {
            "key": str(value), "size": int(size), "ids": rows[ID].tolist()[:8],
            TARGET: sorted(rows[TARGET].dropna().unique().tolist()),
            "titles": sorted(rows[TITLE].dropna().unique().tolist())[:3],
        }

    examples = [example(v, s) for v, s in order[:N_EXAMPLES]]
    conflicting_order = [(v, s) for v, s in order if v in conflicting.index]
    conflicting_examples = [example(v, s) for v, s in conflicting_order[:N_EXAMPLES]]
    return {
        "groups": len(dup_keys),
        "products": int(dup_keys.sum()),
        "extra_copies": int(dup_keys.sum() - len(dup_keys)),
        "groups_with_conflicting_labels": len(conflicting),
        "products_in_conflicting_groups": int(sizes[conflicting.index].sum()) if len(conflicting) else 0,
        "examples": examples,
        "conflicting_examples": conflicting_examples,
    }


def _raw_table(catalog: Catalog) -> pd.DataFrame:
    """The catalog's table as read (strings before cleaning: ``load_catalog(keep_table=True)``, as
    write_eda_report loads it); without it, the products' columns as text, on which no formatting problem shows."""
    if catalog.table is not None:
        return catalog.table
    log.warning("the catalog was loaded without keep_table=True: formatting checks run on the cleaned values")
    columns = [c for c in _roles(catalog.schema, catalog.products).columns if c in catalog.products.columns]
    return catalog.products[columns].astype(object).where(catalog.products[columns].notna(), "").astype(str)


def _overview(catalog: Catalog, raw: pd.DataFrame, roles: _Roles) -> dict[str, Any]:
    products, rejects = catalog.products, catalog.rejects
    n = len(products)
    file_columns = list(raw.columns)
    extra = [c for c in file_columns if c not in roles.columns]
    columns = []
    for name in [*roles.columns, *extra]:
        values = products[name] if name in products.columns else pd.Series([None] * n, dtype=object)
        missing = int(_is_missing(values).sum())
        columns.append({
            "name": name, "kind": _column_kind(name, roles, catalog.schema), "dtype": str(values.dtype),
            "in_file": name in file_columns, "missing": missing, "missing_share": _share(missing, n),
            "unique": int(values.nunique(dropna=True)),
        })
    dup_id = rejects[rejects["reason"].astype(str).str.startswith("duplicate id")]
    status = products["image_status"]
    with_image = int((status.isin(["ok", "unchecked"])).sum())
    reason_kinds = rejects.assign(kind=rejects["reason"].astype(str).map(_reason_kind))
    by_reason = [
        {"reason": kind, "action": action, "rows": int(size)}
        for (kind, action), size in reason_kinds.groupby(["kind", "action"]).size().items()
    ]
    by_reason.sort(key=lambda r: (-r["rows"], r["reason"]))
    return {
        "rows_in_file": catalog.rows_in,
        "rows": n,
        "n_columns": len(file_columns),
        "file_columns": file_columns,
        "columns": columns,
        "missing": {c["name"]: c["missing"] for c in columns},
        "rejects": {
            "dropped": int((rejects["action"] == "dropped").sum()),
            "kept_with_problem": int((rejects["action"] == "kept").sum()),
            "by_reason": by_reason,
        },
        "duplicate_ids": {
            "rows_dropped": len(dup_id),
            "ids": int(dup_id[ID].nunique()),
            "examples": dup_id[ID].astype(str).drop_duplicates().tolist()[:N_EXAMPLES],
        },
        "duplicate_images": _duplicate_groups(products[status == "ok"], "image_sha1"),
        "duplicate_titles": _duplicate_groups(products, TITLE),
        "images": {"with_image": with_image, "without_image": n - with_image},
    }


def _numeric_stats(products: pd.DataFrame, rejects: pd.DataFrame, col: str) -> dict[str, Any]:
    values = products[col].dropna()
    non_numeric = rejects[rejects["reason"].astype(str).str.startswith(f"non-numeric {col} ")]
    has = len(values) > 0
    examples = non_numeric["reason"].astype(str).str.extract(r"'(.*)'")[0].tolist()[:N_EXAMPLES]
    stats = {
        "min": values.min() if has else None, "max": values.max() if has else None,
        "median": values.median() if has else None, "mean": round(float(values.mean()), 3) if has else None,
        "missing": int(products[col].isna().sum()), "non_numeric": len(non_numeric),
        "non_numeric_examples": examples, "plausible_range": None, "implausible": None,
    }
    if col == "year":  # a catalog year far from today is a typo
        lo, hi = PLAUSIBLE_YEARS
        stats["plausible_range"] = [lo, hi]
        stats["implausible"] = int(((values < lo) | (values > hi)).sum())
    return stats


def _quality(catalog: Catalog, raw: pd.DataFrame, roles: _Roles) -> dict[str, Any]:
    products, rejects = catalog.products, catalog.rejects
    numeric = {col: _numeric_stats(products, rejects, col) for col in roles.numeric}
    unique = {}
    for name, col in [(roles.label, TARGET), *((c, c) for c in roles.categorical)]:
        counts = _counts(products[col])
        unique[name] = {
            "unique": len(counts),
            "most_common": next(iter(counts.items()), (None, 0))[0],
            "most_common_count": next(iter(counts.values()), 0),
            "singletons": sum(1 for v in counts.values() if v == 1),
        }
    text_cols = list(raw.columns)
    trailing, leading, double = {}, {}, {}
    for col in text_cols:
        values = raw[col].fillna("").astype(str)
        trailing[col] = int((values != values.str.rstrip()).sum())
        leading[col] = int((values != values.str.lstrip()).sum())
        double[col] = int(values.str.strip().str.contains(r"\s{2,}", regex=True).sum())
    placeholders = {}
    for col in text_cols:
        if col in (ID, catalog.schema.id, *roles.numeric):
            continue
        values = raw[col].fillna("").astype(str).str.strip()
        placeholders[col] = int(values.str.fullmatch(PLACEHOLDER_PATTERN, case=False).sum())
    case_variants: dict[str, list[dict[str, Any]]] = {}
    for col in [roles.label, *roles.categorical]:
        if col not in raw.columns:
            continue
        values = raw[col].fillna("").astype(str).str.strip()
        values = values[values != ""]
        spelled = values.groupby(values.str.lower()).value_counts()
        groups = []
        for _, sub in spelled.groupby(level=0):
            if len(sub) > 1:
                groups.append({"variants": {str(k[1]): int(v) for k, v in sub.items()}})
        case_variants[col] = groups
    title = roles.text[0] if roles.text else None
    titles = raw[title].fillna("").astype(str).str.strip() if title in raw.columns else pd.Series(dtype=str)
    titles = titles[titles != ""].drop_duplicates()
    lower_sizes = titles.str.lower().value_counts()
    title_case = lower_sizes[lower_sizes > 1]
    title_examples = [
        sorted(titles[titles.str.lower() == key].tolist()) for key in sorted(title_case.index)[:N_EXAMPLES]
    ]
    return {
        "numeric": numeric,
        "unique_values": unique,
        "formatting": {
            "rows_checked": len(raw),
            "trailing_spaces": trailing,
            "trailing_spaces_total": sum(trailing.values()),
            "leading_spaces": leading,
            "leading_spaces_total": sum(leading.values()),
            "repeated_spaces": double,
            "repeated_spaces_total": sum(double.values()),
            "placeholders": placeholders,
            "placeholders_total": sum(placeholders.values()),
            "placeholder_pattern": PLACEHOLDER_PATTERN,
            "case_variants": case_variants,
            "case_variant_groups": sum(len(v) for v in case_variants.values()),
            "title_case_variants": {"groups": len(title_case), "examples": title_examples},
            "recovered_comma_rows": catalog.recovered_rows,
            "recovered_comma_ids": catalog.recovered_ids[:50],
            "malformed_rows": catalog.rows_in - len(raw) if catalog.table is not None else None,
            "non_numeric": {col: stats["non_numeric"] for col, stats in numeric.items()},
        },
    }


def _target(products: pd.DataFrame, label: str = TARGET) -> dict[str, Any]:
    counts = _counts(products[TARGET])
    n = sum(counts.values())
    values = np.array(list(counts.values()), dtype=np.int64)
    cumulative = np.cumsum(values) / n if n else np.array([])
    names = list(counts)
    largest = {"class": names[0], "count": int(values[0])} if names else None
    smallest = {"class": names[-1], "count": int(values[-1])} if names else None
    return {
        "column": label,
        "n_labelled": n,
        "n_classes": len(counts),
        "counts": counts,
        "largest": largest,
        "smallest": smallest,
        "imbalance_ratio": round(values[0] / values[-1], 3) if names else None,
        "classes_under_10": int((values < 10).sum()),
        "classes_under_100": int((values < 100).sum()),
        "products_in_classes_under_10": int(values[values < 10].sum()),
        "products_in_classes_under_100": int(values[values < 100].sum()),
        "names_under_10": [k for k, v in counts.items() if v < 10],
        "singleton_classes": int((values == 1).sum()),
        "top_k_coverage": {
            str(k): round(float(cumulative[min(k, len(values)) - 1]), 6) for k in TOP_K if len(values)
        },
        "classes_to_cover": {
            f"{int(level * 100)}%": int(np.searchsorted(cumulative, level - 1e-12) + 1)
            for level in COVERAGE_LEVELS if len(values)
        },
    }


def _binned(values: pd.Series) -> dict[str, int]:
    """Counts of a numeric column in equal-width bins over its 1st-99th percentiles (the rest in the end bins)."""
    values = values.dropna().astype(float)
    if values.empty:
        return {}
    lo, hi = np.percentile(values, [1, 99])
    if lo == hi:
        return {f"{lo:g}": len(values)}
    edges = np.linspace(lo, hi, NUMERIC_BINS + 1)
    counts = np.bincount(np.clip(np.searchsorted(edges, values, side="right") - 1, 0, NUMERIC_BINS - 1),
                         minlength=NUMERIC_BINS)
    return {f"{edges[i]:.4g}–{edges[i + 1]:.4g}": int(c) for i, c in enumerate(counts)}


def _metadata(products: pd.DataFrame, roles: _Roles) -> dict[str, Any]:
    out = {}
    for col in roles.metadata:
        values = products[col]
        if col == "year":
            values = values.dropna().astype(int).astype(str)
            counts = {k: int(v) for k, v in sorted(values.value_counts().items())}
            unique = len(counts)
        elif col in roles.numeric:
            counts, unique = _binned(values), int(values.nunique(dropna=True))
        else:
            counts = _counts(values)
            unique = len(counts)
            if not roles.fashion and len(counts) > METADATA_BARS:
                kept = dict(list(counts.items())[:METADATA_BARS])
                kept[f"({unique - METADATA_BARS:,} other values)"] = sum(counts.values()) - sum(kept.values())
                counts = kept
        out[col] = {"counts": counts, "missing": int(products[col].isna().sum()), "unique": unique}
    return out


def _crosstab(products: pd.DataFrame, col: str, classes: list[str]) -> dict[str, dict[str, int]]:
    pairs = products[[TARGET, col]].dropna()
    table = pd.crosstab(pairs[TARGET], pairs[col])
    return {c: {k: int(v) for k, v in table.loc[c].items() if v} for c in classes if c in table.index}


def _relationships(products: pd.DataFrame, classes: list[str], roles: _Roles) -> dict[str, Any]:
    out: dict[str, Any] = {col: _crosstab(products, col, classes) for col in roles.relation}
    if not roles.fashion:  # the fashion catalog's masterCategory > subCategory > articleType tree
        out["hierarchy"] = None
        return out
    sub, master = _dominant(products, TARGET, "subCategory"), _dominant(products, TARGET, "masterCategory")
    placement = {}
    for cls in classes:
        rows = products[products[TARGET] == cls]
        placement[cls] = {
            "masterCategory": master.get(cls), "subCategory": sub.get(cls), "products": len(rows),
            "subCategories": _counts(rows["subCategory"]),
            "masterCategories": _counts(rows["masterCategory"]),
        }
    subs = products[["masterCategory", "subCategory", TARGET]].dropna()
    tree = []
    for (m, s), rows in subs.groupby(["masterCategory", "subCategory"]):
        tree.append({"masterCategory": m, "subCategory": s, "products": len(rows),
                     "articleTypes": _counts(rows[TARGET])})
    tree.sort(key=lambda t: (t["masterCategory"], -t["products"], t["subCategory"]))
    fashion_tree = catalog_hierarchy(products)
    breaks = break_summary(fashion_tree, products[ID].astype(str).tolist(), groups=BREAK_GROUPS) if fashion_tree else {}
    out["hierarchy"] = {"placement": placement, "tree": tree, **breaks}
    return out


def _images(products: pd.DataFrame) -> dict[str, Any]:
    status = products["image_status"]
    ok = products[status == "ok"]
    sizes = (ok["image_width"].astype(int).astype(str) + "x" + ok["image_height"].astype(int).astype(str))
    gray = ok["image_mode"].isin(GRAYSCALE_MODES)
    common = sizes.value_counts().index[0] if len(sizes) else None
    return {
        "status": {k: int((status == k).sum()) for k in ("ok", "missing", "corrupt", "unchecked")},
        "readable": len(ok),
        "sizes": _counts(sizes),
        "most_common_size": common,
        "other_size": int((sizes != common).sum()) if common else 0,
        "width": {"min": ok["image_width"].min(), "max": ok["image_width"].max(),
                  "median": ok["image_width"].median()} if len(ok) else {},
        "height": {"min": ok["image_height"].min(), "max": ok["image_height"].max(),
                   "median": ok["image_height"].median()} if len(ok) else {},
        "modes": _counts(ok["image_mode"]),
        "grayscale": int(gray.sum()),
        "grayscale_share": _share(int(gray.sum()), len(ok)),
        "grayscale_modes": sorted(GRAYSCALE_MODES),
    }


def _samples(products: pd.DataFrame, target: dict[str, Any], quality: dict[str, Any], rel: dict[str, Any],
             images: dict[str, Any], rejects: pd.DataFrame, dup_images: dict[str, Any]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    ok = products[products["image_status"] == "ok"]
    per_class = {}
    for cls in list(target["counts"])[:SAMPLE_CLASSES]:
        ids = ok.loc[ok[TARGET] == cls, ID].tolist()
        pick = rng.choice(len(ids), size=min(SAMPLES_PER_CLASS, len(ids)), replace=False) if ids else []
        per_class[cls] = [ids[i] for i in sorted(pick)]
    odd: list[dict[str, str]] = []
    seen: set[str] = set()

    def add(ids: Iterable[str], why: str, limit: int) -> None:
        for pid in list(ids)[:limit]:
            if pid not in seen:
                seen.add(pid)
                odd.append({ID: str(pid), "why": why})

    bad = products[products["image_status"].isin(["missing", "corrupt"])]
    for pid, st in zip(bad[ID].tolist()[:8], bad["image_status"].tolist()[:8], strict=True):
        add([pid], f"{st} image", 1)
    reasons = rejects["reason"].astype(str)
    kept = rejects[(rejects["action"] == "kept") & reasons.str.startswith("non-numeric")]
    add(kept[ID].astype(str), "non-numeric value", 4)
    for level, found in (rel["hierarchy"] or {}).get("breaks", {}).items():
        for g in found["groups"][:4]:
            add(g["ids"][:1], f"{level} {g['node']} under '{g['found']}' (usually '{g['expected']}')", 1)
    for ex in (dup_images["conflicting_examples"][:2] + dup_images["examples"][:2])[:3]:
        for pid in ex["ids"][:2]:
            other = next(i for i in ex["ids"] if i != pid)
            add([pid], f"same image bytes as {other}", 1)
    add(quality["formatting"]["recovered_comma_ids"], "unquoted commas rejoined", 4)
    add(ok.loc[ok["image_mode"].isin(GRAYSCALE_MODES), ID], "grayscale image", 3)
    if images["most_common_size"]:
        size = ok["image_width"].astype(int).astype(str) + "x" + ok["image_height"].astype(int).astype(str)
        add(ok.loc[size != images["most_common_size"], ID], "unusual image size", 3)
    dropped = rejects[rejects["action"] == "dropped"]
    return {
        "per_class": per_class,
        "odd": odd,
        "dropped": [{ID: str(i), "reason": str(r)}
                    for i, r in zip(dropped[ID], dropped["reason"], strict=True)][:24],
    }


def hierarchy_section(products: pd.DataFrame, taxonomy: Taxonomy, examples: int = 20) -> dict[str, Any]:
    """A tree label's shape (products and distinct paths per level) and the products whose path breaks the tree
    (hierarchy.py, the audit's rule): ``products`` of them, the first ``examples`` one by one, and per level."""
    tree = catalog_hierarchy(products, taxonomy)
    paths = tree.paths
    ids = products[ID].astype(str).tolist() if ID in products.columns else [str(i) for i in range(len(products))]
    first = breaks_frame(tree, pd.RangeIndex(len(paths))).head(examples)
    summary = break_summary(tree, ids, groups=BREAK_GROUPS)
    return {
        "levels": list(tree.levels),
        "paths": len({p for p in paths if p}),
        "nodes_per_level": [len({p[: k + 1] for p in paths if len(p) > k}) for k in range(taxonomy.n_levels)],
        "depths": {str(d): n for d, n in sorted(Counter(len(p) for p in paths if p).items())},
        "products": summary["rows_breaking"],
        "examples": [{"id": ids[i], "level": b["level"], "node": b["node"], "parent": b["parent"],
                      "usual_parent": b["usual_parent"], "n_usual": b["n_usual"], "n_node": b["n_node"]}
                     for i, b in first.iterrows()],
        **summary,
    }


def _label_taxonomy(catalog: Catalog) -> Taxonomy | None:
    """The catalog's label as a tree (label columns, or a path label), None for a flat label."""
    schema = catalog.schema
    tax = Taxonomy.fit(list(catalog.products[TARGET]), columns=schema.levels, label_sep=schema.label_sep, min_count=1)
    return tax if tax.is_tree else None


def build_eda(catalog: Catalog, *, progress: bool = True) -> dict[str, Any]:
    """Every figure of the EDA report for a loaded catalog, as a JSON-serialisable dict. Its formatting checks need
    the table as read: load the catalog with ``keep_table=True``."""
    started = time.perf_counter()
    steps = tqdm(total=8, desc="eda figures", disable=not progress, leave=False)
    raw = _raw_table(catalog)
    steps.update()
    products = catalog.products
    roles = _roles(catalog.schema, products)
    overview = _overview(catalog, raw, roles)
    steps.update()
    quality = _quality(catalog, raw, roles)
    steps.update()
    target = _target(products, roles.label)
    steps.update()
    metadata = _metadata(products, roles)
    steps.update()
    relationships = _relationships(products, list(target["counts"]), roles)
    steps.update()
    images = _images(products)
    steps.update()
    samples = _samples(products, target, quality, relationships, images, catalog.rejects,
                       overview["duplicate_images"])
    steps.update()
    steps.close()
    eda = {
        "meta": {
            "source": str(catalog.source),
            "schema": catalog.schema.to_json(),
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "summary": catalog.summary(),
            "notes": list(catalog.notes),
            "seconds": round(time.perf_counter() - started, 3),
        },
        "overview": overview,
        "quality": quality,
        "target": target,
        "metadata": metadata,
        "relationships": relationships,
        "images": images,
        "samples": samples,
    }
    if catalog.links is not None:
        eda["links"] = _links(catalog.links)
    taxonomy = _label_taxonomy(catalog)
    if taxonomy is not None:
        eda["tree"] = hierarchy_section(products, taxonomy)
    return _clean(eda)


def _links(report: pd.DataFrame) -> dict[str, Any]:
    """The image links tried (the catalog's link report, or the sample of ``--check-links``): counts by status
    and reason, the slowest hosts and a sample of broken links."""
    from .image_links import link_stats

    stats = link_stats(report)
    return {"checked": stats.total, "by_status": stats.by_status, "by_reason": stats.by_reason,
            "slowest_hosts": stats.slowest_hosts, "broken_sample": stats.broken_sample,
            "sampled_from": report.attrs.get("sampled_from")}


# --------------------------------------------------------------------------------------------------- page


class _Charts:
    """Draws the page's charts (eda_charts.py) and counts them on a progress bar."""

    def __init__(self, total: int, progress: bool) -> None:
        self.bar = tqdm(total=total, desc="eda charts", disable=not progress, leave=False)

    def __call__(self, make: Callable[..., str], *args: Any, **kwargs: Any) -> str:
        data = make(*args, **kwargs)
        self.bar.update()
        return data

    def close(self) -> None:
        self.bar.close()


def render_eda_html(eda: dict[str, Any], catalog: Catalog, *, progress: bool = True) -> str:
    """The report page for figures from :func:`build_eda`, one function per section; charts and thumbnails are
    embedded."""
    roles = _roles(catalog.schema, catalog.products)
    products = catalog.products.set_index(ID, drop=False)
    products = products[~products.index.duplicated()]
    chart = _Charts(5 + len(roles.metadata) + len(roles.relation), progress)
    sections = [
        _overview_html(eda, roles.label, chart),
        _quality_html(eda["quality"]),
        _target_html(eda["target"], roles.label, chart),
        _metadata_html(eda["metadata"], roles, chart),
        _relationships_html(eda, roles, products, chart),
        _images_html(eda["images"], eda["overview"]["rows"], chart),
    ]
    chart.close()
    sections.append(_samples_html(eda, catalog, products, progress))
    if eda.get("tree"):
        sections.append(_tree_html(eda["tree"], products))
    sections.append(_links_html(eda.get("links")))
    nav = [("overview", "Overview"), ("quality", "Quality"), ("target", "Target"), ("metadata", "Metadata"),
           ("relationships", "Relationships"), ("images", "Images"), ("samples", "Samples"),
           *([("tree", "Category tree")] if eda.get("tree") else []), *([("links", "Links")] if "links" in eda else [])]
    meta = eda["meta"]
    name = Path(meta["source"]).parent.name
    body = (f'<div class="cards">{_cards_html(eda, roles.label)}</div>' + "".join(sections)
            + '<p class="note">Figures as JSON: <code>eda.json</code>. Rejected and flagged rows: '
              "<code>rejects.csv</code>.</p>")
    return page(f"Catalog EDA – {name}", f"Catalog EDA · {name}", body, nav=nav,
                subtitle=[f"{meta['source']} · generated {meta['generated_at']}", meta["summary"]])


def _cards_html(eda: dict[str, Any], label: str) -> str:
    """The headline figures; a problem's card is coloured."""
    ov, tg, im = eda["overview"], eda["target"], eda["images"]
    hb = eda["relationships"]["hierarchy"] or eda.get("tree")
    without, dropped, dup = ov["images"]["without_image"], ov["rejects"]["dropped"], ov["duplicate_images"]["groups"]
    return "".join([
        card(number(ov["rows"]), "products loaded"),
        card(number(ov["n_columns"]), "columns in the table"),
        card(number(tg["n_classes"]), f"{label} classes"),
        card(number(im["status"]["ok"]), "readable images"),
        card(number(without), "products without a usable image", "bad" if without else ""),
        card(number(dropped), "rows dropped (rejects.csv)", "bad" if dropped else ""),
        card(number(dup), "groups of byte-identical images", "warn" if dup else ""),
        card(number(hb["rows_breaking"]), "products breaking the category hierarchy",
             "warn" if hb["rows_breaking"] else "") if hb else "",
        card(_ratio(tg["imbalance_ratio"]), "largest / smallest class",
             "warn" if (tg["imbalance_ratio"] or 0) >= 10 else ""),
        card(number(tg["classes_under_10"]), "classes with < 10 products", "warn" if tg["classes_under_10"] else ""),
        card(pct(im["grayscale_share"], 2), "grayscale images"),
        card(number(eda["quality"]["formatting"]["recovered_comma_rows"]), "rows with unquoted commas recovered"),
    ])


def _overview_html(eda: dict[str, Any], label: str, chart: _Charts) -> str:
    ov = eda["overview"]
    col_rows = [(c["name"], c["kind"], c["dtype"] if c["in_file"] else "(not in file)", c["missing"],
                 pct(c["missing_share"], 2), c["unique"]) for c in ov["columns"]]
    missing_chart = chart(charts.bar_chart, {c["name"]: c["missing"] for c in ov["columns"]},
                          "Missing values per column (after loading)", "column", "missing values", horizontal=True)
    di, dt, dids = ov["duplicate_images"], ov["duplicate_titles"], ov["duplicate_ids"]
    dup_rows = [
        ("duplicate ids (rows dropped, first kept)", dids["rows_dropped"], dids["ids"], "",
         ", ".join(dids["examples"])),
        ("byte-identical images", di["products"], di["groups"], di["groups_with_conflicting_labels"], ""),
        ("identical titles", dt["products"], dt["groups"], dt["groups_with_conflicting_labels"], ""),
    ]
    reason_rows = [(r["reason"], r["action"], r["rows"]) for r in ov["rejects"]["by_reason"]]
    return f"""
<section id="overview"><h2>1. Overview</h2>
<p>{number(ov['rows_in_file'])} data rows in <code>{escape(Path(eda['meta']['source']).name)}</code>:
<b>{number(ov['rows'])}</b> products loaded, <b>{number(ov['rejects']['dropped'])}</b> dropped and
{number(ov['rejects']['kept_with_problem'])} kept with a problem noted (every one is listed in
<code>rejects.csv</code>). <b>{number(ov['images']['with_image'])}</b> products have a readable image,
{number(ov['images']['without_image'])} do not.</p>
<div class="cols"><div><h3>Columns</h3>
{table(["column", "kind", "dtype", "missing", "missing %", "unique"], col_rows, numeric=[3, 4, 5])}</div>
<div>{img(missing_chart, "missing values per column")}</div></div>
<h3>Duplicates</h3>
{table(["kind", "rows", "groups / ids", "groups with conflicting labels", "examples"], dup_rows, numeric=[1, 2, 3])}
{_dup_examples(di, "Largest groups of byte-identical images")}
{_dup_examples(di, f"Byte-identical images with different {label}", "conflicting_examples")}
{_dup_examples(dt, "Largest groups of identical titles")}
<h3>Rejected and flagged rows</h3>
{table(["reason", "action", "rows"], reason_rows, numeric=[2]) if reason_rows else '<p class="ok">None.</p>'}
</section>"""


def _quality_html(q: dict[str, Any]) -> str:
    fmt = q["formatting"]
    year_rows = [(col, *(f"{v:g}" if v is not None else "n/a" for v in (y["min"], y["max"], y["median"])),
                  f"{y['mean']:.2f}" if y["mean"] is not None else "n/a", y["missing"], y["non_numeric"],
                  y["implausible"] if y["implausible"] is not None else "")
                 for col, y in q["numeric"].items()]
    plausible = next((y["plausible_range"] for y in q["numeric"].values() if y["plausible_range"]), None)
    last = "outside " + "–".join(str(v) for v in plausible) if plausible else "implausible"
    uniq_rows = [(c, u["unique"], u["most_common"], u["most_common_count"], u["singletons"])
                 for c, u in q["unique_values"].items()]
    fmt_rows = [
        ("trailing spaces", fmt["trailing_spaces_total"], _per_col(fmt["trailing_spaces"])),
        ("leading spaces", fmt["leading_spaces_total"], _per_col(fmt["leading_spaces"])),
        ("repeated spaces inside a value", fmt["repeated_spaces_total"], _per_col(fmt["repeated_spaces"])),
        ("categorical values differing only in case (groups)", fmt["case_variant_groups"],
         "; ".join(f"{c}: " + " / ".join(g["variants"])
                   for c, gs in fmt["case_variants"].items() for g in gs[:3])),
        ("titles differing only in case (groups)", fmt["title_case_variants"]["groups"],
         "; ".join(" / ".join(g) for g in fmt["title_case_variants"]["examples"][:3])),
        ("unquoted commas in the title (rows recovered)", fmt["recovered_comma_rows"],
         ", ".join(fmt["recovered_comma_ids"][:10])),
        ("malformed lines (dropped)", fmt["malformed_rows"], ""),
        ("placeholder values meaning 'missing' (e.g. NA, null)", fmt["placeholders_total"],
         _per_col(fmt["placeholders"])),
        *((f"non-numeric {col} (kept as missing)", y["non_numeric"], ", ".join(y["non_numeric_examples"][:5]))
          for col, y in q["numeric"].items()),
    ]
    numeric_html = (table(["column", "min", "max", "median", "mean", "missing", "non-numeric", last], year_rows,
                          numeric=range(1, 8))
                    if year_rows else '<p class="note">The catalog has no numeric column.</p>')
    return f"""
<section id="quality"><h2>2. Quality checks</h2>
<h3>Numeric ranges</h3>{numeric_html}
<h3>Formatting problems</h3>
<p class="note">Checked on the raw strings of {number(fmt['rows_checked'])} rows, before the loader strips
whitespace. Placeholder values are kept as ordinary values by the loader.</p>
{table(["check", "values / rows", "where (examples)"], fmt_rows, numeric=[1])}
<h3>Unique values per categorical column</h3>
{table(["column", "unique values", "most common", "its products", "values seen once"], uniq_rows, numeric=[1, 3, 4])}
</section>"""


def _target_html(tg: dict[str, Any], label: str, chart: _Charts) -> str:
    class_chart = chart(charts.class_chart, tg["counts"], label)
    rank_chart = chart(charts.class_rank_chart, tg["counts"], label)
    coverage_chart = chart(charts.coverage_chart, tg["counts"], TOP_K)
    imb_rows = [
        ("classes", tg["n_classes"]),
        ("largest class", _named(tg["largest"])),
        ("smallest class", _named(tg["smallest"])),
        ("largest / smallest", f"{tg['imbalance_ratio']:,.1f}" if tg["imbalance_ratio"] else "n/a"),
        ("classes under 10 products",
         f"{tg['classes_under_10']} ({number(tg['products_in_classes_under_10'])} products)"),
        ("classes under 100 products",
         f"{tg['classes_under_100']} ({number(tg['products_in_classes_under_100'])} products)"),
        ("classes with a single product", tg["singleton_classes"]),
    ]
    cov_rows = [(f"top {k}", pct(v, 2)) for k, v in tg["top_k_coverage"].items()]
    cov_rows += [(f"classes needed for {lvl}", k) for lvl, k in tg["classes_to_cover"].items()]
    all_rows = [(i + 1, c, v, pct(v / tg["n_labelled"], 2)) for i, (c, v) in enumerate(tg["counts"].items())]
    return f"""
<section id="target"><h2>3. Target distribution ({escape(label)})</h2>
<div class="cols"><div>{img(class_chart, f"the largest {label} classes and their product counts")}</div>
<div><h3>All {tg['n_classes']} classes</h3><div class="scroll">
{table(["#", label, "products", "share"], all_rows, numeric=[0, 2, 3])}</div>
<p class="note">Classes under 10 products: {escape(_some(tg["names_under_10"])) or "none"}.</p></div></div>
<div class="cols"><div><h3>Imbalance</h3>{table(["figure", "value"], imb_rows, numeric=[1])}
<h3>Coverage</h3>{table(["classes", "share of products"], cov_rows, numeric=[1])}</div>
<div>{img(rank_chart, f"all {label} classes by rank")}{img(coverage_chart, "top-k coverage")}</div></div>
</section>"""


def _metadata_html(md: dict[str, Any], roles: _Roles, chart: _Charts) -> str:
    figures = []
    for col in roles.metadata:
        info = md[col]
        missing = f", {info['missing']:,} missing" if info["missing"] else ""
        title = f"{col} ({info['unique']:,} values{missing})"
        horizontal = len(info["counts"]) > 12 and col not in roles.numeric
        figures.append(img(chart(charts.bar_chart, info["counts"], title, col, "products", horizontal=horizontal),
                           f"{col} distribution"))
    return f"""
<section id="metadata"><h2>4. Metadata distributions</h2>
<div class="charts">{''.join(figures) or '<p class="note">The catalog has no attribute column.</p>'}</div>
</section>"""


def _relationships_html(eda: dict[str, Any], roles: _Roles, products: pd.DataFrame, chart: _Charts) -> str:
    """The target against the attributes with few values (heatmaps), and for the fashion layout its category
    hierarchy: where each class lives and the products that break it."""
    rel, label, classes = eda["relationships"], roles.label, list(eda["target"]["counts"])
    heat = {col: img(chart(charts.heatmap, rel[col], classes, col, list(eda["metadata"][col]["counts"]), label,
                           HEATMAP_CLASSES), f"{label} by {col}")
            for col in roles.relation}
    if not rel["hierarchy"]:
        drawn = "".join(f"<div><h3>{escape(label)} against {escape(col)}</h3>{chart_img}</div>"
                        for col, chart_img in heat.items())
        return f"""
<section id="relationships"><h2>5. Relationships</h2>
<p class="note">Heatmaps show the {HEATMAP_CLASSES} largest classes against each attribute with 2 to
{RELATION_MAX_VALUES} values; colour is the share of the class, the number is the product count.</p>
<div class="charts">{drawn or '<p class="note">No attribute column has few enough values to draw.</p>'}</div>
</section>"""
    return f"""
<section id="relationships"><h2>5. Relationships</h2>
<p class="note">Heatmaps show the {HEATMAP_CLASSES} largest classes; colour is the share of the class, the
number is the product count. Full tables for every class are in <code>eda.json</code>.</p>
<div class="charts"><div><h3>{TARGET} against gender</h3>{heat['gender']}</div>
<div><h3>{TARGET} against season</h3>{heat['season']}</div></div>
{_fashion_hierarchy_html(rel["hierarchy"], products)}
<h3>{TARGET} against usage</h3>{heat['usage']}
</section>"""


def _fashion_hierarchy_html(hb: dict[str, Any], products: pd.DataFrame) -> str:
    """masterCategory > subCategory > articleType: the products that break it (hierarchy.py), the classes found
    under several subCategories, and the whole tree."""
    tree_rows = [(t["masterCategory"], t["subCategory"], t["products"],
                  ", ".join(f"{a} ({c:,})" for a, c in t["articleTypes"].items())) for t in hb["tree"]]
    multi = [(c, p["subCategory"], ", ".join(f"{s} ({k:,})" for s, k in p["subCategories"].items()))
             for c, p in hb["placement"].items() if len(p["subCategories"]) > 1]
    per_level = ", ".join(f"{number(b['rows'])} with a misplaced {level} ({b['nodes']} distinct)"
                          for level, b in hb["breaks"].items() if b["rows"])
    multi_html = (f"<details><summary>{len(multi)} classes found under more than one subCategory</summary>"
                  + table([TARGET, "usual subCategory", "all subCategories"], multi) + "</details>" if multi else "")
    return f"""<h3>Category hierarchy: where each {TARGET} lives</h3>
<p class="note">The tree is masterCategory → subCategory → {TARGET}. A product breaks it when its {TARGET} (or its
subCategory) has a clear home, a parent holding at least {pct(1 - hb['max_share'], 0)} of that category's products,
and the product sits elsewhere; a category genuinely split between parents is not a break (the audit flags the
same products).
<b>{number(hb['rows_breaking'])}</b> products break it{f": {per_level}" if per_level else ""}.</p>
{_breaks_table(hb["breaks"], products)}
{multi_html}
<details open><summary>masterCategory → subCategory → {TARGET}</summary>
{table(["masterCategory", "subCategory", "products", f"{TARGET} (products)"], tree_rows, numeric=[2])}</details>"""


def _breaks_table(breaks: dict[str, Any], products: pd.DataFrame) -> str:
    """The hierarchy breaks by group (hierarchy.break_summary), each with its products' photos: a reader sees at
    a glance whether the label or the category is wrong."""
    rows = []
    for level, found in breaks.items():
        for g in found["groups"]:
            minis = Markup("".join(_product_mini(products, pid) for pid in g["ids"]))
            rows.append((level, g["node"], g["expected"], g["found"], g["rows"], g["n_node"], minis))
    if not rows:
        return '<p class="ok">No product breaks the hierarchy.</p>'
    return table(["level", "category", "usually under", "found under", "products", "of", "examples (id)"], rows,
                 numeric=[4, 5])


def _images_html(im: dict[str, Any], n: int, chart: _Charts) -> str:
    image_chart = chart(charts.image_chart, im)
    size_rows = [(s, v, pct(v / im["readable"], 2)) for s, v in list(im["sizes"].items())[:15]]
    mode_rows = [(m, v, pct(v / im["readable"], 2), "yes" if m in GRAYSCALE_MODES else "")
                 for m, v in im["modes"].items()]
    status_rows = [(k, v, pct(v / n, 2) if n else "") for k, v in im["status"].items() if v or k != "unchecked"]
    return f"""
<section id="images"><h2>6. Image validation</h2>
{img(image_chart, "image status, sizes and colour modes")}
<div class="cols">
<div><h3>Status</h3>{table(["status", "products", "share"], status_rows, numeric=[1, 2])}
<p class="note">Every image is hashed and fully decoded; truncated files count as corrupt.
Grayscale: <b>{number(im['grayscale'])}</b> readable images ({pct(im['grayscale_share'], 2)}) are stored
single-channel (PIL modes {', '.join(im['grayscale_modes'])}).</p></div>
<div><h3>Colour modes</h3>{table(["mode", "images", "share", "grayscale"], mode_rows, numeric=[1, 2])}</div>
<div><h3>Sizes (width x height)</h3>{table(["size", "images", "share"], size_rows, numeric=[1, 2])}
<p class="note">{number(im['other_size'])} readable images differ from the usual
{escape(im['most_common_size'])}.</p></div>
</div></section>"""


def _samples_html(eda: dict[str, Any], catalog: Catalog, products: pd.DataFrame, progress: bool) -> str:
    """Product tiles: a few per large class, the odd ones, and the dropped rows (their image found the way the
    loader finds one, catalog.find_image)."""
    smp, counts = eda["samples"], eda["target"]["counts"]
    jobs = [("class", pid, "") for ids in smp["per_class"].values() for pid in ids]
    jobs += [("odd", o[ID], o["why"]) for o in smp["odd"]] + [("dropped", d[ID], d["reason"]) for d in smp["dropped"]]
    tiles: dict[str, list[str]] = {"class": [], "odd": [], "dropped": []}
    for kind, pid, why in tqdm(jobs, desc="eda thumbnails", disable=not progress, leave=False):
        if kind == "dropped":
            path = find_image(catalog.images_dir, pid) if catalog.images_dir else None
            tiles[kind].append(_tile(None, pid, why, path))
        elif pid in products.index:
            tiles[kind].append(_tile(products.loc[pid], pid, why))
    per_class_html = "".join(
        f"<h3>{escape(cls)} ({counts[cls]:,} products)</h3><div class=\"tiles\">"
        + "".join(tiles["class"][i:i + len(ids)]) + "</div>"
        for cls, ids, i in _offsets(smp["per_class"]))
    dropped = (f'<div class="tiles">{"".join(tiles["dropped"])}</div>' if tiles["dropped"]
               else '<p class="ok">No row was dropped.</p>')
    return f"""
<section id="samples"><h2>7. Sample inspection</h2>
<p class="note">{SAMPLES_PER_CLASS} random products (fixed seed) from each of the {len(smp['per_class'])}
largest classes, then the odd ones: image problems, hierarchy breaks, duplicates, recovered rows, unusual
images.</p>
{per_class_html}
<h3>Odd products</h3><div class="tiles">{''.join(tiles['odd']) or '<p class="ok">None found.</p>'}</div>
<h3>Dropped rows</h3>{dropped}
</section>"""


def _tree_html(tree: dict[str, Any], products: pd.DataFrame) -> str:
    """A tree label: its levels, and the products whose path breaks it (hierarchy.py, as in the audit)."""
    levels = table(["level", "nodes"], list(zip(tree["levels"], tree["nodes_per_level"], strict=True)), numeric=[1])
    return f"""
<section id="tree"><h2>Category tree</h2>
<p class="note">The label is a path of {len(tree['levels'])} levels ({number(tree['paths'])} distinct paths).
<b>{number(tree['products'])}</b> products sit elsewhere than their category's home, the parent that holds at least
{pct(1 - tree['max_share'], 0)} of its products (the audit flags the same products).</p>
{levels}{_breaks_table(tree["breaks"], products)}
</section>"""


def _links_html(lk: dict[str, Any] | None) -> str:
    if lk is None:
        return ""
    sampled = (f" (a random sample of the catalog's {number(lk['sampled_from'])} links, <code>--check-links</code>)"
               if lk.get("sampled_from") else "")
    reason_rows = list(lk["by_reason"].items())
    host_rows = [(h["host"], h["links"], h["median_ms"], h["max_ms"]) for h in lk["slowest_hosts"]]
    broken_rows = [(b["url"], b["id"], b["reason"], b["detail"]) for b in lk["broken_sample"]]
    return f"""
<section id="links"><h2>8. Image links</h2>
<p>{number(lk['checked'])} links tried{sampled}; each with its status and reason in <code>links.csv</code>.</p>
<h3>By status</h3>{table(["status", "links"], list(lk["by_status"].items()), numeric=[1])}
<h3>Broken links by reason</h3>
{table(["reason", "links"], reason_rows, numeric=[1]) if reason_rows else '<p class="ok">No broken link.</p>'}
<h3>Slowest hosts</h3>{table(["host", "links", "median ms", "max ms"], host_rows, numeric=[1, 2, 3])}
<h3>Sample of broken links</h3>
{table(["url", "id", "reason", "detail"], broken_rows) if broken_rows else '<p class="ok">None.</p>'}
</section>"""


def _product_mini(products: pd.DataFrame, pid: str) -> str:
    """A small thumbnail of a loaded product (``products`` indexed by id) with its id under it, its title on
    hover."""
    if pid not in products.index:
        return mini(thumbnail_uri(None, "missing", SMALL_THUMB), pid)
    row = products.loc[pid]
    title = row.get(TITLE)
    return mini(thumbnail_uri(row.get("image_path"), str(row.get("image_status")), SMALL_THUMB), pid,
                title="" if title is None or pd.isna(title) else str(title))


def _tile(row: pd.Series | None, pid: str, why: str = "", image_path: Path | None = None) -> str:
    """A product's photo and what the catalog says about it; ``row`` None for a dropped row."""
    if row is not None:
        src = thumbnail_uri(row.get("image_path"), str(row.get("image_status")))
        year = row.get("year")
        year_text = "" if year is None or pd.isna(year) else str(int(year))
        parts = [row.get(c) for c in ("gender", "baseColour", "season", "usage")]
        meta = " · ".join(escape(p) for p in [*parts, year_text] if p is not None and not pd.isna(p) and p != "")
        body = (f'<div class="id">{escape(pid)} · {escape(row.get(TARGET))}</div>'
                f'<div class="t">{escape(row.get("masterCategory"))} / {escape(row.get("subCategory"))}</div>'
                f'<div class="t">{meta}</div><div>{escape(row.get(TITLE))}</div>')
    else:
        src = thumbnail_uri(image_path, "ok" if image_path is not None else "missing")
        body = f'<div class="id">{escape(pid)} (dropped)</div>'
    badge = f'<span class="badge">{escape(why)}</span>' if why else ""
    return f'<div class="tile"><img src="{src}" alt="product {escape(pid)}">{body}{badge}</div>'


def _some(names: Sequence[str], limit: int = 40) -> str:
    more = f" and {len(names) - limit:,} more (eda.json lists them)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _offsets(per_class: dict[str, list[str]]) -> list[tuple[str, list[str], int]]:
    out, i = [], 0
    for cls, ids in per_class.items():
        out.append((cls, ids, i))
        i += len(ids)
    return out


def _ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f} : 1" if value >= 10 else f"{value:.2f} : 1"


def _named(item: dict[str, Any] | None) -> str:
    return "n/a" if not item else f"{item['class']} ({item['count']:,})"


def _per_col(counts: dict[str, int]) -> str:
    return ", ".join(f"{c}: {v:,}" for c, v in counts.items() if v)


def _dup_examples(groups: dict[str, Any], title: str, key: str = "examples") -> str:
    if not groups[key]:
        return ""
    rows = [(g["size"], ", ".join(g["ids"]), ", ".join(g[TARGET]), " | ".join(g["titles"])) for g in groups[key]]
    return (f"<details><summary>{escape(title)}</summary>"
            + table(["products", "ids", TARGET, "titles"], rows, numeric=[0]) + "</details>")


# ------------------------------------------------------------------------------------------------ writing


def _check_link_sample(catalog: Catalog, n: int, links: Any, progress: bool) -> pd.DataFrame | None:
    """Fetch a random sample of ``n`` of the catalog's image links (fixed seed); their link report, with the
    number of links sampled from in ``attrs["sampled_from"]``. None when the catalog has no link."""
    from .image_links import LinkFetcher, LinkOptions, is_url, links_report

    schema = catalog.schema
    if not schema.image:
        return None
    pairs = [
        (value.strip(), pid)
        for pid, ref in zip(catalog.products[ID], catalog.products[schema.image].astype(str), strict=True)
        for value in (ref.split(schema.image_sep) if schema.image_sep else [ref])
        if is_url(value)
    ]
    if not pairs:
        return None
    sample = random.Random(0).sample(pairs, min(n, len(pairs)))
    with LinkFetcher(links or LinkOptions()) as fetcher:
        fetcher.fetch_many(sample, progress=progress, desc="checking links")
        report = links_report(fetcher.results)
    report.attrs["sampled_from"] = len(pairs)
    log.info("checked %d of %d image links: %s", len(sample), len(pairs), fetcher.summary())
    return report


def write_eda_report(
    data: str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    catalog_options: Mapping[str, Any] | None = None,
    check_links: int | None = None,
) -> dict[str, Any]:
    """Load and validate the catalog in ``data`` (read with ``catalog_options``: load_catalog's schema, label, text,
    image, links..., as the CLI's flags give them); write eda.json, eda.html and rejects.csv to ``out``, and
    links.csv when its images are links. ``check_links``: fetch no link while loading, but check a random sample
    of that many (fixed seed)."""
    started = time.perf_counter()
    out = Path(out)
    options = dict(catalog_options or {})
    catalog = load_catalog(data, require_target=True, progress=progress, fetch_links=check_links is None,
                           keep_table=True, **options)
    if check_links is not None:
        catalog.links = _check_link_sample(catalog, check_links, options.get("links"), progress)
    out.mkdir(parents=True, exist_ok=True)
    catalog.write_rejects(out / "rejects.csv")
    catalog.write_links(out / "links.csv")
    eda = build_eda(catalog, progress=progress)
    page = render_eda_html(eda, catalog, progress=progress)
    eda["meta"]["seconds_total"] = round(time.perf_counter() - started, 3)
    text = json.dumps(eda, indent=1, ensure_ascii=False, allow_nan=False)
    (out / "eda.json").write_text(text, encoding="utf-8")
    (out / "eda.html").write_text(page, encoding="utf-8")
    log.info("EDA of %s products written to %s (eda.html, eda.json, rejects.csv) in %.1f s",
             f"{eda['overview']['rows']:,}", out, eda["meta"]["seconds_total"])
    return eda
