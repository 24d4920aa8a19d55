"""Category trees: labels that are paths through a taxonomy, for training, evaluation and prediction.

A label is a tree path in two spellings: one column holding a path (``Toys > Model Trains > Rail Vehicles``,
separators ``>``, ``>>``, ``|``, ``/`` or one the user names), or several label columns that are the levels
(``masterCategory, subCategory, articleType``). Inside the package the products frame's label column holds the
path as one string, so every flat model and metric works unchanged: a class is a whole path.

``Taxonomy`` reads and writes both spellings, truncates paths to a chosen depth and backs rare paths off to their
parent (``back_off``). A model trained on whole paths as classes scores whole paths: its argmax is always a path
that exists in the training taxonomy. ``level_probabilities`` marginalises its class probabilities to each level
and ``top_down`` decodes greedily level by level (each level conditioned on the parent chosen above it), the
alternative that ``benchmarks/category_tree.py`` measures against whole-path decoding. ``level_metrics`` is the
per-level report (accuracy, macro-F1, hierarchical F1, where a path first goes wrong). ``tree_breaks`` (products
whose labels break the tree) is hierarchy.py's, the one definition the EDA and the audit share.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import f1_score

from .hierarchy import tree_breaks  # noqa: F401  (re-exported: the one definition of a break is hierarchy.py's)

log = logging.getLogger(__name__)

# Several label columns are joined with this character when a catalog is loaded: it cannot be typed in a
# catalog cell (cleaned text never holds it), so a level's value can never be mistaken for two levels.
JOIN = "\x1f"
# Separators recognised in a path label, longest first so ">>" is not read as two ">".
PATH_SEPARATORS = (">>", ">", "|", "/")
# A separator is taken as the path separator when at least this share of the labels holds it: a flat class
# name with an occasional slash ("T-shirts/Tops") stays a flat class.
DETECT_SHARE = 0.5
# Spellings tried for the joined path of several label columns, the first whose separator no value holds.
DISPLAY_CHOICES = (" > ", " | ", " / ", " >> ")
from .config import DEFAULT_MIN_CLASS_SIZE, FORMAT1_MIN_CLASS_SIZE  # noqa: E402 - one default, beside the rest of the configuration

Path = tuple[str, ...]


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""


def join_levels(rows: Iterable[Sequence[object]]) -> list[str | None]:
    """One label per product from its level columns' values: the levels up to the first empty one (a product
    whose deeper levels are unknown is still a path, a shorter one), None when the first level is empty."""
    out: list[str | None] = []
    for row in rows:
        parts: list[str] = []
        for value in row:
            if _is_missing(value):
                break
            parts.append(str(value).strip())
        out.append(JOIN.join(parts) or None)
    return out


def detect_separator(values: Iterable[object]) -> str | None:
    """The path separator most labels hold (``PATH_SEPARATORS``, at least ``DETECT_SHARE`` of them), or None:
    the labels are flat classes."""
    labels = [str(v) for v in values if not _is_missing(v)]
    if not labels:
        return None
    for sep in PATH_SEPARATORS:
        share = sum(sep in v for v in labels) / len(labels)
        if share >= DETECT_SHARE:
            return sep
    return None


def _display_for(values: Iterable[str], sep: str) -> str:
    """How the user spells ``sep`` between levels: with spaces around it when most labels do."""
    labels = [v for v in values if sep in v]
    spaced = sum(f" {sep} " in v for v in labels)
    return f" {sep} " if labels and spaced * 2 >= len(labels) else sep


def back_off(paths: Sequence[Path], min_count: int) -> tuple[list[Path], dict[Path, dict[str, Any]]]:
    """Each path with fewer than ``min_count`` products replaced by its deepest ancestor under which at least
    ``min_count`` products sit (a node the model can learn: its probability is the sum over every path under it),
    or by its level-1 node when no ancestor has that many. Its products then count as that node, and each level
    above stays learnable. Returns the new paths and, for every original path that was merged, where it went and
    how many products it had."""
    counts = Counter(paths)
    merged: dict[Path, dict[str, Any]] = {}
    if min_count <= 1 or not paths:
        return list(paths), merged
    subtree: Counter[Path] = Counter()
    for path, n in counts.items():
        for k in range(1, len(path) + 1):
            subtree[path[:k]] += n
    target: dict[Path, Path] = {}
    for path, n in counts.items():
        if n >= min_count or len(path) == 1:
            continue
        ancestors = [path[:k] for k in range(len(path) - 1, 0, -1)]
        target[path] = next((a for a in ancestors if subtree[a] >= min_count), path[:1])
        merged[path] = {"into": target[path], "products": n}
    return [target.get(p, p) for p in paths], merged


@dataclass
class Taxonomy:
    """How a catalog's labels form a tree, fitted on the training labels.

    ``columns``: the label columns that are the levels (empty for one label column). ``sep``: the separator of a
    path label (None: flat classes, or label columns). ``display``: the joiner of the paths the model predicts, the
    user's own spelling (``" > "`` for label columns). ``depth``: levels kept (None: all). ``min_count``: paths with
    fewer training products back off to their parent. ``paths``: the training taxonomy after back-off, as
    predicted. ``merged``: original path -> ``{"into": path, "products": n}``.
    """

    columns: tuple[str, ...] = ()
    sep: str | None = None
    display: str = " > "
    depth: int | None = None
    min_count: int = DEFAULT_MIN_CLASS_SIZE
    paths: list[str] = field(default_factory=list)
    merged: dict[str, dict[str, Any]] = field(default_factory=dict)

    # ------------------------------------------------------------------ spelling
    def parse(self, value: object) -> Path:
        """A raw label (as the products frame holds it) as its levels, truncated to ``depth``; () when missing."""
        if _is_missing(value):
            return ()
        text = str(value)
        if self.columns:
            parts = text.split(JOIN)
        elif self.sep is not None:
            parts = text.split(self.sep)
        else:
            parts = [text]
        parts = [p.strip() for p in parts if p.strip()]
        return tuple(parts[: self.depth] if self.depth else parts)

    def format(self, path: Path) -> str:
        return self.display.join(path)

    def split(self, path: str | None) -> Path:
        """A predicted path (``format``'s spelling) as its levels."""
        if path is None:
            return ()
        return tuple(path.split(self.display)) if self.is_tree else (path,)

    @property
    def is_tree(self) -> bool:
        return bool(self.columns) or self.sep is not None

    @property
    def n_levels(self) -> int:
        if self.columns:
            return min(len(self.columns), self.depth or len(self.columns))
        return max((len(self.split(p)) for p in self.paths), default=1)

    @property
    def level_names(self) -> list[str]:
        """One name per level: the label columns' own names, else ``level_1``, ``level_2``, ..."""
        if self.columns:
            return list(self.columns[: self.n_levels])
        return [f"level_{k}" for k in range(1, self.n_levels + 1)]

    # ------------------------------------------------------------------ fit / map
    @classmethod
    def fit(
        cls,
        labels: Sequence[object],
        *,
        columns: Sequence[str] = (),
        label_sep: str | None = None,
        depth: int | None = None,
        min_count: int = DEFAULT_MIN_CLASS_SIZE,
    ) -> Taxonomy:
        """The taxonomy of the training ``labels`` (raw, as the products frame holds them). ``label_sep``: the path
        separator (None: detected; ``"none"``: flat classes)."""
        if depth is not None and depth < 1:
            raise ValueError(f"depth must be at least 1, not {depth}")
        values = [str(v) for v in labels if not _is_missing(v)]
        columns = tuple(columns)
        if len(columns) > 1:
            sep = None
            levels = {part for v in values for part in v.split(JOIN)}
            display = next((d for d in DISPLAY_CHOICES if not any(d.strip() in x for x in levels)), JOIN)
        else:
            columns = ()
            sep = detect_separator(values) if label_sep is None else (None if label_sep == "none" else label_sep)
            display = _display_for(values, sep) if sep is not None else " > "
        tax = cls(columns=columns, sep=sep, display=display, depth=depth, min_count=min_count)
        parsed = [p for p in (tax.parse(v) for v in values) if p]
        if not tax.is_tree and depth not in (None, 1):
            log.info("the label is not a path (no separator found); --depth is ignored")
        backed, merged = back_off(parsed, min_count) if tax.is_tree else (parsed, {})
        tax.paths = sorted({tax.format(p) for p in backed})
        if tax.is_tree:
            # A product's class is its path's deepest prefix that is a path of the taxonomy (to_known, as new
            # products are mapped). back_off can name a node as the target of deeper rare paths while that node's
            # own products stay on it: the classes and the merges are what that mapping gives, so every class has
            # training products and predict maps as training did.
            pairs = [(tax.format(p), into) for p, into in zip(map(tax.parse, values), tax.to_known(values),
                                                               strict=True) if into is not None]
            tax.paths = sorted({into for _, into in pairs})
            sizes = Counter(orig for orig, _ in pairs)
            merged = {orig: {"into": into, "products": sizes[orig]} for orig, into in pairs if into != orig}
            tax.merged = dict(sorted(merged.items()))
        else:
            tax.merged = {}
        if tax.merged:
            log.info(
                "%d rare paths (fewer than %d training products) backed off to their parent: %s",
                len(tax.merged), min_count, "; ".join(f"{k} -> {v['into']}" for k, v in list(tax.merged.items())[:10]),
            )
        return tax

    def canonical(self, labels: Iterable[object]) -> list[str | None]:
        """Raw labels in the predicted spelling, truncated to ``depth`` (no back-off): the truth per level."""
        return [self.format(p) if (p := self.parse(v)) else None for v in labels]

    def to_known(self, labels: Iterable[object]) -> list[str | None]:
        """Raw labels as the model's classes: truncated, then backed off to their deepest prefix that is a class
        of the taxonomy (a path whose root the model never saw is kept as it is, an unknown class)."""
        known = set(self.paths)
        out: list[str | None] = []
        for value in labels:
            path = self.parse(value)
            if not path:
                out.append(None)
                continue
            if self.is_tree:
                for k in range(len(path), 0, -1):
                    if self.format(path[:k]) in known:
                        path = path[:k]
                        break
            out.append(self.format(path))
        return out

    def levels_of(self, paths: Iterable[str | None]) -> list[list[str | None]]:
        """Per level k, each path's prefix down to level k (None where the path is shorter)."""
        split = [self.split(p) for p in paths]
        return [[self.format(s[: k + 1]) if len(s) > k else None for s in split] for k in range(self.n_levels)]

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "sep": self.sep,
            "display": self.display,
            "depth": self.depth,
            "min_count": self.min_count,
            "paths": list(self.paths),
            "merged": self.merged,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Taxonomy:
        return cls(
            columns=tuple(data.get("columns") or ()),
            sep=data.get("sep"),
            display=str(data.get("display") or " > "),
            depth=data.get("depth"),
            min_count=int(data.get("min_count", FORMAT1_MIN_CLASS_SIZE)),  # saved ones always say
            paths=[str(p) for p in data.get("paths", [])],
            merged=dict(data.get("merged") or {}),
        )


# ---------------------------------------------------------------------------------------------- decoding
def level_probabilities(
    proba: np.ndarray, classes: Sequence[str], taxonomy: Taxonomy
) -> list[tuple[list[str], np.ndarray]]:
    """Per level k: the level's nodes (path prefixes down to k) and P(level k = node), the sum of the
    probabilities of the classes under that node. A class shorter than k adds to no node of level k."""
    out = []
    for prefixes in taxonomy.levels_of(classes):
        nodes = sorted({p for p in prefixes if p is not None})
        index = {n: i for i, n in enumerate(nodes)}
        member = np.zeros((len(classes), len(nodes)), dtype=proba.dtype)
        for c, p in enumerate(prefixes):
            if p is not None:
                member[c, index[p]] = 1.0
        out.append((nodes, proba @ member))
    return out


def top_down(proba: np.ndarray, classes: Sequence[str], taxonomy: Taxonomy) -> np.ndarray:
    """Greedy decoding level by level: the most probable level-1 node, then its most probable child (or the node
    itself, when it is a class and outweighs each child), ... Returns a class index per product; the result is
    always a class, hence a path of the taxonomy."""
    split = [taxonomy.split(c) for c in classes]
    chosen = np.empty(len(proba), dtype=np.int64)
    for i, row in enumerate(proba):
        prefix: Path = ()
        candidates = np.arange(len(classes))
        while True:
            # Mass of each next step: the class ending at this prefix, or each child subtree.
            mass: dict[Path | None, float] = {}
            for c in candidates:
                key = None if len(split[c]) == len(prefix) else split[c][: len(prefix) + 1]
                mass[key] = mass.get(key, 0.0) + float(row[c])
            best = max(mass, key=lambda k: mass[k])
            if best is None:
                chosen[i] = next(c for c in candidates if len(split[c]) == len(prefix))
                break
            prefix = best
            candidates = np.array([c for c in candidates if split[c][: len(prefix)] == prefix])
            if len(candidates) == 1 and split[candidates[0]] == prefix:
                chosen[i] = candidates[0]
                break
    return chosen


# ---------------------------------------------------------------------------------------------- metrics
def level_metrics(truth: Sequence[str | None], pred: Sequence[str | None], taxonomy: Taxonomy) -> dict[str, Any]:
    """Per-level accuracy and macro-F1 of the level's value (as a per-level column holds it: the value at that
    level, over the products whose true path reaches it; a prediction that stops above it is wrong there),
    hierarchical precision/recall/F1 (the sets of ancestors, i.e. path prefixes, of the true and predicted paths,
    Kiritchenko et al.), and the level at which each predicted path first goes wrong."""
    true_levels = taxonomy.levels_of(truth)
    pred_levels = taxonomy.levels_of(pred)
    true_split = [taxonomy.split(p) for p in truth]
    pred_split = [taxonomy.split(p) for p in pred]
    names = taxonomy.level_names
    levels = []
    for k, name in enumerate(names):
        rows = [i for i, t in enumerate(true_split) if len(t) > k]
        t = [true_split[i][k] for i in rows]
        p = [pred_split[i][k] if len(pred_split[i]) > k else "(none)" for i in rows]
        accuracy = float(np.mean([a == b for a, b in zip(t, p, strict=True)])) if rows else float("nan")
        macro = float(f1_score(t, p, labels=sorted(set(t)), average="macro", zero_division=0)) if rows else float("nan")
        levels.append({"level": k + 1, "name": name, "products": len(rows), "accuracy": accuracy,
                       "macro_f1": macro, "classes": len(set(t))})
    overlap = n_true = n_pred = 0
    first_wrong: Counter[str] = Counter()
    for i in range(len(truth)):
        ts = {true_levels[k][i] for k in range(len(names))} - {None}
        ps = {pred_levels[k][i] for k in range(len(names))} - {None}
        overlap += len(ts & ps)
        n_true += len(ts)
        n_pred += len(ps)
        wrong = next((names[k] for k in range(len(names)) if true_levels[k][i] != pred_levels[k][i]), None)
        first_wrong[wrong or "none"] += 1
    h_precision = overlap / n_pred if n_pred else float("nan")
    h_recall = overlap / n_true if n_true else float("nan")
    h_f1 = 2 * h_precision * h_recall / (h_precision + h_recall) if overlap else 0.0
    n = max(len(truth), 1)
    return {
        "levels": levels,
        "hierarchical_precision": h_precision,
        "hierarchical_recall": h_recall,
        "hierarchical_f1": h_f1,
        # "none": the whole path is right.
        "first_wrong_level": {name: {"products": first_wrong[name], "share": first_wrong[name] / n}
                              for name in [*names, "none"]},
    }
