"""Which column of a catalog plays which role: id, label, text, categorical, numeric, image.

A catalog export can have any columns. ``CatalogSchema`` names them by role; it is given on the command line
(``--label COL --text A,B ...``), in a JSON schema file (``--schema FILE``), or inferred from the data
(``infer_schema``: AutoGluon-style rules, logged and saved so the user sees what was decided and can correct it).
The Kaggle fashion layout is the built-in ``FASHION`` schema, used when a catalog has its columns and nothing else
is said. The schema is saved with every model, so ``predict``, ``evaluate`` and the service read new products the
way the model was trained.

Inside the package a loaded catalog is a *products frame* whose role columns have fixed names
(``catalog.ID``, ``catalog.TARGET``, ``catalog.TITLE``: the product id, the label and the product's text, several
text columns combined by ``combine_text``); categorical and numeric columns keep their own names. Those fixed
names are reserved: a column of the user's catalog with one of them can only play that role.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the lean runtime and the service use this module's schema and text rules without pandas
    import pandas as pd

log = logging.getLogger(__name__)

ROLES = ("id", "label", "text", "categorical", "numeric", "image")
# The products frame's own column names for the roles (catalog.ID / TARGET / TITLE; catalog.py imports them).
ID_COLUMN = "id"
LABEL_COLUMN = "articleType"
TEXT_COLUMN = "productDisplayName"
RESERVED = {ID_COLUMN: "id", LABEL_COLUMN: "label", TEXT_COLUMN: "text"}
# Columns the loader adds to a products frame; a catalog column of that name would be overwritten.
DERIVED_COLUMNS = ("image_path", "image_sha1", "image_status", "image_width", "image_height", "image_mode")

# Beside the first text column (normally the title), each further text column adds at most this many words: a
# description of hundreds of words would otherwise outweigh the title in the TF-IDF vector, where the title
# carries most of the signal.
EXTRA_TEXT_WORDS = 48

_TAG = re.compile(r"<[^>]{0,500}>")
# What a browser never shows: a style sheet or script inside a description (Shopify's "Body (HTML)").
_HIDDEN = re.compile(r"<(script|style)\b[^>]{0,500}>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")
# A number as exports write them: an optional currency sign or code before it ("£", "US$", "EUR"), digits with
# thousands and decimal marks in either convention (``_decimal``), an optional unit, currency or "%" after it
# ("£3.42", "$1,299.00", "1.816,55 €", "12", "-0.5", "10.7 pounds", "10%"). A letter before the digits is no
# currency ("B0", "A4"): the value stays a string.
_CURRENCIES = ("usd", "eur", "gbp", "chf", "jpy", "cny", "inr", "cad", "aud", "nzd", "sek", "nok", "dkk", "pln",
               "brl", "mxn", "zar", "hkd", "sgd", "try", "krw")
_NUMBER = re.compile(
    r"^(?:[^\w\s.,+-]{1,3}|[a-z]{0,2}\$|(?:" + "|".join(_CURRENCIES) + r"))?\s?([+-]?[\d.,]*\d)"
    r"\s*(?:([a-z]+|[^\w\s.,+-]{1,3})\.?)?\s*$",
    re.IGNORECASE,
)
# A unit after the number ("10.7 pounds", "12.8 oz", "30 cm"): the number in that family's base unit (grams,
# centimetres, millilitres), so a column that mixes pounds and ounces reads as one scale. Any other word after the
# number ("5 new") leaves the value a string.
_UNITS = {
    **dict.fromkeys(("g", "gr", "gram", "grams"), 1.0),
    **dict.fromkeys(("kg", "kgs", "kilo", "kilos", "kilogram", "kilograms"), 1000.0),
    **dict.fromkeys(("mg", "milligram", "milligrams"), 0.001),
    **dict.fromkeys(("lb", "lbs", "pound", "pounds"), 453.59237),
    **dict.fromkeys(("oz", "ounce", "ounces"), 28.349523125),
    **dict.fromkeys(("mm", "millimetre", "millimetres", "millimeter", "millimeters"), 0.1),
    **dict.fromkeys(("cm", "centimetre", "centimetres", "centimeter", "centimeters"), 1.0),
    **dict.fromkeys(("m", "metre", "metres", "meter", "meters"), 100.0),
    **dict.fromkeys(("in", "inch", "inches"), 2.54),
    **dict.fromkeys(("ft", "foot", "feet"), 30.48),
    **dict.fromkeys(("ml", "millilitre", "millilitres", "milliliter", "milliliters"), 1.0),
    **dict.fromkeys(("l", "litre", "litres", "liter", "liters"), 1000.0),
    **dict.fromkeys(("w", "watt", "watts"), 1.0),
    **dict.fromkeys(("kw", "kilowatt", "kilowatts"), 1000.0),
    **dict.fromkeys(("v", "volt", "volts", "mah"), 1.0),
    **dict.fromkeys(("mb", "megabyte", "megabytes"), 0.001),
    **dict.fromkeys(("gb", "gigabyte", "gigabytes"), 1.0),
    **dict.fromkeys(("tb", "terabyte", "terabytes"), 1000.0),
    **dict.fromkeys(_CURRENCIES, 1.0),  # "12.99 EUR": a price
}


def _decimal(body: str) -> float:
    """The number in ``body`` (digits, "," and "."), whichever of the two marks a catalog uses for decimals:
    both marks, the last one is the decimal ("1,299.00", "1.816,55"); one "," before exactly three digits
    groups thousands ("1,299"), otherwise it is a decimal comma ("12,99"); "." is a decimal point unless it
    groups thousands more than once ("1.816.000"). NaN for anything else ("1,2,3")."""
    sign, body = (body[0], body[1:]) if body[0] in "+-" else ("", body)
    if "," in body and "." in body:
        point = "," if body.rfind(",") > body.rfind(".") else "."
        whole, frac = body.rsplit(point, 1)
        group = "." if point == "," else ","
        if not frac.isdigit() or not re.fullmatch(r"\d{1,3}(?:" + re.escape(group) + r"\d{3})*", whole):
            return math.nan
        return float(sign + whole.replace(group, "") + "." + frac)
    for mark in (",", "."):
        if mark in body:
            grouped = re.fullmatch(r"\d{1,3}(?:" + re.escape(mark) + r"\d{3})+", body)
            if grouped and (mark == "," or body.count(".") > 1):
                return float(sign + body.replace(mark, ""))
            whole, _, frac = body.partition(mark)
            if (whole.isdigit() or not whole) and frac.isdigit():
                return float(f"{sign}{whole or 0}.{frac}")
            return math.nan
    return float(sign + body) if body.isdigit() else math.nan

_ID_NAMES = {"id", "sku", "uniqid", "productid", "itemid", "asin", "articleid", "styleid", "productcode"}
_ID_ENDINGS = ("id", "sku", "nr", "no", "number", "code", "ean", "gtin", "upc")
_EMPTY_WORDS = {"n/a", "na", "null", "none", "nan", "-", "--", "#n/a", "<na>"}
_IMAGE_WORDS = ("image", "img", "photo", "picture")
_IMAGE_VALUE = re.compile(r"(?:^https?://)|(?:\.(?:jpe?g|png|webp|gif|bmp)(?:\?.*)?$)", re.IGNORECASE)
_TITLE_WORDS = ("title", "name")
MAX_CATEGORIES = 500  # a string column with more distinct values is read as text, not as categories


class SchemaError(ValueError):
    """A schema that does not fit the catalog; the message names the column and what to pass instead."""


@dataclass(frozen=True)
class CatalogSchema:
    """The roles of a catalog's columns.

    ``id``: the product id column (None: products are numbered by their row). ``label``: the category column
    (None for a catalog that is only predicted). ``text``: text columns, the title first (its words all count;
    each further column adds its first ``EXTRA_TEXT_WORDS`` words). ``categorical``/``numeric``: attribute columns.
    ``image``: the column holding each product's image file (a file name, or a path relative to or inside the images
    folder; None: ``<images folder>/<id>.jpg``), several separated by ``image_sep``. ``ignored``: columns the
    schema leaves out, with why (inference only; informative). ``levels``: several label columns that are the levels
    of a category tree, top first (``label`` is then the deepest); ``label_sep``: the separator of a label that is a
    path (None: detected, "none": the label is a flat class; taxonomy.py).
    """

    id: str | None = ID_COLUMN
    label: str | None = LABEL_COLUMN
    text: tuple[str, ...] = (TEXT_COLUMN,)
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    image: str | None = None
    image_sep: str | None = None
    name: str = "custom"
    ignored: dict[str, str] = field(default_factory=dict, compare=False)
    levels: tuple[str, ...] = ()
    label_sep: str | None = None

    def __post_init__(self) -> None:
        for name in ("text", "categorical", "numeric", "levels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.levels) == 1:
            object.__setattr__(self, "levels", ())
        if self.levels:
            # The deepest level is the label column for everything that reads one (required columns, messages).
            object.__setattr__(self, "label", self.levels[-1])
        seen: dict[str, str] = {}
        for role, col in self.columns():
            if col in seen and seen[col] != role:
                raise SchemaError(f"Column '{col}' is given two roles ({seen[col]} and {role}); give it one.")
            seen[col] = role
        for col, role in seen.items():
            own = RESERVED.get(col)
            if own is not None and own != role:
                raise SchemaError(
                    f"Column '{col}' is the {role} column, but DeepFusion uses the name '{col}' for the product's "
                    f"{own}. Rename the column in your catalog (or make it the {own} column)."
                )
            if col in DERIVED_COLUMNS:
                raise SchemaError(f"Column '{col}' has a name DeepFusion uses for its own image columns; rename it.")
        if self.image_sep == "":
            raise SchemaError("image_sep must be a character such as '|', or None.")

    def columns(self) -> list[tuple[str, str]]:
        """(role, column) for every column the schema uses."""
        pairs = [("id", self.id), *[("label", c) for c in self.levels or [self.label]], ("image", self.image)]
        out = [(role, col) for role, col in pairs if col]
        out += [(role, col) for role in ("text", "categorical", "numeric") for col in getattr(self, role)]
        return out

    @property
    def metadata(self) -> tuple[str, ...]:
        return (*self.categorical, *self.numeric)

    @property
    def is_fashion(self) -> bool:
        return self.name == "fashion"

    def with_roles(self, **roles: Any) -> CatalogSchema:
        """This schema with some roles given anew (as the command line's flags do): a column given a new role
        leaves its old one."""
        given = {k: v for k, v in roles.items() if v is not None}
        if not given:
            return self
        label = given.get("label")
        if label is not None and not isinstance(label, str):
            # Several label columns: the levels of a tree, the deepest the label.
            given["levels"] = tuple(label) if len(label) > 1 else ()
            given["label"] = label[-1]
        elif label is not None:
            given["levels"] = ()
        columns = {k: v for k, v in given.items() if k not in ("image_sep", "label_sep", "levels")}
        columns["label"] = [*given.get("levels", ()), given["label"]] if "label" in given else None
        columns = {k: v for k, v in columns.items() if v is not None}
        moved = {c for v in columns.values() for c in ([v] if isinstance(v, str) else v)}
        kept: dict[str, Any] = {}
        for role in ("text", "categorical", "numeric"):
            kept[role] = tuple(c for c in getattr(self, role) if c not in moved)
        for role in ("id", "label", "image"):
            kept[role] = None if getattr(self, role) in moved else getattr(self, role)
        if "label" in given:
            kept["levels"] = ()
        kept.update({k: tuple(v) if k in ("text", "categorical", "numeric") else v for k, v in given.items()})
        name = self.name if not (set(given) - {"image_sep", "label_sep"}) else "custom"
        return replace(self, **kept, name=name, ignored={})

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("text", "categorical", "numeric", "levels"):
            out[key] = list(out[key])
        if not self.levels:
            del out["levels"]  # a one-column label keeps the schema files it always had
        if self.label_sep is None:
            del out["label_sep"]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CatalogSchema:
        unknown = sorted(set(data) - {*ROLES, "image_sep", "name", "ignored", "levels", "label_sep"})
        if unknown:
            raise SchemaError(
                f"Unknown schema key(s) {', '.join(unknown)}; the keys are: {', '.join(ROLES)}, image_sep."
            )

        def one(key: str, default: str | None = None) -> str | None:
            value = data.get(key, default)
            if value is not None and not isinstance(value, str):
                raise SchemaError(f"Schema key '{key}' must be a column name (a string) or null, not {value!r}.")
            return value or None

        def many(key: str) -> tuple[str, ...]:
            value = data.get(key, [])
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise SchemaError(f"Schema key '{key}' must be a list of column names, not {value!r}.")
            return tuple(value)

        ignored = data.get("ignored") or {}
        return cls(
            id=one("id"),
            label=one("label"),
            text=many("text"),
            categorical=many("categorical"),
            numeric=many("numeric"),
            image=one("image"),
            image_sep=one("image_sep"),
            name=str(data.get("name") or "custom"),
            ignored={str(k): str(v) for k, v in ignored.items()} if isinstance(ignored, dict) else {},
            levels=many("levels"),
            label_sep=one("label_sep"),
        )

    def describe(self) -> str:
        """One line per role, for the log and the CLI."""
        image = "(images/<id>.jpg)"
        if self.image:
            image = self.image + (f" (several separated by {self.image_sep!r})" if self.image_sep else "")
        lines = [
            f"id: {self.id or '(row number)'}",
            f"label: {' > '.join(self.levels) + ' (levels of a tree)' if self.levels else self.label or '(none)'}",
            f"text: {', '.join(self.text) or '(none)'}",
            f"categorical: {', '.join(self.categorical) or '(none)'}",
            f"numeric: {', '.join(self.numeric) or '(none)'}",
            f"image: {image}",
        ]
        if self.ignored:
            lines.append("ignored: " + "; ".join(f"{c} ({why})" for c, why in self.ignored.items()))
        return "\n".join(lines)


FASHION = CatalogSchema(
    id=ID_COLUMN,
    label=LABEL_COLUMN,
    text=(TEXT_COLUMN,),
    categorical=("gender", "masterCategory", "subCategory", "baseColour", "season", "usage"),
    numeric=("year",),
    image=None,
    name="fashion",
)


def read_schema_file(path: str | Path) -> CatalogSchema:
    """A schema from a JSON file (the ``schema.json`` that ``train`` writes is one)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SchemaError(f"Cannot read the schema file {path}: {exc}.") from exc
    except json.JSONDecodeError as exc:
        raise SchemaError(f"The schema file {path} is not valid JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise SchemaError(f"The schema file {path} must hold a JSON object with the keys {', '.join(ROLES)}.")
    return CatalogSchema.from_json(data)


# ---------------------------------------------------------------------------------------------- values
def clean_text(value: object) -> str:
    """A text field as a person reads it: HTML tags and entities, style sheets and scripts, non-breaking spaces and
    replacement characters removed, white space collapsed. Missing values become ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value)
    if "<" in text or "&" in text:
        text = html.unescape(_TAG.sub(" ", _HIDDEN.sub(" ", text)))
    text = text.replace("\ufffd", " ").replace("\xa0", " ")
    return _SPACE.sub(" ", text).strip()


def combine_text(values: Sequence[object], extra_words: int = EXTRA_TEXT_WORDS) -> str | None:
    """A product's text from its text columns (title first): the first non-empty one whole, each later one's first
    ``extra_words`` words; None when every column is empty."""
    parts: list[str] = []
    for value in values:
        text = clean_text(value)
        if not text:
            continue
        parts.append(text if not parts else " ".join(text.split(" ")[:extra_words]))
    return " ".join(parts) or None


def parse_number(value: object) -> float:
    """A number as catalogs write one ("£3.42", "1,299", "12", "4.8 ounces": 136.08 grams, see ``_UNITS``); NaN when
    missing or not a number."""
    if value is None:
        return math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        return number if math.isfinite(number) else math.nan
    match = _NUMBER.match(str(value).strip())
    if not match or not any(ch.isdigit() for ch in match.group(1)):
        return math.nan
    unit = (match.group(2) or "").lower()
    if unit and unit not in _UNITS and unit.isalpha():  # a currency sign or "%" after the number is no unit
        return math.nan
    number = _decimal(match.group(1)) * _UNITS.get(unit, 1.0)
    return number if math.isfinite(number) else math.nan


# ---------------------------------------------------------------------------------------------- inference
def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _named_like_title(column: str) -> bool:
    """A column whose name says it is the title ("Item Title", "product_name"; not "title_id" or "name_code")."""
    name = _norm(column)
    return any(w in name for w in _TITLE_WORDS) and not name.endswith(("id", "code"))


def looks_like_fashion(columns: Iterable[str]) -> bool:
    cols = set(columns)
    return {ID_COLUMN, LABEL_COLUMN, TEXT_COLUMN} <= cols


# Several links in one cell (Amazon's exports: "https://a.jpg|https://b.jpg"): the character between them.
_LINK_SEP = re.compile(r"\S\s*([|;, ])\s*https?://", re.IGNORECASE)


def infer_image_sep(values: pd.Series) -> str | None:
    """The separator of several image links in one value, when the image column's values hold more than one link
    (the most common character between a link and the next); None otherwise."""
    found = values.head(1000).astype(str).str.findall(_LINK_SEP)
    counts = Counter(sep for seps in found for sep in seps)
    return counts.most_common(1)[0][0] if counts else None


def infer_schema(
    table: pd.DataFrame,
    label: str | None,
    *,
    id: str | None = None,
    image: str | None = None,
    fixed: Iterable[str] = (),
) -> CatalogSchema:
    """Roles for the columns of ``table`` (values as read, strings), AutoGluon-style: ``label`` as given; an id
    column by its name and unique values; an image column by its name and file-like or link values; then for each
    other column: numbers (at least 95% of the filled values parse as numbers, currency signs allowed) are numeric,
    long, mostly unique or very varied (over MAX_CATEGORIES values) strings are text (the shortest first: the
    title), the rest categorical; empty columns and
    columns of one value are ignored, and so is a column of single words nearly always different (a model number, a
    code); a column named like a title (title, name) is text whatever its values, and the title. ``fixed``:
    columns already given a role (left out)."""
    n = len(table)
    fixed = {c for c in fixed if c}
    ignored: dict[str, str] = {}
    if label is not None and label not in table.columns:
        raise SchemaError(f"No label column '{label}' in the catalog. Its columns: {', '.join(table.columns)}.")

    def filled(col: str) -> pd.Series:
        # What exports write for an empty cell ("N/A", "null", "-") is no value: a price column with some "N/A"
        # is still a number column.
        values = table[col].fillna("").astype(str).str.strip()
        return values[(values != "") & ~values.str.lower().isin(_EMPTY_WORDS)]

    taken = {label, image, id, *fixed} - {None}
    if id is None:
        # A column named as ids are ("sku", "product_id"), else one whose name ends like one ("Artikel-Nr.",
        # "Item No", "EAN code"), each only with a value for every row, all different.
        for named in (lambda c: _norm(c) in _ID_NAMES, lambda c: _norm(c).endswith(_ID_ENDINGS)):
            for col in table.columns:
                values = filled(col)
                if col not in taken and named(col) and len(values) == n and values.is_unique:
                    id = col
                    break
            if id is not None:
                break
    if image is None:
        for col in table.columns:
            if col in taken or col == id or not any(w in col.lower() for w in _IMAGE_WORDS):
                continue
            values = filled(col)
            if len(values) and values.head(200).str.contains(_IMAGE_VALUE).mean() >= 0.5:
                image = col
                break
    taken |= {id, image} - {None}
    text: list[tuple[float, str]] = []
    categorical: list[str] = []
    numeric: list[str] = []
    for col in table.columns:
        if col in taken:
            continue
        values = filled(col)
        if len(values) < max(1, 0.01 * n):
            ignored[col] = "empty" if not len(values) else "almost always empty"
            continue
        n_unique = values.nunique()
        if n_unique == 1:
            ignored[col] = "one value"
            continue
        if col in RESERVED or col in DERIVED_COLUMNS:
            ignored[col] = "reserved name"
            continue
        sample = values.head(5000)
        if sample.map(parse_number).notna().mean() >= 0.95:
            numeric.append(col)
            continue
        if sample.str.match(r"https?://").mean() >= 0.5:
            ignored[col] = "links"
            continue
        words = sample.str.count(" ") + 1
        if words.median() <= 1 and n_unique / len(values) > 0.9 and sample.str.len().median() <= 40:
            ignored[col] = "a code (one word, nearly always different)"
            continue
        # Many distinct values (a brand or manufacturer column): their words generalise across spellings and rare
        # values, which a one-hot column per value cannot.
        # A column named like a title ("Item Title", "product_name") is words even when its values repeat: a small
        # catalog with templated titles would otherwise lose its title to a one-hot column.
        if _named_like_title(col) or words.median() >= 4 or n_unique / len(values) > 0.5 or n_unique > MAX_CATEGORIES:
            text.append((float(sample.str.len().median()), col))
        else:
            categorical.append(col)
    # The title first (a column named like one, else the shortest text), then the longer texts.
    text_cols = tuple(col for _, col in sorted(
        text, key=lambda t: (not _named_like_title(t[1]), t[0])))
    return CatalogSchema(
        id=id,
        label=label,
        text=text_cols,
        categorical=tuple(categorical),
        numeric=tuple(numeric),
        image=image,
        image_sep=infer_image_sep(filled(image)) if image in table.columns else None,
        name="inferred",
        ignored=ignored,
    )


def resolve_schema(
    table: pd.DataFrame,
    *,
    schema: CatalogSchema | None = None,
    label: str | Sequence[str] | None = None,
    id: str | None = None,
    text: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    numeric: Sequence[str] | None = None,
    image: str | None = None,
    image_sep: str | None = None,
    label_sep: str | None = None,
    need_label: bool = True,
    kaggle_layout: bool = False,
) -> CatalogSchema:
    """The schema for ``table``: ``schema`` (a saved or given one) or, without it, the built-in fashion schema when
    the table has its columns (or ``kaggle_layout``: the table is the Kaggle set's styles.csv) and no column role is
    given, else the inferred one; then every role given here replaces the schema's. ``label``: one column, or
    several that are the levels of a category tree (top first); ``label_sep``: a path label's separator."""
    if label is not None and not isinstance(label, str):
        label = list(label) if len(label) > 1 else label[0]
    roles = {"label": label, "id": id, "text": text, "categorical": categorical, "numeric": numeric,
             "image": image, "image_sep": image_sep, "label_sep": label_sep}
    given = {k: v for k, v in roles.items() if v is not None}
    if schema is None:
        columns_given = set(given) - {"image_sep", "image", "label_sep"}
        fashion = looks_like_fashion(table.columns) or kaggle_layout
        # The fashion catalog's own tree (masterCategory > subCategory > articleType) keeps its other columns' roles.
        fashion_label = given.get("label") == LABEL_COLUMN or (
            isinstance(label, list) and set(label) <= {"masterCategory", "subCategory", LABEL_COLUMN}
        )
        if fashion and (not columns_given or fashion_label):
            schema = FASHION
        else:
            if label is None and need_label:
                hints = [c for c in table.columns if "categ" in c.lower() or "type" in c.lower()]
                hint = f" (perhaps {', '.join(repr(h) for h in hints[:3])})" if hints else ""
                raise SchemaError(
                    f"Which column holds the category? Pass --label COLUMN{hint}. "
                    f"Columns: {', '.join(table.columns)}."
                )
            fixed = [c for k in ("text", "categorical", "numeric") for c in (given.get(k) or [])]
            levels = label if isinstance(label, list) else []
            for col in levels:
                if col not in table.columns:
                    columns = ", ".join(table.columns)
                    raise SchemaError(f"No label column '{col}' in the catalog. Its columns: {columns}.")
            fixed += levels
            schema = infer_schema(table, levels[-1] if levels else label, id=id, image=image, fixed=fixed)
    schema = schema.with_roles(**given)
    if not schema.is_fashion:  # the fashion layout's missing columns are reported by the loader, as before
        check_columns(schema, table.columns, need_label=need_label)
    if schema.name != "fashion":
        log.info("catalog schema (%s):\n%s", schema.name, schema.describe())
    return schema


def check_columns(schema: CatalogSchema, columns: Iterable[str], *, need_label: bool) -> None:
    """Every column the schema names is in ``columns`` (the label only when ``need_label``)."""
    cols = set(columns)
    missing = [
        f"{col} ({role})" for role, col in schema.columns() if col not in cols and (role != "label" or need_label)
    ]
    if missing:
        raise SchemaError(
            f"The catalog lacks the column(s) {', '.join(missing)} that the schema names. Its columns: "
            f"{', '.join(sorted(cols))}. Add them (values may be empty) or give the right names "
            "(--label, --text, --categorical, --numeric, --image, --id or --schema)."
        )
    if need_label and not schema.label:
        raise SchemaError("The schema has no label column: pass --label COLUMN.")
    if not (schema.text or schema.metadata or schema.image is not None):
        raise SchemaError("The schema gives the model no input: name text, categorical, numeric or image columns.")
