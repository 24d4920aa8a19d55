"""Load and validate a product catalog: a styles table plus a folder of images.

The layout is Kaggle's *Fashion Product Images (small)*: ``styles.csv`` (or ``styles.parquet``) and
``images/<id>.jpg``. Real exports are messy and some are hostile, so loading never trusts a row: every row that
cannot be used gets a reason in ``Catalog.rejects`` and nothing is dropped silently, so the rows read always
equal the products plus the dropped rows. A broken row damages only itself (a stray quote cannot swallow the
rows after it), image references never leave ``images/``, and images are decoded within a pixel budget.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from .schema import (
    FASHION,
    ID_COLUMN,
    LABEL_COLUMN,
    TEXT_COLUMN,
    CatalogSchema,
    SchemaError,
    combine_text,
    looks_like_fashion,
    parse_number,
    resolve_schema,
)
from .taxonomy import JOIN, join_levels

if TYPE_CHECKING:
    from .image_links import LinkFetcher, LinkOptions

log = logging.getLogger(__name__)

# The products frame's role columns (schema.py): the product id, the label and the product's text.
ID = ID_COLUMN
TARGET = LABEL_COLUMN
TITLE = TEXT_COLUMN
# The fashion catalog's attributes (schema.FASHION), the default schema's.
CATEGORICAL = list(FASHION.categorical)
NUMERIC = list(FASHION.numeric)
SEPARATORS = (",", ";", "\t", "|")
METADATA = CATEGORICAL + NUMERIC
COLUMNS = [ID, "gender", "masterCategory", "subCategory", TARGET, "baseColour", "season", "year", "usage", TITLE]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
KAGGLE_PREFIX = "kaggle:"

# No real title or category comes near this; a longer field is junk (or an attack) and rejects its row.
MAX_FIELD_CHARS = 100_000
# A quoted field may hold line breaks, but a quote still open after this many lines is taken for a stray one.
MAX_RECORD_LINES = 10
# Pixels one decoded image may have. JPEGs are decoded at a reduced scale first, so the budget binds only on
# formats that must be decoded at full size (PNG, WebP...): it admits any plausible product photo, and refuses
# pixel bombs (a tiny file claiming a huge canvas) before they take memory and time.
MAX_IMAGE_PIXELS = 40_000_000
# An image file is read whole to hash it; product photos are far smaller than this.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
# Size a JPEG is decoded towards when checked: a full decode at that scale proves the file readable, cheaply.
CHECK_DECODE_SIZE = (1024, 1024)
# Formats an image file may hold whatever its extension: common photo formats only, so a crafted file cannot
# reach the less-tested decoders (or EPS, which Pillow hands to Ghostscript).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")  # JPEG covers MPO, the multi-picture JPEG of cameras
REJECT_COLUMNS = [ID, "reason", "action", "line", "raw"]
RAW_PREVIEW_CHARS = 300
OUTSIDE_FOLDER = "image outside the catalog folder"
DUPLICATE_ID = "duplicate id (an earlier row has the same id; the first one is kept)"
# The checks of a load in the order they run (the rejects report lists their rows in this order).
STAGE_READ, STAGE_UNCLOSED, STAGE_EMPTY_ID, STAGE_DUPLICATE, STAGE_EMPTY_TARGET, STAGE_NUMBER, STAGE_IMAGE = range(7)
UNCLOSED_QUOTE = "unclosed quote (the line was read with its quotes as plain characters)"


class CatalogError(Exception):
    """A catalog that cannot be used at all; the message says which file and what to do.

    ``rejects`` holds the rows rejected before the catalog was found unusable, with the columns of
    ``Catalog.rejects`` (None when the error came before any row was read); ``write_rejects`` saves them, so
    a caller can still hand the user the report of what was wrong with each row.
    """

    def __init__(self, message: str, rejects: pd.DataFrame | None = None) -> None:
        super().__init__(message)
        self.rejects = rejects

    def write_rejects(self, path: str | Path) -> Path | None:
        """Write ``rejects`` as CSV, like ``Catalog.write_rejects``; returns the path, or None without rejects."""
        return None if self.rejects is None else _write_csv(self.rejects, Path(path))


class ImageTooLarge(ValueError):
    """An image that would decode to more pixels than allowed; ``size`` is the decoded (width, height) when
    known, ``max_pixels`` the budget it exceeds."""

    def __init__(self, message: str, size: tuple[int, int] | None = None, max_pixels: int | None = None) -> None:
        super().__init__(message)
        self.size = size
        self.max_pixels = max_pixels


@dataclass
class Catalog:
    """Validated products plus the rows that could not be used.

    ``products`` has one row per usable product with the catalog columns and ``image_path`` (None when the
    product has no readable image), ``image_sha1`` and ``image_status`` ("ok", "missing", "corrupt" or
    "unchecked"; an image over the pixel budget is "corrupt", one outside ``images/`` is "missing").
    ``rejects`` has ``id``, ``reason``, ``action`` ("dropped", or "kept" when the product is still used
    without the faulty value), ``line`` (first line of the row in styles.csv; row number in a Parquet table)
    and ``raw`` (the row's text, shortened when long). ``rows_in`` rows were read: always
    ``len(products) + len(dropped)``; ``continuation_lines`` counts the non-blank lines that belong to a row
    begun on an earlier line (a quoted field with line breaks), so rows_in plus it is the number of
    non-blank data lines of the file.
    """

    products: pd.DataFrame
    rejects: pd.DataFrame
    source: Path
    recovered_rows: int = 0
    notes: list[str] = field(default_factory=list)
    rows_in: int = 0
    continuation_lines: int = 0
    recovered_ids: list[str] = field(default_factory=list)
    schema: CatalogSchema = FASHION
    separator: str | None = None  # the field separator of a delimited table
    links: pd.DataFrame | None = None  # the links tried (image_links.LINK_COLUMNS); None: no image value is a link
    # The table as read, every column as strings before cleaning (the EDA checks formatting on it), kept when
    # load_catalog(keep_table=True). ``images_dir``: where the products' images were looked up.
    table: pd.DataFrame | None = field(default=None, repr=False)
    images_dir: Path | None = None

    @property
    def dropped(self) -> pd.DataFrame:
        return self.rejects[self.rejects["action"] == "dropped"]

    def summary(self) -> str:
        return _summary(self.source, self.rows_in, len(self.products), self.rejects, self.recovered_rows)

    def write_rejects(self, path: Path) -> Path:
        return _write_csv(self.rejects, path)

    def write_links(self, path: Path) -> Path | None:
        """Write the link report (links.csv) when the catalog's images are links; returns the path, or None."""
        return None if self.links is None else _write_csv(self.links, Path(path))


def _summary(source: Path, rows_in: int, n_products: int, rejects: pd.DataFrame, recovered_rows: int) -> str:
    n_dropped = int((rejects["action"] == "dropped").sum())
    n_kept_issues = int((rejects["action"] == "kept").sum())
    return (
        f"{rows_in:,} rows read from {source.name} = {n_products:,} products loaded + "
        f"{n_dropped:,} rows rejected; {n_kept_issues:,} kept with a problem noted; "
        f"{recovered_rows} rows with unquoted commas in the title recovered"
    )


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
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


TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".txt", ".parquet", ".jsonl", ".ndjson", ".json")


def _find_table(folder: Path) -> Path | None:
    """The product table: ``folder`` itself when it is a file; in a folder ``styles.csv`` / ``styles.parquet``
    (the Kaggle layout), else the folder's only table file (CSV, TSV, Parquet or JSON Lines)."""
    if folder.is_file():
        return folder
    for name in ("styles.csv", "styles.parquet"):
        if (folder / name).is_file():
            return folder / name
    tables = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
    tables = [p for p in tables if p.name not in ("rejects.csv", "split.csv")]
    return tables[0] if len(tables) == 1 else None


def _table_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "json"
    return "csv"


def sniff_separator(header_line: str) -> str:
    """The field separator of a delimited file, from its header line: the candidate that splits it into the most
    fields (a comma when none does)."""
    counts = {sep: len(next(csv.reader([header_line], delimiter=sep), [])) for sep in SEPARATORS}
    best = max(counts, key=lambda sep: (counts[sep], sep == ","))
    return best if counts[best] > 1 else ","


def read_styles_table(
    path: Path, *, max_field_chars: int = MAX_FIELD_CHARS, sep: str | None = None, schema: CatalogSchema | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Read a styles table as strings. Returns (table, rejected rows, number of recovered rows).

    In CSV files a title with unquoted commas spills into extra fields. When the title is the last column and
    the row still makes sense with the extra fields joined back into it (see ``_shift_evidence``), the row is
    kept whole; otherwise it is rejected. A quote that opens a field and never closes damages only its own line.
    """
    styles = _read_styles(path, max_field_chars, sep=sep, schema=schema)
    return styles.table.reset_index(drop=True), _reject_frame(styles.rejects), len(styles.recovered_ids)


@dataclass
class _Record:
    """One row of a CSV file as read: its first physical line (from 1), its fields and its raw text."""

    line: int
    fields: list[str]
    raw: str
    literal: bool = False  # an unclosed quote: the line was split with its quotes as plain characters
    continuation: int = 0  # non-blank lines after the first that belong to the record (a quoted field's breaks)


@dataclass
class _Styles:
    """A styles table, indexed by line (CSV) or row number (Parquet), and what reading it found."""

    table: pd.DataFrame
    rows_in: int
    rejects: list[dict[str, object]] = field(default_factory=list)  # rows dropped while reading
    notes: list[dict[str, object]] = field(default_factory=list)  # rows kept with a problem
    recovered_ids: list[str] = field(default_factory=list)
    raws: dict[int, str] = field(default_factory=dict)
    continuation_lines: int = 0
    separator: str | None = None


def _read_styles(
    path: Path, max_field_chars: int, *, sep: str | None = None, schema: CatalogSchema | None = None
) -> _Styles:
    """Read a product table as strings. ``schema`` (when known before reading) says which column a title with
    unquoted separators may be rejoined into and which columns are categorical; without it, the fashion layout's
    rules apply to a table with its columns."""
    kind = _table_kind(path)
    if kind == "parquet":
        return _read_parquet(path, max_field_chars)
    text = _read_text(path)
    if kind == "json":
        return _read_json_lines(path, text, max_field_chars)
    _allow_fields_up_to(len(text))
    lines = _physical_lines(text)
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise CatalogError(f"{path} is empty. It needs a header row naming its columns.")
    if sep is None:
        sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else sniff_separator(lines[first])
    header = [h.strip() for h in next(csv.reader([lines[first]], delimiter=sep), [])]
    _check_unique_columns(path, header)
    if schema is None and looks_like_fashion(header):
        schema = FASHION
    records, continuation = _records(lines, first + 1, len(header), sep)
    styles = _table_from_records(records, header, max_field_chars, sep, schema)
    styles.continuation_lines = continuation
    styles.separator = sep
    return styles


def _read_json_lines(path: Path, text: str, max_field_chars: int) -> _Styles:
    """A JSON Lines table (one object per line; a JSON array of objects is read too). A line that is not a JSON
    object is rejected on its own."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise CatalogError(f"{path} is not valid JSON ({exc}). Write one JSON object per line.") from exc
        entries = [(i + 1, item, json.dumps(item)[:RAW_PREVIEW_CHARS]) for i, item in enumerate(items)]
    else:
        entries = [_json_entry(i, line) for i, line in enumerate(_physical_lines(text)) if line.strip()]
    return _json_styles(entries, max_field_chars)


def _json_entry(index: int, line: str) -> tuple[int, object, str]:
    """(line number, the line's JSON value or the error reading it, raw text) of the non-blank line ``index``."""
    try:
        return index + 1, json.loads(line), line
    except json.JSONDecodeError as exc:
        return index + 1, exc, line


def _json_styles(
    entries: Sequence[tuple[int, object, str]], max_field_chars: int, columns: Sequence[str] | None = None
) -> _Styles:
    """The table of JSON entries (``_json_entry``): a value that is not an object, or has a field over
    ``max_field_chars``, is a rejected row. ``columns``: the whole file's (``_json_columns``), for a chunk of it."""
    rows: list[dict[str, str]] = []
    index: list[int] = []
    styles = _Styles(table=pd.DataFrame(), rows_in=0)
    for line_no, item, raw in entries:
        styles.rows_in += 1
        if not isinstance(item, dict):
            why = f"line {line_no} is not a JSON object" + (f" ({item})" if isinstance(item, Exception) else "")
            styles.rejects.append(_reject(f"line {line_no}", why, "dropped", line_no, raw))
            continue
        values = {str(k).strip(): _json_value(v) for k, v in item.items()}
        long = [k for k, v in values.items() if len(v) > max_field_chars]
        if long:
            why = f"field '{long[0]}' too long (the limit is {max_field_chars:,} characters, max_field_chars)"
            styles.rejects.append(_reject(values.get(ID, "") or f"line {line_no}", why, "dropped", line_no, raw))
            continue
        rows.append(values)
        index.append(line_no)
        styles.raws[line_no] = raw
    styles.table = pd.DataFrame(rows, index=index, dtype=str).fillna("")
    if columns is not None:
        styles.table = styles.table.reindex(columns=list(columns), fill_value="")
    if styles.table.empty and not len(styles.table.columns):
        styles.table = pd.DataFrame(index=pd.Index([], dtype=int))
    return styles


def _json_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# A UTF-16 file starts with its byte-order mark (Excel's "Unicode Text" export); without one a file is UTF-8 or Latin-1.
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"Cannot read {path}: {exc}.") from exc
    if raw.startswith(_UTF16_BOMS):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        log.warning("%s is not UTF-8; read it as Latin-1", path)
        return raw.decode("latin-1")


def _allow_fields_up_to(n_chars: int) -> None:
    # csv refuses a field over field_size_limit() with an error that would abort the whole load. The text is
    # already in memory, so no field can cost more than the file: lift the limit to its size and let
    # max_field_chars reject long fields row by row. Only ever raised, so concurrent loads cannot undercut
    # each other; capped because csv keeps it in a C long (32-bit on Windows).
    limit = min(n_chars + 1, 2**31 - 1)
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)


def _physical_lines(text: str) -> list[str]:
    # The line breaks csv recognises; str.splitlines would also split at form feeds and other separators.
    return re.split(r"\r\n|\r|\n", text)


def _check_unique_columns(path: Path, header: Sequence[str]) -> None:
    repeated = sorted({name for name in header if list(header).count(name) > 1})
    if repeated:
        raise CatalogError(
            f"{path} has repeated column name(s) {', '.join(repr(name) for name in repeated)} in its header. "
            "Give every column its own name (remove empty trailing columns)."
        )


def _records(lines: Sequence[str], start: int, n_columns: int, sep: str = ",") -> tuple[list[_Record], int]:
    """Group the physical lines from index ``start`` into records. Returns them and the number of non-blank
    lines that continue a record begun on an earlier line."""
    records, _ = _group_records(lines, start, len(lines), n_columns, sep)
    return records, sum(r.continuation for r in records)


def _group_records(
    lines: Sequence[str], start: int, stop: int, n_columns: int, sep: str = ",", offset: int = 0
) -> tuple[list[_Record], int]:
    """The records that begin at the line indices ``start`` to ``stop`` (a record may run past ``stop``), and the
    index after the last of them. ``offset``: the file line index of ``lines[0]`` (a window of a streamed file)."""
    records: list[_Record] = []
    i = start
    while i < stop:
        if not lines[i].strip():
            i += 1
            continue
        if '"' not in lines[i]:  # most lines: csv would split them exactly so, only slower
            records.append(_Record(offset + i + 1, lines[i].split(sep), lines[i]))
            i += 1
            continue
        span = _record_span(lines, i, n_columns, sep)
        fields = _parse_lines(lines[i : i + span], sep) if span else None
        if span is None or fields is None or (span > 1 and len(fields) != n_columns):
            # The quote is stray: it may damage this line, not the ones after it.
            records.append(_Record(offset + i + 1, lines[i].split(sep), lines[i], literal=True))
            i += 1
            continue
        continuation = sum(1 for line in lines[i + 1 : i + span] if line.strip())
        records.append(_Record(offset + i + 1, fields, "\n".join(lines[i : i + span]), continuation=continuation))
        i += span
    return records, i


def _record_span(lines: Sequence[str], i: int, n_columns: int, sep: str = ",") -> int | None:
    """How many physical lines the record starting at index ``i`` takes: more than one only for a quoted field
    with line breaks; None when the opening quote is stray (it never closes before a line that reads as a row
    of its own, or within MAX_RECORD_LINES)."""
    in_quotes = _ends_in_quotes(lines[i], False, sep)
    span = 1
    while in_quotes:
        j = i + span
        if span >= MAX_RECORD_LINES or j >= len(lines):
            return None
        in_quotes = _ends_in_quotes(lines[j], True, sep)
        if _looks_like_row(lines[j], n_columns, sep) and not (
            not in_quotes and _completes_record(lines[i : j + 1], lines[j], n_columns, sep)
        ):
            return None
        span += 1
    return span


def _completes_record(lines: Sequence[str], last: str, n_columns: int, sep: str) -> bool:
    """Whether ``last``, a line with many separators that closes the quoted field opened above it, is the end of
    that field and the rest of its row (a line break inside a description in the middle of the row): the lines
    read as exactly one row of ``n_columns`` fields, and ``last`` alone has too few fields to be a row of its own
    (a stray quote never takes a separator away, so a whole row after one keeps all of its fields)."""
    if last.count(sep) + 1 >= n_columns:
        return False
    fields = _parse_lines(lines, sep)
    return fields is not None and len(fields) == n_columns


def _ends_in_quotes(line: str, in_quotes: bool, sep: str = ",") -> bool:
    """Whether a quoted field is open at the end of ``line``, by the rules of csv's default (non-strict)
    dialect: a quote opens a field only at its start, a doubled quote inside is a literal one, and after the
    closing quote the field goes on unquoted."""
    i = line.find('"')
    while i != -1:
        if in_quotes:
            if line.startswith('"', i + 1):
                i = line.find('"', i + 2)
                continue
            in_quotes = False
        elif i == 0 or line[i - 1] == sep:
            in_quotes = True
        i = line.find('"', i + 1)
    return in_quotes


def _looks_like_row(line: str, n_columns: int, sep: str = ",") -> bool:
    # The rest of a quoted field rarely has many commas; a line with over half the header's fields is taken
    # for the next row, so a stray quote cannot turn it into part of a title.
    return line.count(sep) + 1 > n_columns // 2


def _parse_lines(lines: Sequence[str], sep: str = ",") -> list[str] | None:
    """The fields of the one record that ``lines`` make up, or None when csv reads them otherwise."""
    reader = csv.reader([f"{line}\n" for line in lines], delimiter=sep)
    try:
        fields = next(reader, [])
    except csv.Error:
        return None
    return fields if reader.line_num == len(lines) else None


def _table_from_records(
    records: list[_Record],
    header: list[str],
    max_field_chars: int,
    sep: str,
    schema: CatalogSchema | None,
    vocab: Mapping[str, set[str]] | None = None,
) -> _Styles:
    """``records`` as a table. ``vocab``: the values of the cleanly parsed rows (``_vocabulary``), by default
    those of ``records``; a streamed file passes the whole file's, so a chunk judges shifted rows as the file does."""
    n_columns = len(header)
    if vocab is None:
        vocab = _vocabulary([r for r in records if _clean(r, n_columns)], header, schema)
    rejoin = schema is not None and header[-1] in schema.text
    numeric = tuple(schema.numeric) if schema is not None else ()
    label = schema.label if schema is not None else None
    id_column = schema.id if schema is not None and schema.id else ID
    styles = _Styles(table=pd.DataFrame(), rows_in=len(records), raws={r.line: r.raw for r in records})
    kept: list[_Record] = []
    for record in records:
        fields, why = _fit_fields(record, header, vocab, max_field_chars, sep if rejoin else None, numeric, label)
        pid = _field(record.fields, header, id_column) or f"line {record.line}"
        if fields is None:
            why += f"; {UNCLOSED_QUOTE}" if record.literal else ""
            styles.rejects.append(_reject(pid, why, "dropped", record.line, record.raw))
            continue
        if record.literal:
            styles.notes.append(_reject(pid, UNCLOSED_QUOTE, "kept", record.line, record.raw))
        if len(record.fields) > n_columns:
            styles.recovered_ids.append(pid)
        record.fields = fields
        kept.append(record)
    rows = [r.fields for r in kept]
    styles.table = pd.DataFrame(rows, columns=header, index=[r.line for r in kept], dtype=str)
    return styles


def _fit_fields(
    record: _Record,
    header: list[str],
    vocab: Mapping[str, set[str]],
    max_field_chars: int,
    rejoin_sep: str | None,
    numeric: Sequence[str],
    label: str | None,
) -> tuple[list[str] | None, str]:
    """The record's fields, one per column, or None and why not. With ``rejoin_sep`` (the last column is a text
    column), a title with unquoted separators is rejoined when the row still makes sense."""
    n_columns, fields = len(header), record.fields
    for i, value in enumerate(fields):
        if len(value) > max_field_chars:
            name = header[i] if i < n_columns else f"field {i + 1}"
            return None, (
                f"field '{name}' too long ({len(value):,} characters; the limit is {max_field_chars:,}, "
                f"max_field_chars), line {record.line}"
            )
    if len(fields) == n_columns:
        return fields, ""
    why = f"line {record.line} has {len(fields)} fields, the header has {n_columns}"
    if len(fields) < n_columns or rejoin_sep is None:
        return None, why
    joined = [*fields[: n_columns - 1], rejoin_sep.join(fields[n_columns - 1 :])]
    problems = _shift_evidence(dict(zip(header, joined, strict=True)), vocab, numeric, label)
    if problems:
        return None, f"{why} (not rejoined into the title: {'; '.join(problems)})"
    return joined, ""


def _clean(record: _Record, n_columns: int) -> bool:
    return len(record.fields) == n_columns and not record.literal


def _vocabulary(records: Sequence[_Record], header: list[str], schema: CatalogSchema | None) -> dict[str, set[str]]:
    """The values each categorical column (and the label) takes in the rows that parsed cleanly."""
    if schema is None:
        return {}
    columns = [c for c in (*schema.categorical, schema.label) if c and c in header]
    return {c: {r.fields[header.index(c)].strip() for r in records} - {""} for c in columns}


def _shift_evidence(
    values: Mapping[str, str], vocab: Mapping[str, set[str]], numeric: Sequence[str], label: str | None = TARGET
) -> list[str]:
    """Signs that a row's extra fields come from a comma before the title, not in it: rejoining them into the
    title would then leave values in the wrong columns (and a wrong label). Values are judged against those
    of the cleanly parsed rows: a target or a value typical of another column is evidence, and so are two
    values seen nowhere, while one new value alone is not (real catalogs have rare values)."""
    problems: list[str] = []
    for col in numeric:
        number = values.get(col, "").strip()
        if number and math.isnan(parse_number(number)):
            problems.append(f"{col} '{_preview(number, 40)}' is not a number")
    unseen: list[str] = []
    for col, known in vocab.items():
        value = values[col].strip()
        if not value or not known or value in known:
            continue
        elsewhere = [c for c, other in vocab.items() if c != col and value in other]
        if elsewhere:
            problems.append(f"{col} '{_preview(value, 40)}' is a {elsewhere[0]} value")
        elif col == label:
            problems.append(f"{col} '{_preview(value, 40)}' appears in no other row")
        else:
            unseen.append(col)
    if len(unseen) > 1:
        problems.append(f"{' and '.join(unseen)} have values found in no other row")
    return problems


def _field(fields: Sequence[str], header: list[str], name: str) -> str:
    i = header.index(name) if name in header else len(fields)
    return fields[i].strip() if i < len(fields) else ""


def _read_parquet(path: Path, max_field_chars: int) -> _Styles:
    try:
        table = pd.read_parquet(path)
    except Exception as exc:
        raise CatalogError(f"Cannot read {path}: {exc}. Is it a valid Parquet file?") from exc
    table.columns = [str(c).strip() for c in table.columns]
    _check_unique_columns(path, list(table.columns))
    return _parquet_styles(table, 1, max_field_chars)


def _parquet_styles(table: pd.DataFrame, first_row: int, max_field_chars: int) -> _Styles:
    """Rows of a Parquet table as strings, numbered from ``first_row``; a row with a field over
    ``max_field_chars`` is rejected."""
    table = table.astype(object).where(table.notna(), "").astype(str)
    table.index = pd.RangeIndex(first_row, first_row + len(table))
    styles = _Styles(table=table, rows_in=len(table))
    too_long = pd.Series(False, index=table.index)
    for col in table.columns:
        too_long |= table[col].str.len() > max_field_chars
    pids = table.loc[too_long, ID] if ID in table.columns else pd.Series("", index=table.index[too_long])
    for row, pid in pids.items():
        why = f"a field too long (over {max_field_chars:,} characters, max_field_chars), row {row}"
        styles.rejects.append(_reject(str(pid).strip() or f"row {row}", why, "dropped", int(row), ""))
    styles.table = table.loc[~too_long]
    return styles


def _reject(pid: str, reason: str, action: str, line: int | None, raw: str) -> dict[str, object]:
    return {ID: _preview(pid, 80), "reason": reason, "action": action, "line": line, "raw": _preview(raw)}


def _reject_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=REJECT_COLUMNS).astype({"line": "Int64"})


def _preview(text: str, limit: int = RAW_PREVIEW_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text):,} characters]"


def letterbox(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` (RGB) resized to fit ``size`` (width, height) keeping its aspect ratio, centred on white (product
    photos are shot on white): a wide or tall photo is not stretched. An image of the target's aspect ratio is the
    plain bilinear resize."""
    w, h = size
    scale = min(w / image.width, h / image.height)
    inner = (max(1, min(w, round(image.width * scale))), max(1, min(h, round(image.height * scale))))
    resized = image.resize(inner, Image.BILINEAR)
    if inner == (w, h):
        return resized
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    canvas.paste(resized, ((w - inner[0]) // 2, (h - inner[1]) // 2))
    return canvas


def open_image_within_budget(
    data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, target_size: tuple[int, int] | None = None
) -> Image.Image:
    """Decode the image in ``data`` once, never decoding more than ``max_pixels`` pixels.

    The header is read first (opening does not decode). A JPEG is then decoded at the smallest of its
    built-in reduced scales (1/2, 1/4, 1/8) that is still at least ``target_size`` (width, height), so a large
    photo costs little; ``target_size=None`` decodes every format at full size. Whatever would still decode to
    more than ``max_pixels`` is refused before decoding. Only the formats in ``IMAGE_FORMATS`` are opened.

    Returns the loaded image in the file's own mode, at the decoded size: that may be larger than
    ``target_size`` (resize it yourself) and is the full size for formats other than JPEG. Raises
    ``ImageTooLarge`` (a ``ValueError``) over the budget, and Pillow's errors (``OSError``, including
    ``PIL.UnidentifiedImageError``, ``SyntaxError``, ``ValueError``...) for data that is not a readable image.
    """
    image, _ = _decode_within_budget(data, max_pixels, target_size)
    return image


def _decode_within_budget(
    data: bytes, max_pixels: int, target_size: tuple[int, int] | None
) -> tuple[Image.Image, tuple[int, int]]:
    """``open_image_within_budget``, plus the (width, height) stored in the file."""
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own, larger, limit, checked while opening
        raise ImageTooLarge(f"image too large: {exc}", None, max_pixels) from exc
    stored = image.size
    try:
        if target_size is not None:
            image.draft(image.mode, target_size)  # a no-op for formats other than JPEG
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"image too large: {width}x{height} is {width * height:,} pixels to decode, more than the "
                f"limit of {max_pixels:,}",
                (width, height),
                max_pixels,
            )
        image.load()
    except BaseException:
        image.close()
        raise
    return image, stored


NO_IMAGES_FOLDER = "no images folder"


@dataclass(frozen=True)
class ImageCheck:
    status: str  # ok | missing | corrupt | unchecked
    sha1: str | None
    detail: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    outside: bool = False  # the reference pointed outside images/; detail says how

    @property
    def reason(self) -> str:
        return self.detail if self.outside else f"{self.status} image: {self.detail}"


def check_image(path: Path | None, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageCheck:
    """Hash and decode one image file within the pixel budget, so truncated, corrupt and oversized files are
    caught here, not in training. Width and height are the ones stored in the file."""
    if path is None or not path.is_file():
        return ImageCheck("missing", None, "image file not found")
    try:
        n_bytes = path.stat().st_size
        if n_bytes > MAX_IMAGE_BYTES:
            return ImageCheck("corrupt", None, f"file too large ({n_bytes:,} bytes; the limit is {MAX_IMAGE_BYTES:,})")
        data = path.read_bytes()
    except OSError as exc:
        return ImageCheck("corrupt", None, f"cannot read image file: {exc}")
    sha1 = hashlib.sha1(data).hexdigest()
    try:
        image, (width, height) = _decode_within_budget(data, max_pixels, CHECK_DECODE_SIZE)
    except ImageTooLarge as exc:
        return ImageCheck("corrupt", sha1, f"{exc} (max_image_pixels)")
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        return ImageCheck("corrupt", sha1, f"image cannot be decoded ({type(exc).__name__}: {exc})")
    with image:
        return ImageCheck("ok", sha1, "", width, height, image.mode)


def check_images(
    paths: Iterable[Path | None], workers: int = 4, progress: bool = True, max_pixels: int = MAX_IMAGE_PIXELS
) -> list[ImageCheck]:
    paths = list(paths)
    check = partial(check_image, max_pixels=max_pixels)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check, paths, chunksize=64)
        return list(tqdm(results, total=len(paths), desc="checking images", disable=not progress, leave=False))


def find_image(images_dir: Path, product_id: str) -> Path | None:
    """The image file of a product inside ``images_dir``, or None (also when the reference leads outside)."""
    return _locate_image(images_dir, images_dir.resolve(), product_id)[0]


def _locate_image(images_dir: Path, root: Path, product_id: str) -> tuple[Path | None, str]:
    """A product's image file in ``images_dir`` (whose resolved path is ``root``), or None and, when the
    reference leads outside the folder, why."""
    if any(sep in product_id for sep in ("/", "\\", "\x00")):
        return None, f"{OUTSIDE_FOLDER} (the id '{_preview(product_id, 80)}' is a path, not a file name)"
    for ext in IMAGE_EXTENSIONS:
        candidate = images_dir / f"{product_id}{ext}"
        try:
            if not candidate.is_file():
                continue
            # The name has no separator, so only a link (or a Windows drive prefix) can lead elsewhere; links
            # are followed only while they stay within the folder.
            inside = candidate.parent == images_dir and (
                not candidate.is_symlink() or candidate.resolve().is_relative_to(root)
            )
        except (OSError, ValueError):  # e.g. a name too long for the file system
            continue
        if not inside:
            return None, f"{OUTSIDE_FOLDER} ({candidate.name} resolves to a file outside images/)"
        return candidate, ""
    return None, ""


def _image_checks(
    ids: Sequence[str], images_dir: Path, *, check_files: bool, max_pixels: int, progress: bool
) -> tuple[list[Path | None], list[ImageCheck]]:
    if not images_dir.is_dir():
        log.warning("No images/ folder at %s; every product has no image", images_dir)
        # A catalog without images is not a catalog of products with a problem: no per-product note (unless the
        # model needs images, when each product dropped is listed).
        return [None] * len(ids), [ImageCheck("missing", None, NO_IMAGES_FOLDER)] * len(ids)
    root = images_dir.resolve()
    located = [_locate_image(images_dir, root, pid) for pid in ids]
    paths = [path for path, _ in located]
    if check_files:
        checks = check_images(paths, progress=progress, max_pixels=max_pixels)
    else:
        checks = [ImageCheck("unchecked" if p else "missing", None, "" if p else "image file not found") for p in paths]
    checks = [
        ImageCheck("missing", None, why, outside=True) if why else check
        for (_, why), check in zip(located, checks, strict=True)
    ]
    return paths, checks


class _RejectLog:
    """The reject rows of one load, each with the line and raw text of its row."""

    def __init__(self, raws: Mapping[int, str], rows: list[dict[str, object]]) -> None:
        self.raws = raws
        self.rows = rows
        # The check each row comes from, in the order load_catalog runs them: a streamed load (CatalogStream)
        # sorts the rows of all its chunks by it, so its report lists them as load_catalog's does.
        self.stage: tuple[int, ...] = (0,)
        self.stages: list[tuple[int, ...]] = [(0,)] * len(rows)

    def add(self, pid: str, reason: str, action: str, line: int) -> None:
        self.rows.append(_reject(pid, reason, action, int(line), self.raws.get(line, "")))
        self.stages.append(self.stage)

    def drop(self, table: pd.DataFrame, mask: pd.Series, reason: str) -> pd.DataFrame:
        """``table`` without the rows of ``mask``, each recorded as dropped for ``reason``."""
        for line, pid in zip(table.index[mask], table.loc[mask, ID], strict=True):
            self.add(pid or "(empty id)", reason, "dropped", line)
        return table.loc[~mask]

    def frame(self) -> pd.DataFrame:
        return _reject_frame(self.rows)


def load_catalog(
    data: str | Path,
    *,
    schema: CatalogSchema | None = None,
    label: str | Sequence[str] | None = None,
    label_sep: str | None = None,
    id: str | None = None,  # noqa: A002 - the role's name, as on the command line
    text: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    numeric: Sequence[str] | None = None,
    image: str | None = None,
    image_sep: str | None = None,
    images_dir: str | Path | None = None,
    sep: str | None = None,
    require_target: bool = True,
    require_images: bool = False,
    required_columns: Iterable[str] = (),
    required_modalities: Sequence[str] = (),
    check_image_files: bool = True,
    progress: bool = True,
    max_field_chars: int = MAX_FIELD_CHARS,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    rejects_path: str | Path | None = None,
    links: LinkOptions | None = None,
    fetch_links: bool = True,
    keep_table: bool = False,
) -> Catalog:
    """Load a product table and its images from ``data`` (a table file, or a folder holding one) and validate every
    row.

    The table is CSV with any separator (sniffed from the header, or ``sep``), TSV, Parquet or JSON Lines. Its
    columns' roles come from ``schema`` (e.g. a model's), else the built-in fashion schema for a table with the
    Kaggle columns, else ``schema.infer_schema``; ``label``, ``id``, ``text``, ``categorical``, ``numeric``,
    ``image`` and ``image_sep`` replace single roles (as the command line's flags). Images are looked up in
    ``images_dir`` (default: ``images/`` beside the table): by the image column's file names or paths, or as
    ``<id>.jpg``.

    Rows are dropped (with a reason) for: a malformed line (wrong number of fields that cannot be mended, a
    field over ``max_field_chars``), an empty or duplicate id, an empty label when ``require_target``, and a
    missing or unusable image when ``require_images``. Problems that do not stop a product from being used
    (a value that is not a number in a numeric column, an unclosed quote, a broken image or one outside the images
    folder for a model that does not look at images) are recorded with action "kept". Images are decoded within
    ``max_image_pixels``. ``required_columns``: columns (of the catalog's own names) that must be present;
    ``required_modalities``: the inputs a model reads, whose columns must be present (``columns_for``).

    Image values that are ``http(s)://`` links are fetched (``image_links.LinkFetcher`` with ``links``, default
    ``LinkOptions()``) into the URL cache, which counts as one more images folder; with several values per product
    the first that works is used, links and local files alike. Every link tried is in ``Catalog.links``
    (``write_links`` saves it as links.csv). ``fetch_links=False`` tries no link (the EDA's ``--check-links``
    samples them instead): such a product counts as without an image. ``keep_table``: keep the table as read in
    ``Catalog.table`` (the EDA's formatting checks; it costs a second copy of the catalog in memory).

    With ``rejects_path`` the rejects report is written there, also when the load then fails. Raises
    ``CatalogError`` when the catalog cannot be read or no product is usable; in the latter case its
    ``rejects`` holds every rejected row.
    """
    folder = resolve_data_dir(data)
    table_path = _find_table(folder)
    if table_path is None:
        raise CatalogError(
            f"No product table found in {folder}: it must hold styles.csv / styles.parquet or exactly one table "
            f"file ({', '.join(TABLE_SUFFIXES)}). Pass the table file itself with --data FILE."
        )
    styles = _read_styles(table_path, max_field_chars, sep=sep, schema=schema)
    roles = {"label": label, "id": id, "text": text, "categorical": categorical, "numeric": numeric,
             "image": image, "image_sep": image_sep, "label_sep": label_sep}
    try:
        schema = resolve_schema(
            styles.table, schema=schema, need_label=require_target, kaggle_layout=table_path.stem == "styles", **roles
        )
    except SchemaError as exc:
        raise CatalogError(f"{table_path}: {exc}") from None
    required = [
        *([schema.id] if schema.id else []),
        *((schema.levels or [schema.label]) if require_target else []),
        *required_columns,
        *columns_for(required_modalities, schema),
    ]
    table = _with_catalog_columns(styles.table, table_path, required, schema)
    rejects = _RejectLog(styles.raws, styles.rejects + styles.notes)
    products = _to_products(_drop_unusable_rows(table, rejects, require_target, schema), rejects, schema)
    base = table_path.parent
    image_roots = [Path(images_dir)] if images_dir is not None else [base / "images"]
    if images_dir is None and schema.image:
        image_roots.append(base)  # an image column's relative paths may start at the table's folder
    if images_dir is not None and not Path(images_dir).is_dir():
        raise CatalogError(f"The images folder {images_dir} does not exist. Pass the folder with --images-dir DIR.")
    image_options = {"check_files": check_image_files, "max_pixels": max_image_pixels, "progress": progress}
    link_reports: list[pd.DataFrame] = []  # filled when the image column holds links
    products = _attach_images(
        products, image_roots, rejects, schema, require_images=require_images, links=links,
        fetch_links=fetch_links, link_reports=link_reports, **image_options,
    )
    catalog = Catalog(
        products=products.reset_index(drop=True),
        rejects=rejects.frame(),
        source=table_path,
        recovered_rows=len(styles.recovered_ids),
        rows_in=styles.rows_in,
        continuation_lines=styles.continuation_lines,
        recovered_ids=styles.recovered_ids,
        schema=schema,
        separator=styles.separator,
        links=link_reports[0] if link_reports else None,
        table=styles.table.reset_index(drop=True) if keep_table else None,
        images_dir=image_roots[0],
    )
    if rejects_path is not None:
        catalog.write_rejects(Path(rejects_path))
    if catalog.products.empty:
        raise _no_products_error(catalog, rejects_path)
    _add_notes(catalog, len(styles.notes))
    log.info("%s", catalog.summary())
    return catalog


def columns_for(modalities: Sequence[str], schema: CatalogSchema) -> list[str]:
    """The catalog columns (the user's names) a model of these modalities reads."""
    cols: list[str] = []
    if "metadata" in modalities:
        cols += [*schema.metadata, *schema.text]  # name_length comes from the title
    if "title" in modalities:
        cols += schema.text
    return list(dict.fromkeys(cols))


def _with_catalog_columns(
    table: pd.DataFrame, table_path: Path, required: Iterable[str], schema: CatalogSchema
) -> pd.DataFrame:
    missing = [c for c in dict.fromkeys(required) if c not in table.columns]
    if missing:
        raise CatalogError(
            f"{table_path} lacks required column(s) {', '.join(missing)}. Found: {', '.join(table.columns)}. "
            "Add the column (values may be empty), rename the matching column, or name it with --label / --id."
        )
    table = table.copy()
    absent = [col for _, col in schema.columns() if col not in table.columns]
    if absent and not schema.is_fashion:
        log.warning("%s has no column %s; read as empty", table_path, ", ".join(absent))
    for col in [*(COLUMNS if schema.is_fashion else []), *absent]:
        if col not in table.columns:
            table[col] = ""
    for col in table.columns:
        table[col] = table[col].fillna("").astype(str).str.strip()
    # The role columns under the products frame's own names (schema.py).
    if schema.id and schema.id != ID:
        table[ID] = table[schema.id]
    elif not schema.id:
        table[ID] = [str(line) for line in table.index]  # the product's line (row) in the table
    if schema.levels:
        # Several label columns are one path (taxonomy.py); a product without a level column is unlabelled.
        if all(c in table.columns for c in schema.levels):
            table[TARGET] = [v or "" for v in join_levels(table[list(schema.levels)].to_numpy())]
        else:
            table[TARGET] = ""
    elif schema.label and schema.label != TARGET:
        table[TARGET] = table[schema.label]
    elif TARGET not in table.columns:
        table[TARGET] = ""
    if tuple(schema.text) != (TITLE,):
        texts = table[list(schema.text)].to_numpy() if schema.text else [[]] * len(table)
        table[TITLE] = [combine_text(list(row)) or "" for row in texts]
    return table


def _drop_unusable_rows(
    table: pd.DataFrame,
    rejects: _RejectLog,
    require_target: bool,
    schema: CatalogSchema,
    seen: _SeenIds | None = None,
) -> pd.DataFrame:
    """``table`` without the rows that cannot be a product. ``seen``: the ids of the earlier chunks of a streamed
    table, so a duplicate is found across chunks (and the ids kept here are added to it)."""
    rejects.stage = (STAGE_EMPTY_ID,)
    table = rejects.drop(table, table[ID] == "", "empty id")
    dup = table[ID].duplicated(keep="first").to_numpy(copy=True)
    if seen is not None:
        dup |= seen.contains(table[ID])
    rejects.stage = (STAGE_DUPLICATE,)
    table = rejects.drop(table, pd.Series(dup, index=table.index), DUPLICATE_ID)
    if seen is not None:
        seen.add(table[ID])
    if require_target:
        rejects.stage = (STAGE_EMPTY_TARGET,)
        table = rejects.drop(table, table[TARGET] == "", f"empty target ({schema.label})")
    return table


def _to_products(table: pd.DataFrame, rejects: _RejectLog, schema: CatalogSchema) -> pd.DataFrame:
    products = table.copy()
    for i, col in enumerate(schema.numeric):
        rejects.stage = (STAGE_NUMBER, i)
        raw = table[col]
        if schema.is_fashion:
            number = pd.to_numeric(raw.where(raw != ""), errors="coerce")
        else:
            number = pd.Series([parse_number(v) if v else math.nan for v in raw], index=raw.index)
        bad = (raw != "") & number.isna()
        for line, pid, value in zip(table.index[bad], table.loc[bad, ID], raw[bad], strict=True):
            rejects.add(pid, f"non-numeric {col} '{_preview(value, 40)}' (treated as missing)", "kept", line)
        products[col] = number.astype("float64")
    for col in [*schema.categorical, TARGET, TITLE]:
        products[col] = products[col].replace("", np.nan)
    return products


def _attach_images(
    products: pd.DataFrame,
    roots: Sequence[Path],
    rejects: _RejectLog,
    schema: CatalogSchema,
    *,
    require_images: bool,
    check_files: bool,
    max_pixels: int,
    progress: bool,
    links: LinkOptions | None = None,
    fetch_links: bool = True,
    link_reports: list[pd.DataFrame] | None = None,
    fetcher: LinkFetcher | None = None,
) -> pd.DataFrame:
    if schema.image:
        refs = list(products[schema.image])
        ids = list(products[ID])
        if _has_links(products, schema):
            if not fetch_links:
                located = [_locate_image_ref(ref, roots, schema.image_sep) for ref in refs]
            else:
                located, report = _locate_with_links(
                    refs, ids, roots, schema.image_sep, links, max_pixels=max_pixels, progress=progress,
                    fetcher=fetcher,
                )
                if link_reports is not None:
                    link_reports.append(report)
        else:
            located = [_locate_image_ref(ref, roots, schema.image_sep) for ref in refs]
        paths, checks = _checks_of(located, check_files=check_files, max_pixels=max_pixels, progress=progress)
    else:
        paths, checks = _image_checks(
            list(products[ID]), roots[0], check_files=check_files, max_pixels=max_pixels, progress=progress
        )
    products["image_path"] = [
        str(p) if c.status in ("ok", "unchecked") else None for p, c in zip(paths, checks, strict=True)
    ]
    products["image_sha1"] = [c.sha1 for c in checks]
    products["image_status"] = [c.status for c in checks]
    products["image_width"] = [c.width for c in checks]
    products["image_height"] = [c.height for c in checks]
    products["image_mode"] = [c.mode for c in checks]
    action = "dropped" if require_images else "kept"
    rejects.stage = (STAGE_IMAGE,)
    for line, pid, check in zip(products.index, products[ID], checks, strict=True):
        if check.status in ("missing", "corrupt") and (require_images or check.detail != NO_IMAGES_FOLDER):
            rejects.add(pid, check.reason, action, line)
    if require_images:
        products = products.loc[~products["image_status"].isin(["missing", "corrupt"])]
    return products


def _has_links(products: pd.DataFrame, schema: CatalogSchema) -> bool:
    """Whether any value of the image column is (or holds) an http(s) link."""
    if not schema.image or schema.image not in products.columns:
        return False
    return bool(products[schema.image].astype(str).str.contains(r"https?://", case=False, regex=True).any())


def _locate_with_links(
    refs: Sequence[str],
    ids: Sequence[str],
    roots: Sequence[Path],
    image_sep: str | None,
    links: LinkOptions | None,
    *,
    max_pixels: int,
    progress: bool,
    fetcher: LinkFetcher | None = None,
) -> tuple[list[tuple[Path | None, str]], pd.DataFrame]:
    """``_locate_image_ref`` for every product, fetching links on ``links.workers`` threads (a product's links
    are tried in order, so only as many are fetched as it takes to find one that works); and the link report.
    ``fetcher``: one made by ``link_fetcher`` and kept open across calls (the chunks of a streamed catalog, which
    then share what a run remembers: each URL fetched once, hosts found dead); its results are handed over in the
    report and cleared."""
    from .image_links import links_report

    links = _link_options(links, max_pixels)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(max_workers=links.workers) as pool:
        if fetcher is None:
            fetcher = stack.enter_context(link_fetcher(links, max_pixels))
        cache_root = fetcher.cache.root.resolve()

        def fetch(url: str, pid: str) -> tuple[Path | None, str]:
            result = fetcher.fetch(url, pid)
            if result.path is None:
                return None, f"image link {result.reason}: {result.detail}"
            # The URL cache is one more images folder: what the loader accepts must lie inside one.
            if not result.path.resolve().is_relative_to(cache_root):
                return None, f"{OUTSIDE_FOLDER} (cached image outside {cache_root})"
            return result.path, ""

        def locate(pair: tuple[str, str]) -> tuple[Path | None, str]:
            return _locate_image_ref(pair[0], roots, image_sep, fetch, pair[1])

        located = list(tqdm(
            pool.map(locate, zip(refs, ids, strict=True)),
            total=len(refs), desc="fetching images", unit="product", disable=not progress, leave=False,
        ))
    log.info("image links: %s, %d requests, in %.1f s", fetcher.summary(), fetcher.requests,
             time.perf_counter() - started)
    report = links_report(fetcher.results)
    fetcher.results.clear()
    return located, report


def _link_options(links: LinkOptions | None, max_pixels: int) -> LinkOptions:
    from .image_links import LinkOptions

    # The catalog's pixel budget binds links too, so a link's image is refused exactly when its file would be.
    return replace(links or LinkOptions(), max_pixels=max_pixels)


def link_fetcher(links: LinkOptions | None, max_pixels: int = MAX_IMAGE_PIXELS) -> LinkFetcher:
    """The fetcher ``load_catalog`` uses for image links (close it, or use it as a context manager)."""
    from .image_links import LinkFetcher

    return LinkFetcher(_link_options(links, max_pixels))


def _locate_image_ref(
    ref: str,
    roots: Sequence[Path],
    image_sep: str | None,
    fetch: Callable[[str, str], tuple[Path | None, str]] | None = None,
    product_id: str = "",
) -> tuple[Path | None, str]:
    """The image file an image column's value names (the first of several that exists), inside one of ``roots``;
    or None and why not. A link is fetched with ``fetch`` (into the URL cache); without it, links are skipped."""
    values = [v.strip() for v in (ref.split(image_sep) if image_sep else [ref])]
    values = [v for v in values if v]
    if not values:
        return None, ""
    why = ""
    for value in values:
        if value.lower().startswith(("http://", "https://")):
            if fetch is None:
                why = why or "image link not fetched"
                continue
            path, link_why = fetch(value, product_id)
            if path is not None:
                return path, ""
            why = why or link_why
            continue
        if "\x00" in value:
            why = f"{OUTSIDE_FOLDER} (the reference holds a NUL character)"
            continue
        for root in roots:
            candidate = Path(value) if Path(value).is_absolute() else root / value
            try:
                if not candidate.is_file():
                    continue
                inside = candidate.resolve().is_relative_to(root.resolve())
            except (OSError, ValueError):
                continue
            if not inside:
                why = f"{OUTSIDE_FOLDER} ('{_preview(value, 80)}' resolves outside {root})"
                continue
            return candidate, ""
    return None, why


def _checks_of(
    located: Sequence[tuple[Path | None, str]], *, check_files: bool, max_pixels: int, progress: bool
) -> tuple[list[Path | None], list[ImageCheck]]:
    paths = [path for path, _ in located]
    if check_files:
        checks = check_images(paths, progress=progress, max_pixels=max_pixels)
    else:
        checks = [ImageCheck("unchecked" if p else "missing", None, "" if p else "image file not found") for p in paths]
    checks = [
        ImageCheck("missing", None, why, outside=why.startswith(OUTSIDE_FOLDER)) if why else check
        for (_, why), check in zip(located, checks, strict=True)
    ]
    return paths, checks


def _no_products_error(catalog: Catalog | CatalogTotals, rejects_path: str | Path | None) -> CatalogError:
    source = catalog.source
    if catalog.rows_in == 0:
        message = (
            f"{source} has a header but no product rows. Add one line per product below the header "
            f"(columns: {', '.join(c for _, c in catalog.schema.columns())})."
        )
    else:
        examples = list(dict.fromkeys(_preview(str(r), 120) for r in catalog.dropped["reason"]))[:3]
        where = f"in {rejects_path}" if rejects_path is not None else "in the rejects report"
        message = (
            f"No usable product in {source}: all {catalog.rows_in:,} rows were rejected, e.g. "
            f"{'; '.join(examples)}. Every row is listed with its reason and text {where}; fix them and load "
            "again."
        )
    return CatalogError(message, rejects=catalog.rejects)


def _add_notes(catalog: Catalog | CatalogTotals, n_unclosed: int) -> None:
    if catalog.recovered_rows:
        catalog.notes.append(f"{catalog.recovered_rows} rows had unquoted commas in {TITLE}; the title was rejoined")
    if n_unclosed:
        catalog.notes.append(f"{n_unclosed} rows had an unclosed quote; each was read with quotes as plain text")
    if catalog.continuation_lines:
        catalog.notes.append(f"{catalog.continuation_lines} lines continue a quoted field begun on an earlier line")


# ---------------------------------------------------------------------------------------------- streaming
DEFAULT_CHUNK_ROWS = 8192
RECORD_WINDOW = 4096  # physical lines grouped into records at a time when a delimited file is streamed


class _SeenIds:
    """The ids of a streamed table's earlier chunks, to find a duplicate across chunks: 16 bytes per id (a
    BLAKE2b digest; two different ids share one with a chance of about n² / 2¹²⁹), in sorted runs that merge as
    they grow, so a lookup and an insertion cost O(log n) per id, not a copy of everything seen."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs)

    @staticmethod
    def _digests(ids: Iterable[str]) -> np.ndarray:
        return np.array(
            [hashlib.blake2b(i.encode("utf-8", "surrogatepass"), digest_size=16).digest() for i in ids], dtype="S16"
        )

    def contains(self, ids: Iterable[str]) -> np.ndarray:
        """Whether each id was added before."""
        query = self._digests(ids)
        found = np.zeros(len(query), dtype=bool)
        for run in self._runs:
            pos = np.minimum(np.searchsorted(run, query), len(run) - 1)
            found |= run[pos] == query
        return found

    def add(self, ids: Iterable[str]) -> None:
        run = np.sort(self._digests(ids))
        if not len(run):
            return
        self._runs.append(run)
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            last = self._runs.pop()
            self._runs[-1] = np.sort(np.concatenate([self._runs[-1], last]), kind="stable")


def _text_encoding(path: Path) -> tuple[str, int]:
    """The encoding a delimited or JSON Lines file is read with, as ``_read_text`` decides it for the whole file
    (UTF-16 with its BOM, UTF-8 with or without a BOM, else Latin-1), found by decoding it once block by block; and
    its size in bytes."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    size = 0
    try:
        with path.open("rb") as f:
            if f.read(2).startswith(_UTF16_BOMS):  # Excel's "Unicode Text" export
                return "utf-16", path.stat().st_size
            f.seek(0)
            while block := f.read(1 << 22):
                size += len(block)
                decoder.decode(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        log.warning("%s is not UTF-8; read it as Latin-1", path)
        return "latin-1", path.stat().st_size
    except OSError as exc:
        raise CatalogError(f"Cannot read {path}: {exc}.") from exc
    return "utf-8-sig", size


def _file_lines(path: Path, encoding: str) -> Iterator[str]:
    """The physical lines of a text file without their line breaks, split where ``_physical_lines`` splits."""
    with path.open("r", encoding=encoding, newline="") as f:
        for line in f:
            if line.endswith("\r\n"):
                yield line[:-2]
            elif line.endswith(("\n", "\r")):
                yield line[:-1]
            else:
                yield line


def _stream_records(lines: Iterator[str], start: int, n_columns: int, sep: str) -> Iterator[_Record]:
    """The records of the physical lines ``lines`` (the file's lines from index ``start``), as ``_records`` groups
    them, holding a window of lines at a time: a record is grouped only once the lines it may span are read."""
    buffer: list[str] = []
    offset = start  # the file's line index of buffer[0]
    exhausted = False
    while True:
        while not exhausted and len(buffer) < RECORD_WINDOW + MAX_RECORD_LINES:
            line = next(lines, None)
            if line is None:
                exhausted = True
            else:
                buffer.append(line)
        # A record starting before `stop` has all the lines _record_span may look at in the buffer.
        stop = len(buffer) if exhausted else len(buffer) - MAX_RECORD_LINES
        records, end = _group_records(buffer, 0, stop, n_columns, sep, offset)
        yield from records
        del buffer[:end]
        offset += end
        if exhausted and not buffer:
            return


def _chunks_of(items: Iterable[object], size: int) -> Iterator[list]:
    """``items`` in lists of ``size``; always at least one list (empty for no items)."""
    chunk: list = []
    empty = True
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk, empty = [], False
    if chunk or empty:
        yield chunk


def _csv_header(path: Path, encoding: str) -> tuple[int, str]:
    lines = _file_lines(path, encoding)
    try:
        return next((i, line) for i, line in enumerate(lines) if line.strip())
    except StopIteration:
        raise CatalogError(f"{path} is empty. It needs a header row naming its columns.") from None
    finally:
        lines.close()


def _csv_chunks(
    path: Path, max_field_chars: int, chunk_rows: int, *, sep: str | None, schema: CatalogSchema | None
) -> Iterator[_Styles]:
    """``_read_styles`` of a delimited file, ``chunk_rows`` records at a time. The values that the cleanly parsed
    rows take (which decide whether a row with extra fields is rejoined) are the whole file's, read in one more
    pass over it the first time a chunk has such a row."""
    encoding, size = _text_encoding(path)
    _allow_fields_up_to(size)
    first, header_line = _csv_header(path, encoding)
    if sep is None:
        sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else sniff_separator(header_line)
    header = [h.strip() for h in next(csv.reader([header_line], delimiter=sep), [])]
    _check_unique_columns(path, header)
    if schema is None and looks_like_fashion(header):
        schema = FASHION
    n_columns = len(header)
    rejoin = schema is not None and header[-1] in schema.text
    vocab: dict[str, set[str]] | None = None

    def records() -> Iterator[_Record]:
        lines = _file_lines(path, encoding)
        for _ in range(first + 1):
            next(lines)
        return _stream_records(lines, first + 1, n_columns, sep)

    for chunk in _chunks_of(records(), chunk_rows):
        if vocab is None and rejoin and any(len(r.fields) > n_columns for r in chunk):
            vocab = _vocabulary([r for r in records() if _clean(r, n_columns)], header, schema)
        styles = _table_from_records(chunk, header, max_field_chars, sep, schema, vocab if vocab is not None else {})
        styles.continuation_lines = sum(r.continuation for r in chunk)
        styles.separator = sep
        yield styles


def _json_chunks(path: Path, max_field_chars: int, chunk_rows: int) -> Iterator[_Styles]:
    """``_read_json_lines``, ``chunk_rows`` lines at a time, each chunk with the whole table's columns. A JSON array
    (not JSON Lines) is read whole."""
    encoding, _ = _text_encoding(path)
    lines = _file_lines(path, encoding)
    try:
        head = next((line for line in lines if line.strip()), "")
    finally:
        lines.close()
    if head.lstrip().startswith("["):
        yield _read_json_lines(path, _read_text(path), max_field_chars)
        return
    columns = _json_columns(path, encoding, max_field_chars)
    entries = (_json_entry(i, line) for i, line in enumerate(_file_lines(path, encoding)) if line.strip())
    for chunk in _chunks_of(entries, chunk_rows):
        yield _json_styles(chunk, max_field_chars, columns)


def _json_columns(path: Path, encoding: str, max_field_chars: int) -> list[str]:
    """The columns of a JSON Lines file's whole table: the field names of its usable rows, in order of first use
    (one more pass over the file, so that every chunk has the same columns)."""
    columns: dict[str, None] = {}
    for i, line in enumerate(_file_lines(path, encoding)):
        if line.strip():
            _, item, _ = _json_entry(i, line)
            if isinstance(item, dict):
                values = {str(k).strip(): _json_value(v) for k, v in item.items()}
                if all(len(v) <= max_field_chars for v in values.values()):
                    columns.update(dict.fromkeys(values))
    return list(columns)


def _parquet_chunks(path: Path, max_field_chars: int, chunk_rows: int) -> Iterator[_Styles]:
    """``_read_parquet``, ``chunk_rows`` rows at a time. An integer column with a missing value anywhere in the
    file is read as floats in every chunk, as pandas reads the whole table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        with_nulls = [
            name
            for name, type_ in zip(schema.names, schema.types, strict=True)
            if pa.types.is_integer(type_) and parquet.read(columns=[name]).column(name).null_count
        ]
        batches = parquet.iter_batches(batch_size=chunk_rows)
        names = [str(c).strip() for c in schema.names]
        _check_unique_columns(path, names)
        first = 1
        empty = True
        for batch in batches:
            table = pa.Table.from_batches([batch], schema=schema)
            for name in with_nulls:
                i = table.schema.get_field_index(name)
                table = table.set_column(i, name, table.column(i).cast(pa.float64()))
            frame = table.to_pandas()
            frame.columns = names
            yield _parquet_styles(frame, first, max_field_chars)
            first += len(frame)
            empty = False
    except CatalogError:
        raise
    except Exception as exc:
        raise CatalogError(f"Cannot read {path}: {exc}. Is it a valid Parquet file?") from exc
    if empty:
        yield _parquet_styles(pd.DataFrame(columns=names), 1, max_field_chars)


def _styles_chunks(
    path: Path, max_field_chars: int, chunk_rows: int, *, sep: str | None, schema: CatalogSchema | None
) -> Iterator[_Styles]:
    kind = _table_kind(path)
    if kind == "parquet":
        return _parquet_chunks(path, max_field_chars, chunk_rows)
    if kind == "json":
        return _json_chunks(path, max_field_chars, chunk_rows)
    return _csv_chunks(path, max_field_chars, chunk_rows, sep=sep, schema=schema)


@dataclass
class CatalogTotals:
    """What a streamed load (``CatalogStream``) found in the whole table: a ``Catalog`` without its products,
    which went by chunk (``n_products`` of them). ``rejects`` lists the rows as ``load_catalog`` does."""

    source: Path
    schema: CatalogSchema
    rows_in: int = 0
    n_products: int = 0
    rejects: pd.DataFrame = field(default_factory=lambda: _reject_frame([]))
    recovered_rows: int = 0
    continuation_lines: int = 0
    separator: str | None = None
    notes: list[str] = field(default_factory=list)
    links_path: Path | None = None  # where the link report was written, None: no image value is a link

    @property
    def dropped(self) -> pd.DataFrame:
        return self.rejects[self.rejects["action"] == "dropped"]

    def summary(self) -> str:
        return _summary(self.source, self.rows_in, self.n_products, self.rejects, self.recovered_rows)

    def write_rejects(self, path: Path) -> Path:
        return _write_csv(self.rejects, path)


class CatalogStream:
    """``load_catalog``, a chunk at a time: iterating yields products frames (the columns of ``Catalog.products``)
    of the usable rows among the next ``chunk_rows`` rows read, so memory holds one chunk whatever the size of the
    table; afterwards ``totals`` holds what the whole load found.

    Every row is checked as ``load_catalog`` checks it, with the same result: the values that decide whether a
    shifted row is mended are the whole file's, an id already seen in an earlier chunk is a duplicate (16 bytes
    kept per id), image links share one fetcher (each URL fetched once per run), and the rejects report lists the
    same rows in the same order (it is kept in memory: one row per rejected or noted row). The link report is
    appended to ``links_path`` chunk by chunk. The roles of a table without ``schema`` are inferred from its first
    chunk. The stream is read once; ``CatalogError`` is raised as ``load_catalog`` raises it (a table without
    usable products once the whole table is read, after the rejects are written to ``rejects_path``).

    The options are ``load_catalog``'s."""

    def __init__(
        self,
        data: str | Path,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        links_path: str | Path | None = None,
        schema: CatalogSchema | None = None,
        require_target: bool = True,
        require_images: bool = False,
        required_columns: Iterable[str] = (),
        required_modalities: Sequence[str] = (),
        check_image_files: bool = True,
        progress: bool = True,
        max_field_chars: int = MAX_FIELD_CHARS,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        rejects_path: str | Path | None = None,
        links: LinkOptions | None = None,
        fetch_links: bool = True,
        images_dir: str | Path | None = None,
        sep: str | None = None,
        **roles: object,
    ) -> None:
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        unknown = set(roles) - {"label", "label_sep", "id", "text", "categorical", "numeric", "image", "image_sep"}
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))}")
        self.data = data
        self.chunk_rows = chunk_rows
        self.links_path = Path(links_path) if links_path is not None else None
        self.schema = schema
        self.roles = roles
        self.require_target = require_target
        self.require_images = require_images
        self.required_columns = list(required_columns)
        self.required_modalities = tuple(required_modalities)
        self.check_image_files = check_image_files
        self.progress = progress
        self.max_field_chars = max_field_chars
        self.max_image_pixels = max_image_pixels
        self.rejects_path = rejects_path
        self.link_options = links
        self.fetch_links = fetch_links
        self.images_dir = images_dir
        self.sep = sep
        self.totals: CatalogTotals | None = None
        self._started = False

    def __iter__(self) -> Iterator[pd.DataFrame]:
        if self._started:
            raise RuntimeError("A CatalogStream is read once; make a new one to read the catalog again.")
        self._started = True
        folder = resolve_data_dir(self.data)
        table_path = _find_table(folder)
        if table_path is None:
            raise CatalogError(
                f"No product table found in {folder}: it must hold styles.csv / styles.parquet or exactly one table "
                f"file ({', '.join(TABLE_SUFFIXES)}). Pass the table file itself with --data FILE."
            )
        chunks = _styles_chunks(table_path, self.max_field_chars, self.chunk_rows, sep=self.sep, schema=self.schema)
        staged: list[tuple[tuple[int, ...], dict[str, object]]] = []
        seen = _SeenIds()
        totals: CatalogTotals | None = None
        n_unclosed = 0
        bar = tqdm(desc="reading catalog", unit="row", disable=not self.progress)
        with contextlib.ExitStack() as stack:
            stack.callback(bar.close)
            fetcher = None
            for styles in chunks:
                if totals is None:
                    schema, required, roots = self._resolve(styles.table, table_path)
                    totals = self.totals = CatalogTotals(source=table_path, schema=schema, separator=styles.separator)
                    if self.fetch_links and self.links_path is not None:
                        self.links_path.unlink(missing_ok=True)  # a report of an earlier run is not appended to
                table = _with_catalog_columns(styles.table, table_path, required, schema)
                rejects = _RejectLog(styles.raws, [])
                products = _to_products(
                    _drop_unusable_rows(table, rejects, self.require_target, schema, seen=seen), rejects, schema
                )
                if fetcher is None and self.fetch_links and _has_links(products, schema):
                    fetcher = stack.enter_context(link_fetcher(self.link_options, self.max_image_pixels))
                reports: list[pd.DataFrame] = []
                products = _attach_images(
                    products, roots, rejects, schema, require_images=self.require_images, links=self.link_options,
                    fetch_links=self.fetch_links, link_reports=reports, fetcher=fetcher,
                    check_files=self.check_image_files, max_pixels=self.max_image_pixels, progress=False,
                )
                for report in reports:
                    self._append_links(report, totals)
                staged += [((STAGE_READ,), row) for row in styles.rejects]
                staged += [((STAGE_UNCLOSED,), row) for row in styles.notes]
                staged += list(zip(rejects.stages, rejects.rows, strict=True))
                n_unclosed += len(styles.notes)
                totals.rows_in += styles.rows_in
                totals.continuation_lines += styles.continuation_lines
                totals.recovered_rows += len(styles.recovered_ids)
                totals.n_products += len(products)
                bar.update(styles.rows_in)
                bar.set_postfix(products=f"{totals.n_products:,}", refresh=False)
                if len(products):
                    yield products.reset_index(drop=True)
        assert totals is not None  # every table yields at least one chunk
        staged.sort(key=lambda pair: pair[0])  # stable: within a check, rows stay in table order
        totals.rejects = _reject_frame([row for _, row in staged])
        if self.rejects_path is not None:
            totals.write_rejects(Path(self.rejects_path))
        if not totals.n_products:
            raise _no_products_error(totals, self.rejects_path)
        _add_notes(totals, n_unclosed)
        log.info("%s", totals.summary())

    def _resolve(self, table: pd.DataFrame, table_path: Path) -> tuple[CatalogSchema, list[str], list[Path]]:
        """The schema (given, or inferred from the first chunk), the required columns and the image folders."""
        try:
            schema = resolve_schema(
                table, schema=self.schema, need_label=self.require_target, kaggle_layout=table_path.stem == "styles",
                **self.roles,  # type: ignore[arg-type]
            )
        except SchemaError as exc:
            raise CatalogError(f"{table_path}: {exc}") from None
        required = list(dict.fromkeys([
            *([schema.id] if schema.id else []),
            *((schema.levels or [schema.label]) if self.require_target else []),
            *self.required_columns,
            *columns_for(self.required_modalities, schema),
        ]))
        images_dir = self.images_dir
        roots = [Path(images_dir)] if images_dir is not None else [table_path.parent / "images"]
        if images_dir is None and schema.image:
            roots.append(table_path.parent)
        if images_dir is not None and not Path(images_dir).is_dir():
            raise CatalogError(f"The images folder {images_dir} does not exist. Pass the folder with --images-dir DIR.")
        return schema, required, roots

    def _append_links(self, report: pd.DataFrame, totals: CatalogTotals) -> None:
        if self.links_path is None:
            return
        first = totals.links_path is None
        self.links_path.parent.mkdir(parents=True, exist_ok=True)
        report.to_csv(self.links_path, index=False, mode="w" if first else "a", header=first)
        totals.links_path = self.links_path


def _joined(products: pd.DataFrame) -> bool:
    """The label column already holds joined level paths (a loaded catalog's products frame)."""
    if TARGET not in products.columns:
        return False
    return bool(products[TARGET].astype(str).str.contains(JOIN, regex=False).any())


def catalog_from_frame(
    frame: pd.DataFrame,
    *,
    schema: CatalogSchema | None = None,
    require_target: bool = False,
    image_column: str | None = None,
) -> pd.DataFrame:
    """Normalise a user's DataFrame (Python API) to a products frame (schema.py; default: the fashion schema),
    without touching disk. A frame that already has the products frame's columns (a loaded catalog's) keeps them."""
    schema = schema or FASHION
    products = frame.copy()
    if ID not in products.columns:
        if schema.id and schema.id in products.columns:
            products[ID] = products[schema.id]
        else:
            products[ID] = [str(i) for i in range(len(products))]
    if schema.levels and all(c in products.columns for c in schema.levels) and not _joined(products):
        products[TARGET] = join_levels(products[list(schema.levels)].astype(object).to_numpy())
    elif TARGET not in products.columns and schema.label and schema.label in products.columns:
        products[TARGET] = products[schema.label]
    if require_target and TARGET not in products.columns:
        raise CatalogError(f"The DataFrame has no '{schema.label or TARGET}' column to learn from or evaluate against.")
    if TITLE not in products.columns:
        texts = [c for c in schema.text if c in products.columns]
        values = products[texts].astype(object).to_numpy() if texts else [[]] * len(products)
        products[TITLE] = [combine_text(list(row)) for row in values]
    for col in [*(COLUMNS if schema.is_fashion else [TARGET, TITLE]), *schema.metadata]:
        if col not in products.columns:
            products[col] = np.nan
    missing_id = products[ID].isna() | (products[ID].astype(str).str.strip() == "")
    products[ID] = products[ID].astype(str).str.strip()
    products.loc[missing_id, ID] = [str(i) for i in np.flatnonzero(missing_id.to_numpy())]
    for col in schema.numeric:
        if schema.is_fashion:
            products[col] = pd.to_numeric(products[col], errors="coerce").astype("float64")
        else:
            products[col] = np.array([parse_number(v) for v in products[col]], dtype=np.float64)
    for col in [*schema.categorical, TARGET, TITLE]:
        values = products[col].astype(object)
        values = values.where(values.notna(), None)
        products[col] = [None if v is None or str(v).strip() == "" else str(v).strip() for v in values]
    if image_column is None and "image_path" not in products.columns:
        image_column = schema.image  # a saved schema's image column; an explicit image_column always wins
    if image_column and image_column in products.columns:
        refs = products[image_column].astype(object)
        sep = schema.image_sep
        products["image_path"] = [
            (str(r).split(sep)[0].strip() if sep else str(r)) if isinstance(r, str | Path) and str(r) else None
            for r in refs
        ]
    elif "image_path" not in products.columns:
        products["image_path"] = None
    # object dtype: pandas 3 would store None as NaN in a string column, which reads as the path "nan".
    paths = [str(p) if isinstance(p, str | Path) and str(p) else None for p in products["image_path"]]
    products["image_path"] = pd.Series(paths, index=products.index, dtype=object)
    return products
