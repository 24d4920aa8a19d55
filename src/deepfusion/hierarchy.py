"""Hierarchy breaks: products filed under a parent their category does not belong under. The one definition that
the EDA (``eda.html``) and the audit (``audit.csv``) both use.

A catalog's hierarchy is a tree of levels. With a tree label (taxonomy.py) the levels are the label's own
(``Toys > Model Trains > Rail Vehicles``, or the label columns); in the fashion layout the label articleType sits
under its subCategory, under its masterCategory (attribute columns there, not labels): the path
masterCategory > subCategory > articleType.

**Definition.** Every node (a value at level 2 or deeper, such as an articleType) has a *usual parent*: the path
above it that most of its products sit under (a tie goes to the path that sorts first). A product **breaks the
hierarchy** when its node has a clear home, its usual parent holding at least 1 - ``MAX_SHARE`` (90%) of the node's
products, and the product sits under another parent. A path is reported at its shallowest break only (a
subCategory under the wrong masterCategory is one break, not one more for each articleType below it).

Why this definition: a catalog team fixes filing mistakes, and a filing mistake is a rare exception to a clear
rule. A node the catalog genuinely splits between parents (an articleType 68% under one subCategory and 32% under
another) has no single home, and neither has a generic name that many parents use (a "Toys" leaf under every brand
of a toy catalog): flagging every product off the majority parent, as the EDA once did, buries the mistakes under
correct products (the EDA still lists every node found under more than one parent, as a description). It follows
that a node of fewer than ``1 / MAX_SHARE`` products (10) is never flagged: one product off its home is more than a
tenth of it. A product with an empty level (a fashion product without a subCategory) has no place in the tree to
judge: its empty value is counted among the missing values, not as a break.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from .taxonomy import Taxonomy

Path = tuple[str, ...]

MAX_SHARE = 0.1
FASHION_LEVELS = ("masterCategory", "subCategory", "articleType")
LABEL = "articleType"  # the products frame's label column (catalog.TARGET), the fashion tree's leaf
SEP = " > "  # how a parent path is spelled in reports


def tree_breaks(paths: Sequence[Path], max_share: float = MAX_SHARE) -> list[dict[str, Any]]:
    """The products (positions in ``paths``) that break the hierarchy, by the module's definition: with
    ``max_share`` 0.1, filed away from a parent that holds at least 90% of their node's products. Returns, per
    flagged product, its position ``row``, the ``level`` of its misplaced node (1 = top), the ``node``, its
    ``parent`` and ``usual_parent`` (paths spelled with ' > '), ``n_usual`` and ``n_node`` (the node's products
    under the usual parent, and in all)."""
    return [{"row": row, "level": k + 1, "node": paths[row][k], "parent": SEP.join(paths[row][:k]),
             "usual_parent": SEP.join(usual), "n_usual": n_usual, "n_node": n_node}
            for row, k, usual, n_usual, n_node in _breaks(paths, max_share)]


def _breaks(paths: Sequence[Path], max_share: float) -> list[tuple[int, int, Path, int, int]]:
    """(row, depth k of the misplaced node, usual parent, n_usual, n_node) per product that breaks."""
    parents: dict[tuple[int, str], Counter[Path]] = {}
    for path in paths:
        for k in range(1, len(path)):
            parents.setdefault((k, path[k]), Counter())[path[:k]] += 1
    # Ties go to the parent that sorts first, so the answer does not depend on the products' order.
    usual = {key: min(c.items(), key=lambda kv: (-kv[1], kv[0])) for key, c in parents.items() if len(c) > 1}
    out = []
    for i, path in enumerate(paths):
        for k in range(1, len(path)):
            key = (k, path[k])
            if key not in usual:
                continue
            parent, n_usual = usual[key]
            n_node = sum(parents[key].values())
            if path[:k] != parent and n_usual >= (1 - max_share) * n_node - 1e-9:
                out.append((i, k, parent, n_usual, n_node))
                break
    return out


@dataclass(frozen=True)
class Hierarchy:
    """The tree a catalog's products sit in: level names (top first) and one path per product (() for a product
    that has none)."""

    levels: tuple[str, ...]
    paths: list[Path]
    fashion: bool = False  # the fashion layout's masterCategory > subCategory > articleType


def catalog_hierarchy(products: pd.DataFrame, taxonomy: Taxonomy | None = None) -> Hierarchy | None:
    """The hierarchy of a products frame: its tree label's (``taxonomy`` with ``is_tree``; the frame's labels as
    ``Taxonomy.parse`` reads them), else the fashion layout's when the frame has masterCategory and subCategory,
    else None (a flat label: nothing to break)."""
    if taxonomy is not None and taxonomy.is_tree:
        return Hierarchy(tuple(taxonomy.level_names), [taxonomy.parse(v) for v in products[LABEL]])
    if not set(FASHION_LEVELS) <= set(products.columns):
        return None
    paths = []
    for row in products[list(FASHION_LEVELS)].itertuples(index=False):
        values = [None if v is None or v != v else str(v).strip() for v in row]
        paths.append(tuple(values) if all(values) else ())
    return Hierarchy(FASHION_LEVELS, paths, fashion=True)


def reason(levels: Sequence[str], path: Path, k: int, usual: Path, n_usual: int, n_node: int) -> str:
    """The break of ``path`` at depth ``k`` in words: "articleType Heels under subCategory Sandal (usually Shoes);
    30 of 31 Heels products are under Footwear > Shoes", naming every level above the node where the product's
    parent differs from the usual one, deepest first."""
    parts = [f"{levels[j]} {path[j]} (usually {usual[j]})" for j in reversed(range(k)) if path[j] != usual[j]]
    return (f"{levels[k]} {path[k]} under {' and '.join(parts)}; {n_usual:,} of {n_node:,} {path[k]} products are "
            f"under {SEP.join(usual)}")


def breaks_frame(hierarchy: Hierarchy, index: pd.Index, max_share: float = MAX_SHARE) -> pd.DataFrame:
    """The breaks as a frame indexed like the products (``index``), one row per product that breaks:
    ``level`` (its name), ``node``, ``parent`` and ``usual_parent`` (spelled with ' > '), ``n_usual``, ``n_node``,
    ``share`` (the node's share under its usual parent: how sure the break is), ``expected`` (the product's path
    moved under the usual parent, a tuple) and ``reason``."""
    found = _breaks(hierarchy.paths, max_share)
    rows = []
    for row, k, usual, n_usual, n_node in found:
        path = hierarchy.paths[row]
        rows.append({"level": hierarchy.levels[k], "node": path[k], "parent": SEP.join(path[:k]),
                     "usual_parent": SEP.join(usual), "n_usual": n_usual, "n_node": n_node,
                     "share": n_usual / n_node, "expected": usual + path[k:],
                     "reason": reason(hierarchy.levels, path, k, usual, n_usual, n_node)})
    columns = ["level", "node", "parent", "usual_parent", "n_usual", "n_node", "share", "expected", "reason"]
    return pd.DataFrame(rows, columns=columns, index=index[[f[0] for f in found]])


def break_summary(hierarchy: Hierarchy, ids: Sequence[str], max_share: float = MAX_SHARE,
                  groups: int = 25, examples: int = 5) -> dict[str, Any]:
    """The breaks for a report: how many products break (``rows_breaking``, their ids in ``break_ids``, the first
    200), and in ``breaks``, per level below the top, the products, the nodes and the largest ``groups`` of (node,
    usual parent, found parent) with up to ``examples`` ids each."""
    frame = breaks_frame(hierarchy, pd.RangeIndex(len(hierarchy.paths)), max_share)
    frame["id"] = [str(ids[i]) for i in frame.index]
    by_level: dict[str, Any] = {}
    for level in hierarchy.levels[1:]:
        part = frame[frame["level"] == level]
        found = []
        for (node, usual, parent), rows in part.groupby(["node", "usual_parent", "parent"]):
            found.append({"node": node, "expected": usual, "found": parent, "rows": len(rows),
                          "n_node": int(rows["n_node"].iloc[0]), "ids": rows["id"].tolist()[:examples]})
        found.sort(key=lambda g: (-g["rows"], g["node"], g["found"]))
        by_level[level] = {"rows": len(part), "nodes": int(part["node"].nunique()), "groups": found[:groups]}
    return {"max_share": max_share, "rows_breaking": len(frame), "break_ids": frame["id"].tolist()[:200],
            "breaks": by_level}
