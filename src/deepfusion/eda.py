"""Exploratory data analysis of a product catalog: ``eda.json`` (the figures) and ``eda.html`` (the same
figures as a self-contained page: charts and thumbnails are embedded as base64 PNG/JPEG, so it opens offline).

The catalog goes through :func:`deepfusion.catalog.load_catalog` first, so the report sees exactly the
products (and rejects) that training sees. Formatting checks (trailing spaces, casing) run on the raw strings
of the styles table, because the loader strips whitespace.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import random
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from .catalog import CATEGORICAL, COLUMNS, ID, TARGET, TITLE, Catalog, load_catalog, read_styles_table
from .schema import CatalogSchema
from .taxonomy import Taxonomy, tree_breaks

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
THUMB_SIZE = (90, 120)
SMALL_THUMB = (45, 60)  # inside table cells (hierarchy breaks, confusion examples)
THUMB_MAX_PIXELS = 40_000_000  # a larger photo gets the placeholder instead of being decoded for a thumbnail
TARGET_BARS = 40  # classes drawn with their name in the target chart; every class is in the table beside it
BREAK_GROUPS = 25
RELATION_MAX_VALUES = 30  # a categorical column of another catalog is drawn against the target up to this many values
METADATA_BARS = 40  # values of a categorical column kept in its chart (and eda.json); the rest are summed
NUMERIC_BINS = 12
PLACEHOLDER_PATTERN = r"na|n/a|nan|null|none|-|\?|unknown"
ACCENT = "#3b6ea5"


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


def _recovered_ids(source: Path, header: Sequence[str]) -> list[str]:
    """Ids of the CSV rows whose unquoted commas in the title the loader rejoined."""
    if source.suffix.lower() != ".csv" or not header or header[-1] != TITLE or ID not in header:
        return []
    raw = source.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader, None)
    where = list(header).index(ID)
    return [f[where].strip() for f in reader if len(f) > len(header)]


def _overview(catalog: Catalog, raw: pd.DataFrame, raw_rejects: pd.DataFrame, roles: _Roles) -> dict[str, Any]:
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
        "rows_in_file": len(raw) + len(raw_rejects),
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


def _quality(catalog: Catalog, raw: pd.DataFrame, raw_rejects: pd.DataFrame,
             recovered: list[str], roles: _Roles) -> dict[str, Any]:
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
            "recovered_comma_ids": recovered[:50],
            "malformed_rows": len(raw_rejects),
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
    breaks: dict[str, Any] = {}
    any_break = pd.Series(False, index=products.index)
    for col, dominant in (("subCategory", sub), ("masterCategory", master)):
        expected = products[TARGET].map(dominant)
        mask = products[col].notna() & expected.notna() & (products[col] != expected)
        any_break |= mask
        bad = products[mask].assign(expected=expected[mask])
        groups = []
        for (cls, exp, got), rows in bad.groupby([TARGET, "expected", col]):
            groups.append({TARGET: cls, "expected": exp, "found": got, "rows": len(rows),
                           "ids": rows[ID].tolist()[:5]})
        groups.sort(key=lambda g: (-g["rows"], g[TARGET], g["found"]))
        breaks[col] = {"rows": int(mask.sum()), "classes": int(bad[TARGET].nunique()), "groups": groups}
    subs = products[["masterCategory", "subCategory", TARGET]].dropna()
    tree = []
    for (m, s), rows in subs.groupby(["masterCategory", "subCategory"]):
        tree.append({"masterCategory": m, "subCategory": s, "products": len(rows),
                     "articleTypes": _counts(rows[TARGET])})
    tree.sort(key=lambda t: (t["masterCategory"], -t["products"], t["subCategory"]))
    out["hierarchy"] = {
        "placement": placement,
        "tree": tree,
        "breaks": breaks,
        "rows_breaking": int(any_break.sum()),
        "break_ids": products.loc[any_break, ID].tolist()[:200],
    }
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
    for col in ("subCategory", "masterCategory") if rel["hierarchy"] else ():
        for g in rel["hierarchy"]["breaks"][col]["groups"][:4]:
            add(g["ids"][:1], f"{col} '{g['found']}' (usually '{g['expected']}')", 1)
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
    (taxonomy.tree_breaks, the audit's rule)."""
    paths = [taxonomy.parse(v) for v in products[TARGET]]
    breaks = tree_breaks([p for p in paths if p])
    rows = [i for i, p in enumerate(paths) if p]
    ids = products[ID].astype(str).to_numpy() if ID in products.columns else np.arange(len(products)).astype(str)
    return {
        "levels": taxonomy.level_names,
        "paths": len({p for p in paths if p}),
        "nodes_per_level": [len({p[: k + 1] for p in paths if len(p) > k}) for k in range(taxonomy.n_levels)],
        "depths": {str(d): n for d, n in sorted(Counter(len(p) for p in paths if p).items())},
        "products": len(breaks),
        "examples": [{"id": str(ids[rows[b["row"]]]), **{k: v for k, v in b.items() if k != "row"}}
                     for b in breaks[:examples]],
    }


def _label_taxonomy(catalog: Catalog) -> Taxonomy | None:
    """The catalog's label as a tree (label columns, or a path label), None for a flat label."""
    schema = catalog.schema
    tax = Taxonomy.fit(list(catalog.products[TARGET]), columns=schema.levels, label_sep=schema.label_sep, min_count=1)
    return tax if tax.is_tree else None


def build_eda(catalog: Catalog, *, progress: bool = True) -> dict[str, Any]:
    """Every figure of the EDA report for a loaded catalog, as a JSON-serialisable dict."""
    started = time.perf_counter()
    steps = tqdm(total=8, desc="eda figures", disable=not progress, leave=False)
    raw, raw_rejects, _ = read_styles_table(catalog.source, sep=catalog.separator, schema=catalog.schema)
    recovered = _recovered_ids(catalog.source, list(raw.columns))
    steps.update()
    products = catalog.products
    roles = _roles(catalog.schema, products)
    overview = _overview(catalog, raw, raw_rejects, roles)
    steps.update()
    quality = _quality(catalog, raw, raw_rejects, recovered, roles)
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


def _links_html(lk: dict[str, Any] | None) -> str:
    if lk is None:
        return ""
    sampled = (f" (a random sample of the catalog's {_n(lk['sampled_from'])} links, <code>--check-links</code>)"
               if lk.get("sampled_from") else "")
    status_rows = list(lk["by_status"].items())
    reason_rows = list(lk["by_reason"].items())
    host_rows = [(h["host"], h["links"], h["median_ms"], h["max_ms"]) for h in lk["slowest_hosts"]]
    broken_rows = [(b["url"], b["id"], b["reason"], b["detail"]) for b in lk["broken_sample"]]
    return f"""
<section id="links"><h2>8. Image links</h2>
<p>{_n(lk['checked'])} links tried{sampled}; each with its status and reason in <code>links.csv</code>.</p>
<h3>By status</h3>{_table(["status", "links"], status_rows, numeric=[1])}
<h3>Broken links by reason</h3>
{_table(["reason", "links"], reason_rows, numeric=[1]) if reason_rows else '<p class="ok">No broken link.</p>'}
<h3>Slowest hosts</h3>{_table(["host", "links", "median ms", "max ms"], host_rows, numeric=[1, 2, 3])}
<h3>Sample of broken links</h3>
{_table(["url", "id", "reason", "detail"], broken_rows) if broken_rows else '<p class="ok">None.</p>'}
</section>"""


# ------------------------------------------------------------------------------------------------- charts


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _style(ax: Any) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)
    ax.grid(axis="both", alpha=0.25, linewidth=0.6)
    ax.set_axisbelow(True)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _empty_chart(title: str, width: float = 6.0) -> str:
    """A chart frame saying there is nothing to draw, so the page keeps its layout."""
    fig = _figure(width, 2.2)
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, "no values to show", ha="center", va="center", fontsize=11, color="#52606d")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=11, loc="left")
    return _png(fig)


def _bar_chart(counts: dict[str, int], title: str, xlabel: str, ylabel: str, *,
               horizontal: bool | None = None, log: bool = False, width: float = 6.0) -> str:
    if not counts:
        return _empty_chart(title, width)
    labels, values = list(counts), list(counts.values())
    horizontal = len(labels) > 12 if horizontal is None else horizontal
    if horizontal:
        fig = _figure(width, max(2.2, 0.6 + 0.2 * len(labels)))
        ax = fig.add_subplot()
        ax.barh(range(len(labels)), values, color=ACCENT)
        ax.set_yticks(range(len(labels)), labels, fontsize=7 if len(labels) > 20 else 8)
        ax.invert_yaxis()
        ax.set_xlabel(ylabel)
        ax.set_ylabel(xlabel)
        if log:
            ax.set_xscale("log")
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:,}", va="center", fontsize=6.5, color="#333")
        ax.margins(x=0.12)
    else:
        fig = _figure(width, 3.4)
        ax = fig.add_subplot()
        ax.bar(range(len(labels)), values, color=ACCENT)
        ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 5 else 0,
                      ha="right" if len(labels) > 5 else "center")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:,}", ha="center", va="bottom", fontsize=7, color="#333")
        ax.margins(y=0.12)
    _style(ax)
    ax.set_title(title, fontsize=11, loc="left")
    return _png(fig)


def _class_colours(values: Sequence[int]) -> list[str]:
    return ["#c8553d" if v < 10 else "#e0a458" if v < 100 else ACCENT for v in values]


def _class_chart(counts: dict[str, int], top: int = TARGET_BARS) -> str:
    """The ``top`` largest classes as labelled horizontal bars: 143 names under vertical bars would be a few
    pixels tall, so only the largest are named here and every class is in the table beside the chart."""
    if not counts:
        return _empty_chart(f"{TARGET}: products per class")
    title = f"The {top} largest of {len(counts)} {TARGET} classes" if len(counts) > top else f"{TARGET} classes"
    items = list(counts.items())[:top]
    labels, values = [k for k, _ in items], [v for _, v in items]
    fig = _figure(5.6, 0.9 + 0.22 * len(labels))  # about the width of its column: shown unscaled
    ax = fig.add_subplot()
    ax.barh(range(len(labels)), values, color=_class_colours(values), height=0.75)
    ax.set_yticks(range(len(labels)), labels, fontsize=9)
    ax.invert_yaxis()
    # A linear axis: bar lengths compare as counts (the long tail is on the rank chart's log axis).
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,}", va="center", fontsize=8, color="#333")
    ax.margins(x=0.1, y=0.01)  # room for the count beside the longest bar
    ax.set_xlabel("products")
    legend = "\nbars in orange: < 100 products, red: < 10" if min(values) < 100 else ""
    ax.set_title(title + legend, fontsize=10.5, loc="left")
    _style(ax)
    return _png(fig)


def _class_rank_chart(counts: dict[str, int]) -> str:
    """Every class by rank on a log scale: the shape of the long tail, which the labelled chart cannot show."""
    if not counts:
        return _empty_chart(f"{TARGET}: all classes by rank")
    values = list(counts.values())
    fig = _figure(6.0, 3.4)
    ax = fig.add_subplot()
    ax.bar(range(1, len(values) + 1), values, color=_class_colours(values), width=0.85)
    ax.set_yscale("log")
    ax.axhline(10, color="#c8553d", lw=0.8, ls="--", label="10 products")
    ax.axhline(100, color="#e0a458", lw=0.8, ls="--", label="100 products")
    ax.set_xlim(0.3, len(values) + 0.7)
    ax.set_xlabel("class rank (1 = largest; names in the table)")
    ax.set_ylabel("products (log scale)")
    ax.legend(fontsize=8, frameon=False, loc="upper right")
    ax.set_title(f"All {len(values)} classes by size (red: < 10, orange: < 100)", fontsize=11, loc="left")
    _style(ax)
    return _png(fig)


def _coverage_chart(counts: dict[str, int]) -> str:
    if not counts:
        return _empty_chart("Share of products covered by the top-k classes")
    values = np.array(list(counts.values()), dtype=float)
    cumulative = np.cumsum(values) / values.sum()
    fig = _figure(6.0, 3.4)
    ax = fig.add_subplot()
    k = np.arange(1, len(values) + 1)
    ax.plot(k, cumulative * 100, color=ACCENT, lw=2)
    for top in TOP_K:
        if top <= len(values):
            ax.plot(top, cumulative[top - 1] * 100, "o", color="#c8553d", ms=4)
            ax.annotate(f"top {top}: {cumulative[top - 1]:.1%}", (top, cumulative[top - 1] * 100),
                        textcoords="offset points", xytext=(6, -12), fontsize=7)
    ax.set_xlabel("number of largest classes (k)")
    ax.set_ylabel("share of products covered (%)")
    ax.set_ylim(0, 102)
    ax.set_title("Share of products covered by the top-k classes", fontsize=11, loc="left")
    _style(ax)
    return _png(fig)


def _heatmap(table: dict[str, dict[str, int]], classes: list[str], col: str, order: list[str]) -> str:
    rows = classes[:HEATMAP_CLASSES]
    if not rows or not order:
        return _empty_chart(f"{TARGET} × {col}")
    matrix = np.array([[table.get(r, {}).get(c, 0) for c in order] for r in rows], dtype=float)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    fig = _figure(max(5.5, 2.6 + 0.85 * len(order)), 1.2 + 0.27 * len(rows))
    ax = fig.add_subplot()
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(len(rows)):
        for j in range(len(order)):
            if matrix[i, j]:
                ax.text(j, i, f"{int(matrix[i, j]):,}", ha="center", va="center", fontsize=6.5,
                        color="white" if shares[i, j] > 0.55 else "#222")
    ax.set_xlabel(col)
    ax.set_ylabel(f"{TARGET} (largest {len(rows)})")
    ax.set_title(f"{TARGET} × {col}", fontsize=11, loc="left")
    fig.colorbar(im, ax=ax, shrink=0.6, label="share of the class (cells: products)")
    return _png(fig)


def _image_chart(images: dict[str, Any]) -> str:
    fig = _figure(11.0, 3.2)
    axes = fig.subplots(1, 3)
    panels = [
        ({k: v for k, v in images["status"].items() if v or k != "unchecked"}, "Image status", "status"),
        (dict(list(images["sizes"].items())[:8]), "Image sizes (readable, top 8)", "width x height"),
        (images["modes"], "Colour modes (readable)", "PIL mode"),
    ]
    for ax, (counts, title, xlabel) in zip(axes, panels, strict=True):
        labels, values = list(counts), list(counts.values())
        colors = ["#c8553d" if lab in ("missing", "corrupt") else ACCENT for lab in labels]
        ax.bar(range(len(labels)), values, color=colors)
        ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0,
                      ha="right" if len(labels) > 3 else "center")
        if values and max(values) > 50 * max(1, min(values)):
            ax.set_yscale("log")
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:,}", ha="center", va="bottom", fontsize=7)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("products")
        ax.margins(y=0.15)
        _style(ax)
    return _png(fig)


# --------------------------------------------------------------------------------------------------- HTML

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;
background:#f3f5f8;color:#1f2933;line-height:1.45}
header{background:linear-gradient(120deg,#1f3a5f,#3b6ea5);color:#fff;padding:26px 40px 18px}
header h1{margin:0 0 4px;font-size:26px;font-weight:600}
header .sub{opacity:.85;font-size:14px}
nav{margin-top:14px;font-size:14px}
nav a{color:#fff;opacity:.85;margin-right:16px;text-decoration:none;border-bottom:1px dotted #fff}
main{max-width:1240px;margin:0 auto;padding:12px 32px 60px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(175px,1fr));gap:12px;margin:18px 0 8px}
.card{background:#fff;border-radius:10px;padding:12px 16px;box-shadow:0 1px 3px rgba(15,30,60,.12);
border-left:4px solid #3b6ea5}
.card .v{font-size:25px;font-weight:650;font-variant-numeric:tabular-nums}
.card .l{font-size:12.5px;color:#52606d}
.card.warn{border-left-color:#d9822b}.card.warn .v{color:#a4501a}
.card.bad{border-left-color:#c8553d}.card.bad .v{color:#a33b2b}
section{background:#fff;border-radius:10px;padding:6px 26px 22px;margin:22px 0;
box-shadow:0 1px 3px rgba(15,30,60,.12)}
h2{font-size:20px;border-bottom:2px solid #e4e7eb;padding-bottom:6px;margin-top:18px}
h3{font-size:15.5px;margin:20px 0 6px;color:#334e68}
table{border-collapse:collapse;font-size:13px;margin:6px 0 10px}
th{background:#f0f4f8;font-weight:600}
th,td{padding:4px 11px;border-bottom:1px solid #e4e7eb;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr:hover td{background:#f8fafc}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:18px;align-items:start}
figure{margin:8px 0}
figure img{max-width:100%;height:auto;border:1px solid #eef1f4;border-radius:6px}
.note{color:#52606d;font-size:13px}
.ok{color:#2f7d4a}.warn-t{color:#a4501a}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(158px,1fr));gap:10px;margin:8px 0 16px}
.tile{border:1px solid #e4e7eb;border-radius:8px;padding:7px;font-size:11.5px;background:#fafbfc}
.tile img{display:block;margin:0 auto 5px;width:90px;height:120px;object-fit:contain;border:0}
.tile .id{font-weight:600}
.tile .t{color:#52606d}
.badge{display:inline-block;background:#fde8d7;color:#8a3b0c;border-radius:4px;padding:1px 6px;margin-top:4px}
details{margin:6px 0 12px}summary{cursor:pointer;color:#3b6ea5;font-size:13.5px}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:8px 28px}
code{background:#f0f4f8;padding:0 4px;border-radius:3px}
.scroll{max-height:520px;overflow:auto;border:1px solid #e4e7eb;border-radius:6px}
.scroll table{margin:0;width:100%}.scroll th{position:sticky;top:0}
.mini{display:inline-block;text-align:center;margin:0 6px 2px 0;font-size:11px;color:#52606d}
.mini img{display:block;width:45px;height:60px;object-fit:contain;border:1px solid #e4e7eb;border-radius:3px;
background:#fff}
"""


class Markup(str):
    """HTML built here from escaped parts: ``_table`` puts it into a cell as it is."""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _n(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def _pct(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if 0 < 100 * value < 0.5 * 10**-digits:
        return f"<{10**-digits:.{digits}f}%"
    return f"{100 * value:.{digits}f}%"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] = ()) -> str:
    num = set(numeric)
    head = "".join(f'<th class="n">{_e(h)}</th>' if i in num else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            text = v if isinstance(v, Markup) else _n(v) if i in num and isinstance(v, int | float) else _e(v)
            cells.append(f'<td class="n">{text}</td>' if i in num else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(data: str, alt: str) -> str:
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}"></figure>'


def _card(value: str, label: str, level: str = "") -> str:
    return f'<div class="card {level}"><div class="v">{_e(value)}</div><div class="l">{_e(label)}</div></div>'


def thumbnail_uri(path: str | Path | None, status: str = "ok", size: tuple[int, int] = THUMB_SIZE) -> str:
    """The product image as a JPEG data URI of at most twice ``size`` (sharp on high-density screens); a labelled
    PNG placeholder of ``size`` when it is missing, corrupt or too large to decode. Never raises."""
    im: Image.Image | None = None
    if status == "ok" and (path is None or not Path(path).is_file()):
        status = "missing"
    if status == "ok":
        try:
            with Image.open(path) as src:
                # Opening reads only the header: refuse a huge photo before decoding it, and let a JPEG decode at
                # a reduced scale, since only a thumbnail is needed.
                if src.width * src.height <= THUMB_MAX_PIXELS:
                    src.draft(src.mode, (size[0] * 2, size[1] * 2))
                    im = src.convert("RGB")
                    im.thumbnail((size[0] * 2, size[1] * 2))
                else:
                    status = "too large"
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            # A file that changed since loading, or was never readable: the thumbnail shows a placeholder.
            log.warning("thumbnail of %s not drawn (%s: %s)", path, type(exc).__name__, exc)
            im = None
            status = "corrupt" if status == "ok" else status
    if im is None:
        im = Image.new("RGB", size, (236, 238, 241))
        draw = ImageDraw.Draw(im)
        draw.rectangle((0, 0, size[0] - 1, size[1] - 1), outline=(200, 85, 61), width=2)
        label = status if status in ("missing", "corrupt", "too large") else "no image"
        draw.text((size[0] // 2, size[1] // 2), label, fill=(163, 59, 43), anchor="mm")
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _mini(src: str, caption: str, title: str = "") -> str:
    """A small captioned thumbnail for a table cell."""
    return (f'<span class="mini" title="{_e(title)}"><img src="{src}" alt="product {_e(caption)}">'
            f"<span>{_e(caption)}</span></span>")


def _product_mini(products: pd.DataFrame, pid: str) -> str:
    """A small thumbnail of a loaded product (indexed by id) with its id under it."""
    if pid not in products.index:
        return _mini(thumbnail_uri(None, "missing", SMALL_THUMB), pid)
    row = products.loc[pid]
    title = row.get(TITLE)
    return _mini(thumbnail_uri(row.get("image_path"), str(row.get("image_status")), SMALL_THUMB), pid,
                 "" if title is None or pd.isna(title) else str(title))


def _tile(row: pd.Series | None, pid: str, why: str = "", image_path: Path | None = None) -> str:
    if row is not None:
        src = thumbnail_uri(row.get("image_path"), str(row.get("image_status")))
        year = row.get("year")
        year_text = "" if year is None or pd.isna(year) else str(int(year))
        parts = [row.get(c) for c in ("gender", "baseColour", "season", "usage")]
        meta = " · ".join(_e(p) for p in [*parts, year_text] if p is not None and not pd.isna(p) and p != "")
        body = (f'<div class="id">{_e(pid)} · {_e(row.get(TARGET))}</div>'
                f'<div class="t">{_e(row.get("masterCategory"))} / {_e(row.get("subCategory"))}</div>'
                f'<div class="t">{meta}</div><div>{_e(row.get(TITLE))}</div>')
    else:
        found = image_path is not None and image_path.is_file()
        src = thumbnail_uri(image_path, "ok" if found else "missing")
        body = f'<div class="id">{_e(pid)} (dropped)</div>'
    badge = f'<span class="badge">{_e(why)}</span>' if why else ""
    return f'<div class="tile"><img src="{src}" alt="product {_e(pid)}">{body}{badge}</div>'


def _tree_html(tree: dict[str, Any]) -> str:
    """The label's tree: its levels, and the products whose path breaks it."""
    levels = "".join(f"<tr><td>{_e(n)}</td><td>{_n(k)}</td></tr>"
                     for n, k in zip(tree["levels"], tree["nodes_per_level"], strict=True))
    rows = "".join(
        f"<tr><td>{_e(b['id'])}</td><td>{_e(b['node'])}</td><td>{_e(b['parent'])}</td><td>{_e(b['usual_parent'])}"
        f" ({_n(b['n_usual'])} of {_n(b['n_node'])})</td></tr>" for b in tree["examples"])
    breaks = (f"<table><tr><th>id</th><th>node</th><th>under</th><th>usually under</th></tr>{rows}</table>"
              if rows else '<p class="ok">Every node has one parent.</p>')
    return f"""
<section id="tree"><h2>Category tree</h2>
<p class="note">The label is a path of {len(tree['levels'])} levels ({_n(tree['paths'])} distinct paths).
<b>{_n(tree['products'])}</b> products sit under a parent that few products of their node use.</p>
<table><tr><th>level</th><th>nodes</th></tr>{levels}</table>{breaks}
</section>"""


def render_eda_html(eda: dict[str, Any], catalog: Catalog, *, progress: bool = True) -> str:
    """The report page for figures from :func:`build_eda`; charts and thumbnails are embedded."""
    ov, q, tg, md, rel, im, smp = (
        eda[k] for k in ("overview", "quality", "target", "metadata", "relationships", "images", "samples"))
    classes = list(tg["counts"])
    n = ov["rows"]
    roles = _roles(catalog.schema, catalog.products)
    label = roles.label
    charts = tqdm(total=5 + len(roles.metadata) + len(roles.relation), desc="eda charts",
                  disable=not progress, leave=False)

    def chart(make: Any, *args: Any, **kwargs: Any) -> str:
        data = make(*args, **kwargs)
        charts.update()
        return data

    fmt = q["formatting"]
    hb = rel["hierarchy"]
    cards = "".join([
        _card(_n(n), "products loaded"),
        _card(_n(ov["n_columns"]), "columns in the table"),
        _card(_n(tg["n_classes"]), f"{label} classes"),
        _card(_n(im["status"]["ok"]), "readable images"),
        _card(_n(ov["images"]["without_image"]), "products without a usable image",
              "bad" if ov["images"]["without_image"] else ""),
        _card(_n(ov["rejects"]["dropped"]), "rows dropped (rejects.csv)",
              "bad" if ov["rejects"]["dropped"] else ""),
        _card(_n(ov["duplicate_images"]["groups"]), "groups of byte-identical images",
              "warn" if ov["duplicate_images"]["groups"] else ""),
        _card(_n(hb["rows_breaking"]), "products breaking the category hierarchy",
              "warn" if hb["rows_breaking"] else "") if hb else "",
        _card(_ratio(tg["imbalance_ratio"]), "largest / smallest class",
              "warn" if (tg["imbalance_ratio"] or 0) >= 10 else ""),
        _card(_n(tg["classes_under_10"]), "classes with < 10 products",
              "warn" if tg["classes_under_10"] else ""),
        _card(_pct(im["grayscale_share"], 2), "grayscale images"),
        _card(_n(fmt["recovered_comma_rows"]), "rows with unquoted commas recovered"),
    ])

    # 1. Overview
    col_rows = [(c["name"], c["kind"], c["dtype"] if c["in_file"] else "(not in file)", c["missing"],
                 _pct(c["missing_share"], 2), c["unique"]) for c in ov["columns"]]
    missing_chart = chart(_bar_chart, {c["name"]: c["missing"] for c in ov["columns"]},
                          "Missing values per column (after loading)", "column", "missing values",
                          horizontal=True)
    di, dt, dids = ov["duplicate_images"], ov["duplicate_titles"], ov["duplicate_ids"]
    dup_rows = [
        ("duplicate ids (rows dropped, first kept)", dids["rows_dropped"], dids["ids"], "",
         ", ".join(dids["examples"])),
        ("byte-identical images", di["products"], di["groups"], di["groups_with_conflicting_labels"], ""),
        ("identical titles", dt["products"], dt["groups"], dt["groups_with_conflicting_labels"], ""),
    ]
    reason_rows = [(r["reason"], r["action"], r["rows"]) for r in ov["rejects"]["by_reason"]]
    overview_html = f"""
<section id="overview"><h2>1. Overview</h2>
<p>{_n(ov['rows_in_file'])} data rows in <code>{_e(Path(eda['meta']['source']).name)}</code>:
<b>{_n(n)}</b> products loaded, <b>{_n(ov['rejects']['dropped'])}</b> dropped and
{_n(ov['rejects']['kept_with_problem'])} kept with a problem noted (every one is listed in
<code>rejects.csv</code>). <b>{_n(ov['images']['with_image'])}</b> products have a readable image,
{_n(ov['images']['without_image'])} do not.</p>
<div class="cols"><div><h3>Columns</h3>
{_table(["column", "kind", "dtype", "missing", "missing %", "unique"], col_rows, numeric=[3, 4, 5])}</div>
<div>{_img(missing_chart, "missing values per column")}</div></div>
<h3>Duplicates</h3>
{_table(["kind", "rows", "groups / ids", "groups with conflicting labels", "examples"], dup_rows,
        numeric=[1, 2, 3])}
{_dup_examples(di, "Largest groups of byte-identical images")}
{_dup_examples(di, f"Byte-identical images with different {label}", "conflicting_examples")}
{_dup_examples(dt, "Largest groups of identical titles")}
<h3>Rejected and flagged rows</h3>
{_table(["reason", "action", "rows"], reason_rows, numeric=[2]) if reason_rows else '<p class="ok">None.</p>'}
</section>"""

    # 2. Quality
    year_rows = [(col, *(f"{v:g}" if v is not None else "n/a" for v in (y["min"], y["max"], y["median"])),
                  f"{y['mean']:.2f}" if y["mean"] is not None else "n/a", y["missing"], y["non_numeric"],
                  y["implausible"] if y["implausible"] is not None else "")
                 for col, y in q["numeric"].items()]
    plausible = next((y["plausible_range"] for y in q["numeric"].values() if y["plausible_range"]), None)
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
    quality_html = f"""
<section id="quality"><h2>2. Quality checks</h2>
<h3>Numeric ranges</h3>
{_table(["column", "min", "max", "median", "mean", "missing", "non-numeric", "outside " + "–".join(
        str(v) for v in plausible) if plausible else "implausible"], year_rows, numeric=range(1, 8))
 if year_rows else '<p class="note">The catalog has no numeric column.</p>'}
<h3>Formatting problems</h3>
<p class="note">Checked on the raw strings of {_n(fmt['rows_checked'])} rows, before the loader strips
whitespace. Placeholder values are kept as ordinary values by the loader.</p>
{_table(["check", "values / rows", "where (examples)"], fmt_rows, numeric=[1])}
<h3>Unique values per categorical column</h3>
{_table(["column", "unique values", "most common", "its products", "values seen once"], uniq_rows,
        numeric=[1, 3, 4])}
</section>"""

    # 3. Target
    class_chart = chart(_class_chart, tg["counts"])
    rank_chart = chart(_class_rank_chart, tg["counts"])
    coverage_chart = chart(_coverage_chart, tg["counts"])
    imb_rows = [
        ("classes", tg["n_classes"]),
        ("largest class", _named(tg["largest"])),
        ("smallest class", _named(tg["smallest"])),
        ("largest / smallest", f"{tg['imbalance_ratio']:,.1f}" if tg["imbalance_ratio"] else "n/a"),
        ("classes under 10 products",
         f"{tg['classes_under_10']} ({_n(tg['products_in_classes_under_10'])} products)"),
        ("classes under 100 products",
         f"{tg['classes_under_100']} ({_n(tg['products_in_classes_under_100'])} products)"),
        ("classes with a single product", tg["singleton_classes"]),
    ]
    cov_rows = [(f"top {k}", _pct(v, 2)) for k, v in tg["top_k_coverage"].items()]
    cov_rows += [(f"classes needed for {lvl}", k) for lvl, k in tg["classes_to_cover"].items()]
    all_rows = [(i + 1, c, v, _pct(v / tg["n_labelled"], 2)) for i, (c, v) in enumerate(tg["counts"].items())]
    target_html = f"""
<section id="target"><h2>3. Target distribution ({label})</h2>
<div class="cols"><div>{_img(class_chart, f"the largest {label} classes and their product counts")}</div>
<div><h3>All {tg['n_classes']} classes</h3><div class="scroll">
{_table(["#", label, "products", "share"], all_rows, numeric=[0, 2, 3])}</div>
<p class="note">Classes under 10 products: {_e(_some(tg["names_under_10"])) or "none"}.</p></div></div>
<div class="cols"><div><h3>Imbalance</h3>{_table(["figure", "value"], imb_rows, numeric=[1])}
<h3>Coverage</h3>{_table(["classes", "share of products"], cov_rows, numeric=[1])}</div>
<div>{_img(rank_chart, f"all {label} classes by rank")}{_img(coverage_chart, "top-k coverage")}</div></div>
</section>"""

    # 4. Metadata
    meta_imgs = []
    for col in roles.metadata:
        info = md[col]
        missing = f", {info['missing']:,} missing" if info["missing"] else ""
        title = f"{col} ({info['unique']:,} values{missing})"
        horizontal = len(info["counts"]) > 12 and col not in roles.numeric
        data = chart(_bar_chart, info["counts"], title, col, "products", horizontal=horizontal)
        meta_imgs.append(_img(data, f"{col} distribution"))
    metadata_html = f"""
<section id="metadata"><h2>4. Metadata distributions</h2>
<div class="charts">{''.join(meta_imgs) or '<p class="note">The catalog has no attribute column.</p>'}</div>
</section>"""

    # 5. Relationships
    heat = {}
    for col in roles.relation:
        heat[col] = _img(chart(_heatmap, rel[col], classes, col, list(md[col]["counts"])),
                         f"{label} by {col}")
    rel_html = _relationships_html(heat, label) if not hb else ""
    tree_rows = [] if not hb else [(t["masterCategory"], t["subCategory"], t["products"],
                  ", ".join(f"{a} ({c:,})" for a, c in t["articleTypes"].items())) for t in hb["tree"]]
    products = catalog.products.set_index(ID, drop=False)
    products = products[~products.index.duplicated()]
    break_rows = []
    for col in ("subCategory", "masterCategory") if hb else ():
        for g in hb["breaks"][col]["groups"][:BREAK_GROUPS]:
            # The products themselves, not only their ids: a reader sees at a glance whether the label or the
            # category is wrong.
            minis = Markup("".join(_product_mini(products, pid) for pid in g["ids"]))
            break_rows.append((col, g[TARGET], g["expected"], g["found"], g["rows"], minis))
    multi = [(c, p["subCategory"], ", ".join(f"{s} ({k:,})" for s, k in p["subCategories"].items()))
             for c, p in (hb["placement"] if hb else {}).items() if len(p["subCategories"]) > 1]
    rel_html = rel_html or f"""
<section id="relationships"><h2>5. Relationships</h2>
<p class="note">Heatmaps show the {HEATMAP_CLASSES} largest classes; colour is the share of the class, the
number is the product count. Full tables for every class are in <code>eda.json</code>.</p>
<div class="charts"><div><h3>{TARGET} against gender</h3>{heat['gender']}</div>
<div><h3>{TARGET} against season</h3>{heat['season']}</div></div>
<h3>Category hierarchy: where each {TARGET} lives</h3>
<p class="note">Each {TARGET} is placed under its most frequent subCategory and masterCategory; a product
under a different one breaks the hierarchy. <b>{_n(hb['rows_breaking'])}</b> products do
({_n(hb['breaks']['subCategory']['rows'])} by subCategory in {hb['breaks']['subCategory']['classes']} classes,
{_n(hb['breaks']['masterCategory']['rows'])} by masterCategory in {hb['breaks']['masterCategory']['classes']}
classes).</p>
{_table(["check", TARGET, "expected", "found", "products", "examples (id)"], break_rows, numeric=[4])
 if break_rows else '<p class="ok">No product breaks the hierarchy.</p>'}
{f'<details><summary>{len(multi)} classes found under more than one subCategory</summary>'
 + _table([TARGET, "usual subCategory", "all subCategories"], multi) + '</details>' if multi else ''}
<details open><summary>masterCategory → subCategory → {TARGET}</summary>
{_table(["masterCategory", "subCategory", "products", f"{TARGET} (products)"], tree_rows,
        numeric=[2])}</details>
<h3>{TARGET} against usage</h3>{heat['usage']}
</section>"""

    # 6. Images
    image_chart = chart(_image_chart, im)
    size_rows = [(s, v, _pct(v / im["readable"], 2)) for s, v in list(im["sizes"].items())[:15]]
    mode_rows = [(m, v, _pct(v / im["readable"], 2), "yes" if m in GRAYSCALE_MODES else "")
                 for m, v in im["modes"].items()]
    status_rows = [(k, v, _pct(v / n, 2) if n else "")
                   for k, v in im["status"].items() if v or k != "unchecked"]
    images_html = f"""
<section id="images"><h2>6. Image validation</h2>
{_img(image_chart, "image status, sizes and colour modes")}
<div class="cols">
<div><h3>Status</h3>{_table(["status", "products", "share"], status_rows, numeric=[1, 2])}
<p class="note">Every image is hashed and fully decoded; truncated files count as corrupt.
Grayscale: <b>{_n(im['grayscale'])}</b> readable images ({_pct(im['grayscale_share'], 2)}) are stored
single-channel (PIL modes {', '.join(im['grayscale_modes'])}).</p></div>
<div><h3>Colour modes</h3>{_table(["mode", "images", "share", "grayscale"], mode_rows, numeric=[1, 2])}</div>
<div><h3>Sizes (width x height)</h3>{_table(["size", "images", "share"], size_rows, numeric=[1, 2])}
<p class="note">{_n(im['other_size'])} readable images differ from the usual
{_e(im['most_common_size'])}.</p></div>
</div></section>"""

    charts.close()

    # 7. Samples
    images_dir = catalog.source.parent / "images"
    tile_jobs: list[tuple[str, str, str]] = [
        ("class", pid, "") for ids in smp["per_class"].values() for pid in ids]
    tile_jobs += [("odd", o[ID], o["why"]) for o in smp["odd"]]
    tile_jobs += [("dropped", d[ID], d["reason"]) for d in smp["dropped"]]
    tiles: dict[str, list[str]] = {"class": [], "odd": [], "dropped": []}
    for kind, pid, why in tqdm(tile_jobs, desc="eda thumbnails", disable=not progress, leave=False):
        if kind == "dropped":
            path = next((p for p in (images_dir / f"{pid}{x}" for x in (".jpg", ".jpeg", ".png", ".webp"))
                         if p.is_file()), None)
            tiles[kind].append(_tile(None, pid, why, path))
        elif pid in products.index:
            row = products.loc[pid]
            tiles[kind].append(_tile(row if isinstance(row, pd.Series) else row.iloc[0], pid, why))
    per_class_html = "".join(
        f"<h3>{_e(cls)} ({tg['counts'][cls]:,} products)</h3><div class=\"tiles\">"
        + "".join(tiles["class"][i:i + len(ids)]) + "</div>"
        for cls, ids, i in _offsets(smp["per_class"]))
    samples_html = f"""
<section id="samples"><h2>7. Sample inspection</h2>
<p class="note">{SAMPLES_PER_CLASS} random products (fixed seed) from each of the {len(smp['per_class'])}
largest classes, then the odd ones: image problems, hierarchy breaks, duplicates, recovered rows, unusual
images.</p>
{per_class_html}
<h3>Odd products</h3><div class="tiles">{''.join(tiles['odd']) or '<p class="ok">None found.</p>'}</div>
<h3>Dropped rows</h3>
{('<div class="tiles">' + ''.join(tiles['dropped']) + '</div>') if tiles['dropped']
 else '<p class="ok">No row was dropped.</p>'}
</section>"""
    if eda.get("tree"):
        samples_html += _tree_html(eda["tree"])

    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in [
        ("overview", "Overview"), ("quality", "Quality"), ("target", "Target"), ("metadata", "Metadata"),
        ("relationships", "Relationships"), ("images", "Images"), ("samples", "Samples"),
        *([("links", "Links")] if "links" in eda else [])])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Catalog EDA – {_e(Path(eda['meta']['source']).parent.name)}</title><style>{CSS}</style></head>
<body><header><h1>Catalog EDA · {_e(Path(eda['meta']['source']).parent.name)}</h1>
<div class="sub">{_e(eda['meta']['source'])} · generated {_e(eda['meta']['generated_at'])}</div>
<div class="sub">{_e(eda['meta']['summary'])}</div><nav>{nav}</nav></header>
<main><div class="cards">{cards}</div>
{overview_html}{quality_html}{target_html}{metadata_html}{rel_html}{images_html}{samples_html}
{_links_html(eda.get("links"))}
<p class="note">Figures as JSON: <code>eda.json</code>.
Rejected and flagged rows: <code>rejects.csv</code>.</p>
</main></body></html>
"""


def _relationships_html(heat: dict[str, str], label: str) -> str:
    """The relationships section of a catalog in another schema than the fashion one: the target against each
    categorical column with a few values."""
    charts = "".join(f"<div><h3>{_e(label)} against {_e(col)}</h3>{img}</div>" for col, img in heat.items())
    return f"""
<section id="relationships"><h2>5. Relationships</h2>
<p class="note">Heatmaps show the {HEATMAP_CLASSES} largest classes against each attribute with 2 to
{RELATION_MAX_VALUES} values; colour is the share of the class, the number is the product count.</p>
<div class="charts">{charts or '<p class="note">No attribute column has few enough values to draw.</p>'}</div>
</section>"""


def _some(names: Sequence[str], limit: int = 40) -> str:
    more = f" and {len(names) - limit:,} more (eda.json lists them)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


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
    rows = [(g["size"], ", ".join(g["ids"]), ", ".join(g[TARGET]), " | ".join(g["titles"]))
            for g in groups[key]]
    return (f"<details><summary>{_e(title)}</summary>"
            + _table(["products", "ids", TARGET, "titles"], rows, numeric=[0]) + "</details>")


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
    catalog = load_catalog(data, require_target=True, progress=progress, fetch_links=check_links is None, **options)
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
