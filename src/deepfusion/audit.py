"""Catalog audit: find products whose current label is probably wrong, and metadata that breaks the hierarchy.

Two independent checks feed one ranked review queue:

* **Label issues** (model-based). Every product gets an *out-of-fold* prediction: the catalog is cut into k folds
  with ``StratifiedGroupKFold`` over the duplicate groups of ``split.duplicate_groups``, so neither a product nor any
  duplicate of it (same image bytes, or same title and attributes) is in the training data of the model that judges
  it. Inside each fold a small validation part (group-aware, stratified) is carved out of the training folds for
  early stopping and temperature calibration. The out-of-fold probabilities go to cleanlab's confident learning
  (``cleanlab.filter.find_label_issues``, pruned by noise rate: per-class thresholds are the mean self-confidence,
  products counted off-diagonal in the confident joint are the issues), ranked by self-confidence (the probability
  the model gives the current label; low is suspicious).
* **Hierarchy breaks** (rule-based, hierarchy.py: the definition the EDA uses too). A product is flagged when its
  category sits under one parent for all but ``hierarchy_max_share`` of its products and the product sits elsewhere
  ("articleType Heels under subCategory Sandal (usually Shoes)"), in the fashion layout's masterCategory >
  subCategory > articleType or in a tree label's own levels. Categories genuinely split between two parents (e.g.
  68% / 32%) are therefore not flagged.

Classes too rare to judge: a class with fewer than ``min_class_groups`` distinct duplicate groups cannot be
learned from a few training products, so the model's verdict on it would mostly flag the class for being rare.
Its products stay in *every* training fold (so the class can still be suggested for other products) and are not
judged by the model; they are still checked for hierarchy breaks. The classes are listed in ``audit.json``.

Outputs in ``out``: ``audit.csv`` (the whole queue, most suspicious first), ``audit.html`` (self-contained review
page for the top ``top_n``), ``rejects.csv`` (catalog rows that could not be used) and ``audit.json`` (summary).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold
from tqdm.auto import tqdm

from .catalog import ID, TARGET, TITLE, load_catalog
from .config import ModelConfig, config_from_options
from .features import clean_title
from .hierarchy import MAX_SHARE, SEP, breaks_frame, catalog_hierarchy
from .html_page import Markup, escape, page, pct, thumbnail_uri
from .predictor import Predictor, parse_modalities
from .runs import shared_embedder, write_json
from .schema import CatalogSchema
from .split import duplicate_groups
from .taxonomy import Taxonomy

log = logging.getLogger(__name__)

DEFAULT_TOP_N = 200
MIN_CLASS_GROUPS = 10
HIERARCHY_MAX_SHARE = MAX_SHARE
VAL_FRACTION = 0.1
ENGINES = ("local", "ray")  # where the fold models train: this process, or Ray tasks (distributed.run_folds_ray)
QUEUE_COLUMNS = [
    "rank",
    ID,
    "current_label",
    "suggested_label",
    "confidence",
    "reason",
    "issue",
    "score",
    "label_probability",
    "masterCategory",
    "subCategory",
    "expected_masterCategory",
    "expected_subCategory",
    TITLE,
]


# --------------------------------------------------------------------------------------------------- folds
@dataclass
class FoldPlan:
    """Which fold holds each product out (-1: always in training) and which products the model judges."""

    fold: np.ndarray  # int per product; -1 = in every training fold
    judged: np.ndarray  # bool per product
    groups: np.ndarray  # duplicate group per product
    rare_classes: list[str] = field(default_factory=list)


def _quiet_split(splitter: StratifiedGroupKFold, y: np.ndarray, groups: np.ndarray) -> list[np.ndarray]:
    """Held-out indices of each split; sklearn's "least populated class" warning is expected here (rare labels
    inside otherwise judged duplicate groups) and not useful to a user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return [test for _, test in splitter.split(np.zeros(len(y)), y, groups)]


def plan_folds(products: pd.DataFrame, folds: int, seed: int, min_class_groups: int = MIN_CLASS_GROUPS) -> FoldPlan:
    """Group-aware stratified k-fold assignment; ``products`` must have a RangeIndex."""
    if folds < 2:
        raise ValueError("folds must be at least 2 (each product is judged by a model trained on the other folds)")
    groups = duplicate_groups(products)
    y = products[TARGET].astype(str).to_numpy()
    groups_per_class = pd.DataFrame({"y": y, "g": groups}).drop_duplicates().value_counts("y")
    rare = sorted(groups_per_class.index[groups_per_class < min_class_groups])
    eligible_label = ~np.isin(y, rare)
    # A duplicate group is held out as a whole; it is held out if any member has a judgeable label. Rare-labelled
    # members of such a group are held out with it (no duplicate leaks into training) but not judged.
    eligible_groups = np.unique(groups[eligible_label])
    held = np.isin(groups, eligible_groups)
    fold = np.full(len(products), -1, dtype=int)
    idx = np.flatnonzero(held)
    if 0 < len(eligible_groups) < folds:
        raise ValueError(
            f"Only {len(eligible_groups)} distinct products can be judged, fewer than folds={folds}; use fewer folds."
        )
    if len(idx):
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        for k, test in enumerate(_quiet_split(splitter, y[idx], groups[idx])):
            fold[idx[test]] = k
    if rare:
        log.info(
            "%d classes have fewer than %d distinct products: kept in every training fold, not judged: %s",
            len(rare),
            min_class_groups,
            ", ".join(rare),
        )
    return FoldPlan(fold=fold, judged=(fold >= 0) & eligible_label, groups=groups, rare_classes=rare)


def carve_validation(
    pool: np.ndarray, products: pd.DataFrame, plan: FoldPlan, seed: int, val_fraction: float = VAL_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Split the training positions ``pool`` into (train, val), group-aware and stratified. Products of rare
    classes (fold -1) always stay in train."""
    candidates = pool[plan.fold[pool] >= 0]
    n_splits = max(2, round(1 / val_fraction))
    if len(np.unique(plan.groups[candidates])) < n_splits:
        return pool, pool[:0]
    y = products[TARGET].astype(str).to_numpy()[candidates]
    # A small catalog may have no class with that many products: scikit-learn refuses to stratify then, so the
    # validation share grows instead (never beyond half).
    n_splits = min(n_splits, max(2, int(pd.Series(y).value_counts().max())))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    val = candidates[_quiet_split(splitter, y, plan.groups[candidates])[0]]
    return np.setdiff1d(pool, val), val


def fit_fold(
    products: pd.DataFrame,
    plan: FoldPlan,
    classes: Sequence[str],
    k: int,
    *,
    config: ModelConfig,
    schema: CatalogSchema | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    threads: int | None = None,
    embedder: Any = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Fold ``k`` of the audit: train on the other folds (a validation part carved out of them, seeded
    ``seed + k + 1``), predict the held-out products. The one fold body of both engines: the local loop
    (``out_of_fold_probabilities``) and the Ray tasks (``distributed.run_folds_ray``).

    Returns the held-out positions, their probabilities (held, len(classes)) in ``classes`` order and the fold's
    statistics. ``threads``: torch threads for this fold (a Ray task uses its CPUs, not every core of the node);
    None leaves torch's setting alone. ``embedder``: an ``ImageEmbedder`` to share between folds (its cache is
    then read once), for models that read images with the stock backbone."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    start = time.perf_counter()
    held = np.flatnonzero(plan.fold == k)
    train_idx, val_idx = carve_validation(np.flatnonzero(plan.fold != k), products, plan, config.seed + k + 1)
    predictor = Predictor.from_config(
        config, schema=schema, cache_dir=cache_dir, progress=progress, embedder=embedder
    )
    predictor.fit(products.iloc[train_idx], products.iloc[val_idx] if len(val_idx) else None)
    fold_proba = np.asarray(predictor.predict_proba(products.iloc[held], as_pandas=False), dtype=np.float64)
    column = {c: j for j, c in enumerate(classes)}
    proba = np.zeros((len(held), len(classes)), dtype=np.float64)
    proba[:, [column[c] for c in predictor.classes_]] = fold_proba
    judged = plan.judged[held]
    given = products[TARGET].to_numpy()[held]
    pred = np.asarray(predictor.classes_)[fold_proba.argmax(axis=1)]
    acc = float((pred[judged] == given[judged]).mean()) if judged.any() else float("nan")
    stats = {
        "fold": k,
        "train": len(train_idx),
        "val": len(val_idx),
        "held_out": len(held),
        "judged": int(judged.sum()),
        "accuracy": acc,
        "best_epoch": predictor.best_epoch_,
        "temperature": predictor.temperature_,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return held, proba, stats


def out_of_fold_probabilities(
    products: pd.DataFrame,
    plan: FoldPlan,
    classes: list[str],
    *,
    config: ModelConfig,
    progress: bool,
    schema: CatalogSchema | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Probabilities (n, len(classes)) for every held-out product from the model that did not see it; rows of
    products in every training fold stay zero. Also returns per-fold statistics. The folds run one after the
    other in this process (``fit_fold``); ``distributed.run_folds_ray`` runs the same folds as Ray tasks."""
    proba = np.zeros((len(products), len(classes)), dtype=np.float64)
    n_folds = int(plan.fold.max()) + 1
    stats: list[dict[str, Any]] = []
    embedder = shared_embedder(config, cache_dir)
    if embedder is not None:
        embedder.progress = progress
    bar = tqdm(range(n_folds), desc="audit folds", unit="fold", disable=not progress)
    for k in bar:
        held, fold_proba, fold_stats = fit_fold(
            products,
            plan,
            classes,
            k,
            config=config,
            schema=schema,
            cache_dir=cache_dir,
            progress=progress,
            embedder=embedder,
        )
        proba[held] = fold_proba
        stats.append(fold_stats)
        acc = fold_stats["accuracy"]
        bar.set_postfix(accuracy=round(acc, 4))
        log.info("fold %d/%d: out-of-fold accuracy %.4f on %d products", k + 1, n_folds, acc, fold_stats["judged"])
    return proba, stats


# --------------------------------------------------------------------------------------------------- label issues
def _require_cleanlab() -> Any:
    try:
        import cleanlab
    except ImportError as exc:  # a dependency of the package; only missing in a hand-made environment
        raise ImportError("The catalog audit needs cleanlab: pip install 'cleanlab==2.9.0'") from exc
    return cleanlab


def label_issues(labels: np.ndarray, proba: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Confident learning (cleanlab) on out-of-fold probabilities of the judged products.

    Returns one row per product: ``is_issue``, ``quality`` (self-confidence), ``p_given``, ``suggested`` (the most
    likely other label for issues, the top label otherwise) and ``p_suggested``."""
    _require_cleanlab()
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    column = {c: j for j, c in enumerate(classes)}
    y = np.array([column[c] for c in labels], dtype=int)
    proba = np.clip(proba, 0.0, None)
    proba = proba / proba.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():
        # Classes that are never a judged label (too rare) have a column but no examples; cleanlab warns about it.
        warnings.filterwarnings("ignore", message="May not flag all label issues", category=UserWarning)
        is_issue = find_label_issues(y, proba, filter_by="prune_by_noise_rate", n_jobs=1)
    quality = get_label_quality_scores(y, proba, method="self_confidence")
    rows = np.arange(len(y))
    p_given = proba[rows, y]
    others = proba.copy()
    others[rows, y] = -1.0
    top = proba.argmax(axis=1)
    alt = np.where(is_issue | (top != y), others.argmax(axis=1), top)
    return pd.DataFrame(
        {
            "is_issue": is_issue,
            "quality": quality,
            "p_given": p_given,
            "suggested": np.asarray(classes, dtype=object)[alt],
            "p_suggested": proba[rows, alt],
            "top": np.asarray(classes, dtype=object)[top],
            "p_top": proba[rows, top],
        }
    )


# --------------------------------------------------------------------------------------------------- hierarchy
def hierarchy_breaks(
    products: pd.DataFrame, max_share: float = HIERARCHY_MAX_SHARE, taxonomy: Taxonomy | None = None
) -> pd.DataFrame:
    """Products that break the catalog's hierarchy (hierarchy.py: filed away from the parent that holds all but
    ``max_share`` of their category's products): the fashion layout's masterCategory > subCategory > articleType,
    or with a tree label (``taxonomy``; labels as the catalog spells them) the label's own levels.

    Returns, indexed like ``products``, only the flagged rows with ``expected_masterCategory`` and
    ``expected_subCategory`` (where the product belongs; for a tree label the usual parent path, and empty),
    ``dominant_share`` (the category's share under its usual parent), ``n_dominant``, ``n_class`` and ``reason``."""
    tree = catalog_hierarchy(products, taxonomy)
    if tree is None:  # a flat label without the fashion hierarchy's columns
        return pd.DataFrame(index=products.index[:0])
    found = breaks_frame(tree, products.index, max_share)
    if tree.fashion:
        master, sub = [e[0] for e in found["expected"]], [e[1] for e in found["expected"]]
    else:  # the usual parent path, spelled as the catalog spells its paths
        display = taxonomy.display if taxonomy is not None else SEP
        master, sub = [display.join(p.split(SEP)) if p else p for p in found["usual_parent"]], [""] * len(found)
    return pd.DataFrame(
        {
            "expected_masterCategory": master,
            "expected_subCategory": sub,
            "n_dominant": found["n_usual"].astype(int),
            "n_class": found["n_node"].astype(int),
            "dominant_share": found["share"].astype(float),
            "reason": found["reason"],
        },
        index=found.index,
    )


# --------------------------------------------------------------------------------------------------- queue
def build_queue(products: pd.DataFrame, judged: np.ndarray, issues: pd.DataFrame, breaks: pd.DataFrame) -> pd.DataFrame:
    """Merge label issues and hierarchy breaks into one queue, most suspicious first.

    ``score`` is the suspicion: 1 - self-confidence for a label issue, the dominant share of the articleType for a
    hierarchy break (a break of an articleType that is 99.9% under one pair is more suspicious than one that is
    91%), and 1 - (1 - a)(1 - b) when a product has both (two independent signals)."""
    n = len(products)
    judged_pos = np.flatnonzero(judged)
    model: dict[str, np.ndarray] = {}
    for col, fill in (
        ("is_issue", False),
        ("quality", np.nan),
        ("p_given", np.nan),
        ("suggested", None),
        ("p_suggested", np.nan),
        ("top", None),
        ("p_top", np.nan),
    ):
        values = np.full(n, fill, dtype=issues[col].dtype if fill is not None else object)
        values[judged_pos] = issues[col].to_numpy()
        model[col] = values
    flagged = sorted(set(np.flatnonzero(model["is_issue"])) | set(breaks.index))
    rows = []
    for pos in flagged:
        p = products.loc[pos]
        m = {k: v[pos] for k, v in model.items()}
        given = p[TARGET]
        is_label = bool(m["is_issue"])
        is_judged = bool(judged[pos])
        brk = breaks.loc[pos] if pos in breaks.index else None
        label_score = 1.0 - float(m["quality"]) if is_label else 0.0
        hier_score = float(brk["dominant_share"]) if brk is not None else 0.0
        score = 1.0 - (1.0 - label_score) * (1.0 - hier_score)
        reasons = []
        if is_label:
            suggested, conf = m["suggested"], float(m["p_suggested"])
            reasons.append(
                f"model is {pct(conf)} sure this is {suggested}, labelled {given} "
                f"({pct(float(m['p_given']))} for {given})"
            )
        elif is_judged and m["top"] != given:
            suggested, conf = m["top"], float(m["p_top"])
        else:
            suggested, conf = given, float(m["p_given"]) if is_judged else float("nan")
        if brk is not None:
            text = brk["reason"]
            if not is_judged:
                text += f" ({given} is too rare for the model to judge)"
            elif not is_label and m["top"] == given:
                text += f"; the model agrees with {given} ({pct(conf)}), so the category is the likelier error"
            elif not is_label:
                text += f"; the model leans to {suggested} ({pct(conf)})"
            else:
                where = " > ".join(p for p in (brk["expected_masterCategory"], brk["expected_subCategory"]) if p)
                text += f"; if {given} is right after all, the product belongs under {where}"
            reasons.append(text)
        rows.append(
            {
                ID: p[ID],
                "current_label": given,
                "suggested_label": suggested,
                "confidence": round(conf, 6) if conf == conf else np.nan,
                "reason": "; ".join(reasons),
                "issue": "+".join(k for k, on in (("label", is_label), ("hierarchy", brk is not None)) if on),
                "score": round(score, 6),
                "label_probability": round(float(m["p_given"]), 4) if is_judged else np.nan,
                # The fashion hierarchy's columns; a catalog in another schema has none (empty here).
                "masterCategory": p.get("masterCategory"),
                "subCategory": p.get("subCategory"),
                "expected_masterCategory": (
                    brk["expected_masterCategory"] if brk is not None else p.get("masterCategory")
                ),
                "expected_subCategory": brk["expected_subCategory"] if brk is not None else p.get("subCategory"),
                TITLE: p[TITLE],
                "_self_confidence": float(m["quality"]) if is_judged else 1.0,
            }
        )
    queue = pd.DataFrame(rows, columns=[c for c in QUEUE_COLUMNS if c != "rank"] + ["_self_confidence"])
    queue = queue.sort_values(["score", "_self_confidence", ID], ascending=[False, True, True], kind="stable")
    queue = queue.drop(columns="_self_confidence").reset_index(drop=True)
    queue.insert(0, "rank", np.arange(1, len(queue) + 1))
    return queue


def user_queue(queue: pd.DataFrame, schema: CatalogSchema, taxonomy: Taxonomy) -> pd.DataFrame:
    """The queue as ``audit.csv`` writes it, in the catalog's own terms: the fashion layout keeps its columns; a
    catalog in another schema gets its id column's name, ``text`` for the text the models read, and for a tree label
    ``expected_parent`` (the usual parent path, in the catalog's spelling) instead of the fashion hierarchy's
    columns, which it does not have."""
    if schema.is_fashion:
        return queue
    fashion = ["masterCategory", "subCategory", "expected_masterCategory", "expected_subCategory"]
    out = queue.drop(columns=fashion)
    if taxonomy.is_tree:
        out.insert(out.columns.get_loc(TITLE), "expected_parent", queue["expected_masterCategory"].fillna(""))
    return out.rename(columns={ID: schema.id or ID, TITLE: "text"})


# --------------------------------------------------------------------------------------------------- html
THUMB = (120, 160)
SCRIPT = """
function reorder(){const key=document.getElementById('sort').value,kind=document.getElementById('kind').value;
const box=document.getElementById('queue');const items=[...box.children];
items.sort((a,b)=>{if(key==='rank')return a.dataset.rank-b.dataset.rank;
if(key==='confidence')return (b.dataset.confidence||0)-(a.dataset.confidence||0)||a.dataset.rank-b.dataset.rank;
return a.dataset[key].localeCompare(b.dataset[key])||a.dataset.rank-b.dataset.rank;});
for(const it of items){it.style.display=(kind==='all'||it.dataset.issue.split('+').includes(kind))?'':'none';
box.appendChild(it);}}
"""


def _review_card(row: dict[str, Any], src: str) -> str:
    """One queued product: its photo, current and suggested label, confidence, category and the reason."""
    esc = {k: escape(None if isinstance(v, float) and v != v else v) for k, v in row.items()}
    badges = "".join(f'<span class="pill {k}">{k}</span>' for k in str(row["issue"]).split("+"))
    conf = row["confidence"]
    same = row["suggested_label"] == row["current_label"]
    where = f"{esc['masterCategory']} &gt; {esc['subCategory']}"
    if (row["expected_masterCategory"], row["expected_subCategory"]) != (row["masterCategory"], row["subCategory"]):
        where += f' → <span class="sug">{esc["expected_masterCategory"]} &gt; {esc["expected_subCategory"]}</span>'
    return (
        f'<div class="item" data-rank="{row["rank"]}" data-confidence="{"" if conf != conf else conf}" '
        f'data-current="{esc["current_label"]}" data-suggested="{esc["suggested_label"]}" '
        f'data-issue="{esc["issue"]}"><img alt="product {esc[ID]}" src="{src}">'
        f'<div><div class="rank">#{row["rank"]} · id {esc[ID]} · score {row["score"]:.3f}</div>'
        f'<div class="t">{esc[TITLE] or "(no title)"}</div>{badges}<table>'
        f'<tr><td>current</td><td class="cur">{esc["current_label"]}</td></tr>'
        f'<tr><td>suggested</td><td class="{"" if same else "sug"}">'
        f"{'keep ' if same else ''}{esc['suggested_label']}</td></tr>"
        f"<tr><td>confidence</td><td>{pct(float(conf))}</td></tr>"
        + (f"<tr><td>category</td><td>{where}</td></tr>" if esc["masterCategory"] else "") + "</table>"
        f'<div class="why">{esc["reason"]}</div></div></div>'
    )


def _how_to_read(summary: dict[str, Any]) -> str:
    rare = ", ".join(summary.get("not_judged_classes", []))
    return f"""<p class="note">Each product was judged by a
{escape("+".join(summary.get("modalities", [])))} model trained on the other
{int(summary.get("folds", 2)) - 1} folds (duplicates of a product were never in its training data).
Confident learning (cleanlab) flags a label when the model confidently prefers another one;
<b>confidence</b> is the model's probability for the suggested label. Hierarchy breaks are products filed under
another parent than the one their category almost always has (the EDA counts the same breaks).
Cards are ordered by suspicion (score). Classes too rare to judge: {escape(rare) or "none"}.</p>
<div class="controls">order by <select id="sort" onchange="reorder()"><option value="rank">ranking</option>
<option value="confidence">confidence</option><option value="current">current label</option>
<option value="suggested">suggested label</option></select>show <select id="kind" onchange="reorder()">
<option value="all">all issues</option><option value="label">label issues</option>
<option value="hierarchy">hierarchy breaks</option></select></div>"""


def write_html(
    queue: pd.DataFrame,
    products: pd.DataFrame,
    path: Path,
    summary: dict[str, Any],
    top_n: int = DEFAULT_TOP_N,
    *,
    progress: bool = False,
) -> Path:
    """Self-contained review page: one card per queued product (top ``top_n``), in ranking order."""
    status = products["image_status"] if "image_status" in products else pd.Series("ok", index=products.index)
    image_of = dict(zip(products[ID], zip(products["image_path"], status, strict=True), strict=True))
    shown = queue.head(top_n)
    cards = []
    for r in tqdm(
        shown.itertuples(index=False), total=len(shown), desc="review page", leave=False, disable=not progress
    ):
        row = r._asdict()
        image_path, image_status = image_of.get(row[ID], (None, "missing"))
        cards.append(_review_card(row, thumbnail_uri(image_path, str(image_status), THUMB)))
    counts = summary.get("queue", {})
    sub = Markup(
        f"{summary.get('queue_size', len(queue)):,} products to review ({counts.get('label', 0):,} probable label "
        f"errors, {counts.get('hierarchy', 0):,} hierarchy breaks, {counts.get('label+hierarchy', 0):,} both); this "
        f"page shows the top {len(shown):,}, audit.csv holds them all."
    )
    body = (f"<section><h2>How to read this</h2>{_how_to_read(summary)}"
            f'<div class="queue" id="queue">{"".join(cards)}</div></section>')
    text = page("DeepFusion catalog audit", "DeepFusion — catalog audit", body,
                subtitle=[str(summary.get("catalog", "")), sub], script=SCRIPT)
    path.write_text(text, encoding="utf-8")
    log.info("wrote %s", path)
    return path


# --------------------------------------------------------------------------------------------------- entry point
def _judged_issues(
    products: pd.DataFrame, plan: FoldPlan, proba: np.ndarray, classes: list[str], min_class_groups: int
) -> pd.DataFrame:
    """cleanlab's verdict on the judged products (an empty table when no class was frequent enough to judge)."""
    judged = plan.judged
    if judged.any():
        return label_issues(products[TARGET].to_numpy()[judged], proba[judged], classes)
    log.warning("no class has %d or more distinct products: only the hierarchy check ran", min_class_groups)
    return pd.DataFrame(
        {
            "is_issue": np.zeros(0, bool),
            **{c: np.zeros(0) for c in ("quality", "p_given", "p_suggested", "p_top")},
            **{c: np.zeros(0, object) for c in ("suggested", "top")},
        }
    )


def _queue_summary(
    queue: pd.DataFrame,
    products: pd.DataFrame,
    plan: FoldPlan,
    proba: np.ndarray,
    classes: list[str],
    fold_stats: list[dict[str, Any]],
    min_class_groups: int,
) -> dict[str, Any]:
    """audit.json's figures on what was judged and what the queue holds."""
    judged = plan.judged
    labels = products[TARGET].to_numpy()[judged]
    oof_pred = np.asarray(classes, dtype=object)[proba[judged].argmax(axis=1)]
    kinds = queue["issue"].value_counts()
    pairs = (
        queue[queue["issue"].str.contains("label")]
        .groupby(["current_label", "suggested_label"])
        .size()
        .sort_values(ascending=False)
        .head(20)
    )
    return {
        "judged_products": int(judged.sum()),
        "not_judged_products": int((~judged).sum()),
        "min_class_groups": min_class_groups,
        "not_judged_classes": plan.rare_classes,
        "duplicate_groups": int(len(np.unique(plan.groups))),
        "out_of_fold_accuracy": float((oof_pred == labels).mean()) if judged.any() else None,
        "fold_stats": fold_stats,
        "queue_size": len(queue),
        "queue": {k: int(kinds.get(k, 0)) for k in ("label", "hierarchy", "label+hierarchy")},
        "label_issue_share_of_judged": float(queue["issue"].str.contains("label").sum() / max(1, judged.sum())),
        "top_label_confusions": [{"current": c, "suggested": s, "count": int(n)} for (c, s), n in pairs.items()],
    }


def audit_catalog(
    data: str | Path,
    out: str | Path,
    *,
    modalities: str | Sequence[str] = ("metadata", "title", "image"),
    folds: int = 5,
    seed: int = 42,
    preset: str = "regularized",
    progress: bool = True,
    top_n: int = DEFAULT_TOP_N,
    min_class_groups: int = MIN_CLASS_GROUPS,
    hierarchy_max_share: float = HIERARCHY_MAX_SHARE,
    engine: str = "local",
    address: str | None = None,
    catalog_options: Mapping[str, Any] | None = None,
    **predictor_options: Any,
) -> pd.DataFrame:
    """Audit the catalog in ``data`` (read with ``catalog_options``: load_catalog's schema, label, text, ...);
    write ``audit.csv``, ``audit.html``, ``rejects.csv`` and ``audit.json`` to
    ``out`` and return the review queue (most suspicious first).

    ``engine``: "local" trains the fold models one after the other in this process; "ray" trains them as
    parallel Ray tasks (``distributed.run_folds_ray``; ``pip install 'deepfusion[ray]'``), on the cluster at
    ``address`` (``HOST:6379``, ``ray://HOST:10001`` or ``auto``; default ``RAY_ADDRESS``, else a Ray started on
    this machine). Both give the same folds, seeds and queue. ``predictor_options``: the fold models' settings,
    Predictor parameters and network settings alike (e.g. ``image_size``, ``cache_dir``, ``epochs``), made into
    one ModelConfig (``config.config_from_options``) and written to audit.json."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if address is not None and engine != "ray":
        raise ValueError("address is only used with engine='ray'")
    cleanlab = _require_cleanlab()
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mods = parse_modalities(modalities)
    catalog = load_catalog(
        data, require_target=True, required_modalities=mods, progress=progress, **dict(catalog_options or {})
    )
    catalog.write_rejects(out / "rejects.csv")
    catalog.write_links(out / "links.csv")
    mods = tuple(m for m in mods if m != "metadata" or catalog.schema.metadata)
    # Sorting by id makes the folds depend on the products, not on the order of the rows in the file.
    products = catalog.products.sort_values(ID, kind="stable").reset_index(drop=True)
    schema = catalog.schema
    taxonomy = Taxonomy.fit(list(products[TARGET]), columns=schema.levels, label_sep=schema.label_sep, min_count=1)
    breaks = hierarchy_breaks(products, hierarchy_max_share, taxonomy)  # on the labels as the catalog spells them
    fold_schema = schema
    if taxonomy.is_tree:
        # Whole paths in the catalog's spelling: the fold models judge the path, the queue shows it readably.
        products[TARGET] = taxonomy.canonical(products[TARGET])
        fold_schema = replace(schema, levels=(), label_sep="none")
    if "title" in mods and products[TITLE].map(clean_title).astype(bool).all():
        # The held-out products all have a title: the network for untitled products would never answer.
        predictor_options.setdefault("title_fallback", False)
    config, runtime = config_from_options(mods, preset=preset, seed=seed, **predictor_options)
    plan = plan_folds(products, folds, seed, min_class_groups)
    classes = sorted(products[TARGET].astype(str).unique())
    fold_args: dict[str, Any] = {
        "config": config,
        "schema": fold_schema,
        "cache_dir": runtime.get("cache_dir"),
        "progress": progress,
    }
    if engine == "ray":
        from .distributed import run_folds_ray  # Ray is an optional extra: imported only when asked for

        proba, fold_stats = run_folds_ray(products, plan, classes, address=address, **fold_args)
    else:
        proba, fold_stats = out_of_fold_probabilities(products, plan, classes, **fold_args)
    issues = _judged_issues(products, plan, proba, classes, min_class_groups)
    queue = build_queue(products, plan.judged, issues, breaks)
    user_queue(queue, schema, taxonomy).to_csv(out / "audit.csv", index=False)
    summary: dict[str, Any] = {
        "data": str(data),
        "catalog": catalog.summary(),
        "products": len(products),
        "modalities": list(mods),
        "preset": preset,
        "folds": folds,
        "seed": seed,
        "engine": engine,
        "config": config.to_json(),
        "cleanlab_version": cleanlab.__version__,
        "method": "out-of-fold probabilities (StratifiedGroupKFold over duplicate groups) + cleanlab "
        "find_label_issues(filter_by='prune_by_noise_rate'), ranked by self-confidence; hierarchy breaks "
        f"(hierarchy.py): a category whose usual parent holds at least {1 - hierarchy_max_share:.0%} of its products, "
        "filed under another",
        **_queue_summary(queue, products, plan, proba, classes, fold_stats, min_class_groups),
        "seconds": None,
    }
    write_html(queue, products, out / "audit.html", summary, top_n, progress=progress)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / "audit.json", summary)
    log.info(
        "audit: %d products to review (%s) in %.0fs; wrote %s",
        len(queue),
        ", ".join(f"{k}: {v}" for k, v in summary["queue"].items()),
        summary["seconds"],
        out,
    )
    return queue
