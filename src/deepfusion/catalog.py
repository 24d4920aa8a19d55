"""Load and validate a product catalog: a styles table plus a folder of images.

The layout is Kaggle's *Fashion Product Images (small)*: ``styles.csv`` (or ``styles.parquet``) and
``images/<id>.jpg``. Real exports are messy, so loading never trusts a row: every row that cannot be used gets
a reason in ``Catalog.rejects`` and nothing is dropped silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

ID = "id"
TARGET = "articleType"
TITLE = "productDisplayName"
CATEGORICAL = ["gender", "masterCategory", "subCategory", "baseColour", "season", "usage"]
NUMERIC = ["year"]
METADATA = CATEGORICAL + NUMERIC
COLUMNS = [ID, "gender", "masterCategory", "subCategory", TARGET, "baseColour", "season", "year", "usage", TITLE]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
KAGGLE_PREFIX = "kaggle:"


class CatalogError(Exception):
    """A catalog that cannot be used at all; the message says which file and what to do."""


@dataclass
class Catalog:
    """Validated products plus the rows that could not be used.

    ``products`` has one row per usable product with the catalog columns and ``image_path`` (None when the
    product has no readable image), ``image_sha1`` and ``image_status`` ("ok", "missing", "corrupt" or
    "unchecked"). ``rejects`` has ``id``, ``reason`` and ``action`` ("dropped", or "kept" when the product is
    still used without the faulty value).
    """

    products: pd.DataFrame
    rejects: pd.DataFrame
    source: Path
    recovered_rows: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> pd.DataFrame:
        return self.rejects[self.rejects["action"] == "dropped"]

    def summary(self) -> str:
        n_kept_issues = int((self.rejects["action"] == "kept").sum())
        return (
            f"{len(self.products):,} products loaded from {self.source.name}; "
            f"{len(self.dropped):,} rows rejected; {n_kept_issues:,} kept with a problem noted; "
            f"{self.recovered_rows} rows with unquoted commas in the title recovered"
        )

    def write_rejects(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rejects.to_csv(path, index=False)
        return path


def resolve_data_dir(data: str | Path) -> Path:
    """Turn ``--data`` into a local folder; ``kaggle:owner/name`` is fetched through kagglehub."""
    text = str(data)
    if text.startswith(KAGGLE_PREFIX):
        handle = text[len(KAGGLE_PREFIX) :]
        try:
            import kagglehub

            path = Path(kagglehub.dataset_download(handle))
        except Exception as exc:  # kagglehub raises many types when offline or unauthenticated
            raise CatalogError(
                f"Could not download Kaggle data set '{handle}' ({type(exc).__name__}: {exc}). "
                "Without internet access, download it elsewhere and pass the local folder holding "
                "styles.csv and images/ with --data PATH."
            ) from exc
        # Kaggle's archive nests the catalog one level down in some versions.
        for candidate in [path, *sorted(p for p in path.rglob("*") if p.is_dir())]:
            if _find_table(candidate) is not None:
                return candidate
        raise CatalogError(f"Downloaded {handle} to {path}, but found no styles.csv or styles.parquet inside.")
    path = Path(text).expanduser()
    if not path.exists():
        raise CatalogError(f"Data folder {path} does not exist. Pass a folder holding styles.csv and images/.")
    return path


def _find_table(folder: Path) -> Path | None:
    if folder.is_file():
        return folder
    for name in ("styles.csv", "styles.parquet"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_styles_table(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Read a styles table as strings. Returns (table, rejected rows, number of recovered rows).

    In CSV files a title with unquoted commas spills into extra fields. When the title is the last column the
    extra fields are joined back into it, so the row is kept whole.
    """
    if path.suffix.lower() == ".parquet":
        try:
            table = pd.read_parquet(path)
        except Exception as exc:
            raise CatalogError(f"Cannot read {path}: {exc}. Is it a valid Parquet file?") from exc
        table = table.astype(object).where(table.notna(), "").astype(str)
        table.columns = [str(c).strip() for c in table.columns]
        return table, _empty_rejects(), 0
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"Cannot read {path}: {exc}.") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
        log.warning("%s is not UTF-8; read it as Latin-1", path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise CatalogError(f"{path} is empty. It needs a header row with at least: {ID}, {TARGET}.") from None
    n = len(header)
    title_last = bool(header) and header[-1] == TITLE
    rows: list[list[str]] = []
    rejects: list[dict[str, str]] = []
    recovered = 0
    for line_no, fields in enumerate(reader, start=2):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) > n and title_last:
            fields = fields[: n - 1] + [",".join(fields[n - 1 :])]
            recovered += 1
        if len(fields) != n:
            row_id = fields[header.index(ID)].strip() if ID in header and len(fields) > header.index(ID) else ""
            rejects.append(
                {
                    ID: row_id or f"line {line_no}",
                    "reason": f"line {line_no} has {len(fields)} fields, the header has {n}",
                    "action": "dropped",
                }
            )
            continue
        rows.append(fields)
    return (
        pd.DataFrame(rows, columns=header, dtype=str),
        pd.DataFrame(rejects, columns=[ID, "reason", "action"]),
        recovered,
    )


def _empty_rejects() -> pd.DataFrame:
    return pd.DataFrame(columns=[ID, "reason", "action"])


@dataclass(frozen=True)
class ImageCheck:
    status: str  # ok | missing | corrupt
    sha1: str | None
    detail: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""


def check_image(path: Path | None) -> ImageCheck:
    """Hash and fully decode one image file, so truncated or corrupt files are caught here, not in training."""
    if path is None or not path.is_file():
        return ImageCheck("missing", None, "image file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        return ImageCheck("corrupt", None, f"cannot read image file: {exc}")
    sha1 = hashlib.sha1(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return ImageCheck("ok", sha1, "", im.width, im.height, im.mode)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        return ImageCheck("corrupt", sha1, f"image cannot be decoded ({type(exc).__name__}: {exc})")


def check_images(paths: Iterable[Path | None], workers: int = 4, progress: bool = True) -> list[ImageCheck]:
    paths = list(paths)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check_image, paths, chunksize=64)
        return list(tqdm(results, total=len(paths), desc="checking images", disable=not progress, leave=False))


def find_image(images_dir: Path, product_id: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        candidate = images_dir / f"{product_id}{ext}"
        if candidate.is_file():
            return candidate
    return None


def load_catalog(
    data: str | Path,
    *,
    require_target: bool = True,
    require_images: bool = False,
    required_columns: Iterable[str] = (),
    check_image_files: bool = True,
    progress: bool = True,
) -> Catalog:
    """Load ``styles.csv``/``styles.parquet`` and ``images/`` from ``data`` and validate every row.

    Rows are dropped (with a reason) for: a malformed line, an empty or duplicate id, an empty target when
    ``require_target``, and a missing or unreadable image when ``require_images``. Problems that do not stop a
    product from being used (a non-numeric year, a broken image for a model that does not look at images) are
    recorded with action "kept".
    """
    folder = resolve_data_dir(data)
    table_path = _find_table(folder)
    if table_path is None:
        raise CatalogError(
            f"No styles.csv or styles.parquet in {folder}. The folder must hold the product table "
            "(styles.csv or styles.parquet) and an images/ folder with <id>.jpg files."
        )
    images_dir = (table_path.parent if folder.is_file() else folder) / "images"
    table, rejects, recovered = read_styles_table(table_path)

    required = [ID, *([TARGET] if require_target else []), *required_columns]
    missing = [c for c in dict.fromkeys(required) if c not in table.columns]
    if missing:
        raise CatalogError(
            f"{table_path} lacks required column(s) {', '.join(missing)}. Found: {', '.join(table.columns)}. "
            "Add the column (values may be empty) or rename the matching column."
        )
    for col in COLUMNS:
        if col not in table.columns:
            table[col] = ""
    for col in table.columns:
        table[col] = table[col].fillna("").astype(str).str.strip()
    reasons: list[dict[str, str]] = []

    def drop(mask: pd.Series, reason: str | pd.Series) -> None:
        nonlocal table
        if not mask.any():
            return
        bad = table.loc[mask]
        reason_values = reason.loc[mask] if isinstance(reason, pd.Series) else [reason] * len(bad)
        for pid, why in zip(bad[ID], reason_values, strict=True):
            reasons.append({ID: pid or "(empty id)", "reason": why, "action": "dropped"})
        table = table.loc[~mask]

    drop(table[ID] == "", "empty id")
    dup = table[ID].duplicated(keep="first")
    drop(dup, "duplicate id (an earlier row has the same id; the first one is kept)")
    if require_target:
        drop(table[TARGET] == "", f"empty target ({TARGET})")

    year = pd.to_numeric(table["year"].where(table["year"] != ""), errors="coerce")
    bad_year = (table["year"] != "") & year.isna()
    for pid, raw in zip(table.loc[bad_year, ID], table.loc[bad_year, "year"], strict=True):
        reasons.append({ID: pid, "reason": f"non-numeric year '{raw}' (treated as missing)", "action": "kept"})

    products = table.reset_index(drop=True).copy()
    products["year"] = year.reset_index(drop=True).astype("float64")
    for col in CATEGORICAL + [TARGET, TITLE]:
        products[col] = products[col].replace("", np.nan)

    paths = [find_image(images_dir, pid) for pid in products[ID]] if images_dir.is_dir() else [None] * len(products)
    if not images_dir.is_dir():
        log.warning("No images/ folder next to %s; every product has no image", table_path)
    if check_image_files:
        checks = check_images(paths, progress=progress)
    else:
        checks = [ImageCheck("unchecked" if p else "missing", None, "" if p else "image file not found") for p in paths]
    products["image_path"] = [
        str(p) if c.status in ("ok", "unchecked") else None for p, c in zip(paths, checks, strict=True)
    ]
    products["image_sha1"] = [c.sha1 for c in checks]
    products["image_status"] = [c.status for c in checks]
    products["image_width"] = [c.width for c in checks]
    products["image_height"] = [c.height for c in checks]
    products["image_mode"] = [c.mode for c in checks]
    bad_image = products["image_status"].isin(["missing", "corrupt"])
    action = "dropped" if require_images else "kept"
    for pid, check in zip(
        products.loc[bad_image, ID], [c for c in checks if c.status in ("missing", "corrupt")], strict=True
    ):
        reasons.append({ID: pid, "reason": f"{check.status} image: {check.detail}", "action": action})
    if require_images:
        products = products.loc[~bad_image].reset_index(drop=True)

    all_rejects = pd.concat([rejects, pd.DataFrame(reasons, columns=[ID, "reason", "action"])], ignore_index=True)
    catalog = Catalog(products=products, rejects=all_rejects, source=table_path, recovered_rows=recovered)
    if recovered:
        catalog.notes.append(f"{recovered} rows had unquoted commas in {TITLE}; the title was rejoined")
    log.info("%s", catalog.summary())
    return catalog


def catalog_from_frame(
    frame: pd.DataFrame, *, require_target: bool = False, image_column: str | None = None
) -> pd.DataFrame:
    """Normalise a user's DataFrame (Python API) to the columns the models read, without touching disk."""
    products = frame.copy()
    if ID not in products.columns:
        products[ID] = [str(i) for i in range(len(products))]
    if require_target and TARGET not in products.columns:
        raise CatalogError(f"The DataFrame has no '{TARGET}' column to learn from or evaluate against.")
    for col in COLUMNS:
        if col not in products.columns:
            products[col] = np.nan
    missing_id = products[ID].isna() | (products[ID].astype(str).str.strip() == "")
    products[ID] = products[ID].astype(str).str.strip()
    products.loc[missing_id, ID] = [str(i) for i in np.flatnonzero(missing_id.to_numpy())]
    products["year"] = pd.to_numeric(products["year"], errors="coerce").astype("float64")
    for col in CATEGORICAL + [TARGET, TITLE]:
        values = products[col].astype(object)
        values = values.where(values.notna(), None)
        products[col] = [None if v is None or str(v).strip() == "" else str(v).strip() for v in values]
    if image_column and image_column in products.columns:
        products["image_path"] = products[image_column]
    elif "image_path" not in products.columns:
        products["image_path"] = None
    products["image_path"] = [p if isinstance(p, str | Path) and str(p) else None for p in products["image_path"]]
    return products
