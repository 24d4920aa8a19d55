"""The HTML of every report page (``eda.html``, ``report.html``, ``audit.html``) in one place: the page shell and
its one stylesheet, the one rule for numbers and percentages, tables, product thumbnails and charts as PNGs.

Pages are self-contained: charts and thumbnails are ``data:`` URIs, so a page opens offline and can be mailed.
Text that comes from a catalog (titles, labels, ids, file names) is escaped wherever it enters a page; HTML built
here from escaped parts is a ``Markup``, which ``table`` and ``card`` put in as it is. Product photos are decoded
through ``catalog.open_image_within_budget``, as the loader decodes them, so a page never decodes a huge or
hostile file in full.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from .catalog import ImageTooLarge, open_image_within_budget

log = logging.getLogger(__name__)

MISSING = "—"  # a figure that does not exist (no value, no test product, ...)
THUMB_SIZE = (90, 120)  # a product tile's photo (width, height); drawn at twice that for high-density screens
THUMB_MAX_PIXELS = 40_000_000  # a larger photo gets the placeholder instead of being decoded for a thumbnail
ACCENT = "#3b6ea5"  # bars and borders; the EDA's render test looks for this colour

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
.card .l{font-size:12.5px;color:#52606d}.card .ci{display:block;margin-top:2px}
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
img{max-width:100%;height:auto}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:18px;align-items:start}
.row{display:flex;gap:20px;flex-wrap:wrap;align-items:flex-start}.row img{min-width:0}
figure{margin:8px 0}
figure img{border:1px solid #eef1f4;border-radius:6px}
.note{color:#52606d;font-size:13px}
.ok{color:#2f7d4a}.warn-t{color:#a4501a}.flag{color:#a4501a;font-weight:600}
.ci{color:#52606d;font-size:11.5px;white-space:nowrap}
.warnings{background:#fff4e5;border-left:5px solid #d9822b}.warnings h2{color:#8a4b0f}.warnings li{margin:4px 0}
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
.mini{display:inline-block;text-align:center;margin:0 6px 2px 0;font-size:11px;color:#52606d;vertical-align:top}
.mini img{display:block;margin:0 auto;width:45px;height:60px;object-fit:contain;border:1px solid #e4e7eb;
border-radius:3px;background:#fff}.mini.large img{width:60px;height:80px}
.controls{margin:12px 0;font-size:14px}.controls select{margin:0 14px 0 4px}
.queue{display:grid;grid-template-columns:repeat(auto-fill,minmax(370px,1fr));gap:14px}
.item{background:#fff;border:1px solid #e4e7eb;border-radius:8px;padding:12px;display:flex;gap:12px}
.item img{width:120px;height:160px;object-fit:contain;background:#fafbfc;border-radius:4px;flex:none}
.item .t{font-weight:600;font-size:14px;margin:2px 0 6px}
.item table{margin:6px 0}.item td{padding:1px 8px 1px 0;border:0}
.cur{color:#a33b2b;font-weight:600}.sug{color:#2f7d4a;font-weight:600}.why{font-size:12px;color:#334e68}
.pill{display:inline-block;font-size:11px;border-radius:10px;padding:1px 8px;margin-right:4px;color:#fff}
.pill.label{background:#e45756}.pill.hierarchy{background:#4c78a8}.rank{font-size:12px;color:#7b8794}
"""


class Markup(str):
    """HTML built from escaped parts: ``table`` and ``card`` put it in as it is instead of escaping it."""


def escape(value: Any) -> str:
    """``value`` as text safe inside an element or a quoted attribute; None is empty."""
    return html.escape("" if value is None else str(value))


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value: Any) -> str:
    """A count with thousands separators (``12,345``); a fractional value with two decimals (``3.25``)."""
    if _is_missing(value):
        return MISSING
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def pct(value: float | None, digits: int = 1) -> str:
    """A share as a percentage with ``digits`` decimals. A share that is not exactly 0 or 1 never reads as
    ``0%`` or ``100%``: it reads ``<0.1%`` or ``>99.9%`` (at ``digits=1``) instead."""
    if _is_missing(value):
        return MISSING
    step = 10.0**-digits
    if 0 < 100 * value < step / 2:
        return f"<{step:.{digits}f}%"
    if 100 - step / 2 <= 100 * value < 100:
        return f">{100 - step:.{digits}f}%"
    return f"{100 * value:.{digits}f}%"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] = (), cls: str = "") -> str:
    """A table; the columns in ``numeric`` are right-aligned and their numbers formatted by ``number``. A cell
    is escaped unless it is ``Markup``."""
    num = set(numeric)
    head = "".join(f'<th class="n">{escape(h)}</th>' if i in num else f"<th>{escape(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            text = v if isinstance(v, Markup) else number(v) if i in num and isinstance(v, int | float) else escape(v)
            cells.append(f'<td class="n">{text}</td>' if i in num else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    attr = f' class="{escape(cls)}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def card(value: str, label: str, level: str = "", band: str = "") -> str:
    """A headline figure: ``value`` over its ``label``; ``level`` "warn" or "bad" colours it; ``band`` (Markup)
    goes under the value, e.g. its interval."""
    return (f'<div class="card {level}"><div class="v">{value if isinstance(value, Markup) else escape(value)}</div>'
            f'{band}<div class="l">{escape(label)}</div></div>')


# ------------------------------------------------------------------------------------------------- images


def figure(width: float, height: float, **subplots: Any) -> Any:
    """A matplotlib figure of ``width`` x ``height`` inches with constrained layout, outside pyplot (no global
    state, nothing to close)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained", **subplots)


def png_uri(fig: Any, *, dpi: float | None = None, tight: bool = False) -> str:
    """The figure as a PNG ``data:`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white", dpi=dpi or "figure", bbox_inches="tight" if tight else None)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def img(src: str, alt: str) -> str:
    """An embedded chart."""
    return f'<figure><img src="{src}" alt="{escape(alt)}"></figure>'


def placeholder_uri(label: str, size: tuple[int, int] = THUMB_SIZE) -> str:
    """A grey PNG of ``size`` with a red frame and ``label`` ("missing", "corrupt", ...) in place of a photo."""
    im = Image.new("RGB", size, (236, 238, 241))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, size[0] - 1, size[1] - 1), outline=(200, 85, 61), width=2)
    draw.text((size[0] // 2, size[1] // 2), label, fill=(163, 59, 43), anchor="mm")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail_uri(path: str | Path | None, status: str = "ok", size: tuple[int, int] = THUMB_SIZE) -> str:
    """The product photo as a JPEG ``data:`` URI of at most twice ``size`` (sharp on high-density screens); a
    labelled placeholder of ``size`` when it is missing, corrupt or over ``THUMB_MAX_PIXELS``. Never raises."""
    if status == "ok" and (path is None or not Path(path).is_file()):
        status = "missing"
    if status != "ok":
        return placeholder_uri(status if status in ("missing", "corrupt", "too large") else "no image", size)
    bound = (size[0] * 2, size[1] * 2)
    try:
        im = open_image_within_budget(Path(path).read_bytes(), THUMB_MAX_PIXELS, target_size=bound).convert("RGB")
    except ImageTooLarge:
        return placeholder_uri("too large", size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # A file that changed since loading, or was never readable: the page shows a placeholder.
        log.warning("thumbnail of %s not drawn (%s: %s)", path, type(exc).__name__, exc)
        return placeholder_uri("corrupt", size)
    im.thumbnail(bound)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def mini(src: str, pid: str, caption: str | None = None, title: str = "", *, large: bool = False) -> str:
    """A small thumbnail of product ``pid`` for a table cell, ``caption`` (default: the id) under it and
    ``title`` on hover; 45 x 60 pixels, ``large`` 60 x 80."""
    return (f'<span class="{"mini large" if large else "mini"}" title="{escape(title)}"><img src="{src}" '
            f'alt="product {escape(pid)}"><span>{escape(pid if caption is None else caption)}</span></span>')


# --------------------------------------------------------------------------------------------------- page


def page(title: str, heading: str, body: str, *, subtitle: Sequence[str] = (),
         nav: Sequence[tuple[str, str]] = (), script: str = "") -> str:
    """A whole page: the stylesheet, a header with ``heading``, ``subtitle`` lines (Markup or text) and ``nav``
    links (anchor, text), then ``body`` inside ``<main>``."""
    subs = "".join(f'<div class="sub">{s if isinstance(s, Markup) else escape(s)}</div>' for s in subtitle)
    links = "".join(f'<a href="#{escape(a)}">{escape(t)}</a>' for a, t in nav)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{CSS}</style>{f"<script>{script}</script>" if script else ""}</head>
<body><header><h1>{escape(heading)}</h1>{subs}{f"<nav>{links}</nav>" if links else ""}</header>
<main>{body}</main></body></html>
"""
