"""html_page.py: catalog text is escaped wherever it enters a page, one rule for percentages, thumbnails that never
raise and never decode an oversized image."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import make_catalog
from PIL import Image

from deepfusion.eda import write_eda_report
from deepfusion.html_page import Markup, card, mini, page, pct, table, thumbnail_uri

HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)>\" ' &amp;"


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    tags.close()
    return tags


def test_text_is_escaped_and_markup_is_not() -> None:
    html = table(["a<b>", "n"], [[HOSTILE, 1234], [Markup("<b>bold</b>"), 0.5]], numeric=[1])
    tags = parse(html)
    assert [t for t, _ in tags.tags].count("script") == 0 and not any(t == "img" for t, _ in tags.tags)
    assert HOSTILE in "".join(tags.text)  # shown to the reader as it is written in the catalog
    assert ("b", {}) in tags.tags  # Markup kept as HTML
    assert '<td class="n">1,234</td>' in html and '<td class="n">0.50</td>' in html
    assert "script" not in [t for t, _ in parse(card(HOSTILE, HOSTILE)).tags]


def test_attributes_hold_hostile_text_whole() -> None:
    src = "data:image/png;base64,AAAA"
    tags = parse(mini(src, HOSTILE, title=HOSTILE))
    attrs = dict(tags.tags)["img"]
    assert attrs["alt"] == f"product {HOSTILE}" and attrs["src"] == src
    assert tags.tags[0] == ("span", {"class": "mini", "title": HOSTILE})
    assert all(not name.startswith("on") for _, a in tags.tags for name in a)
    whole = parse(page(HOSTILE, HOSTILE, "<p>body</p>", subtitle=[HOSTILE], nav=[("a\" onclick=\"x", HOSTILE)]))
    assert [t for t, _ in whole.tags].count("script") == 0
    assert all(not name.startswith("on") for _, a in whole.tags for name in a)


def test_one_rule_for_percentages() -> None:
    assert pct(0.5) == "50.0%" and pct(0.98765, 2) == "98.77%" and pct(0.87, 0) == "87%"
    assert pct(0.0) == "0.0%" and pct(1.0) == "100.0%"
    # A share that is not exactly 0 or 1 never reads as 0% or 100%.
    assert pct(0.0001) == "<0.1%" and pct(0.9999) == ">99.9%" and pct(0.00001, 2) == "<0.01%"
    assert pct(None) == pct(float("nan")) == "—"


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with no pixel data behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def decoded(uri: str) -> Image.Image:
    data = uri.split(",", 1)[1]
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def test_thumbnails_never_raise(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (900, 1200), (200, 30, 30)).save(photo)
    uri = thumbnail_uri(photo, size=(90, 120))
    assert uri.startswith("data:image/jpeg;base64,") and decoded(uri).size == (180, 240)
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header(60_000, 60_000))  # 3.6 billion pixels: refused from its header
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    for path, status in ((huge, "ok"), (junk, "ok"), (tmp_path / "absent.jpg", "ok"), (None, "ok"),
                         (photo, "corrupt")):
        uri = thumbnail_uri(path, status, size=(45, 60))
        assert uri.startswith("data:image/png;base64,") and decoded(uri).size == (45, 60), path


@pytest.mark.parametrize("where", ["productDisplayName", "articleType"])
def test_a_hostile_catalog_cannot_inject_into_the_eda_page(tmp_path: Path, where: str) -> None:
    data = make_catalog(tmp_path / "c", n_per_class=12, messy=False)
    evil = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    row = {"productDisplayName": f"1101,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,{evil} Tee",
           "articleType": f"1101,Men,Apparel,Topwear,{evil},Red,Summer,2012,Casual,A Tee"}[where]
    styles = data / "styles.csv"
    styles.write_text(styles.read_text() + row + "\n")
    write_eda_report(data, tmp_path / "eda", progress=False)
    tags = parse((tmp_path / "eda" / "eda.html").read_text(encoding="utf-8"))
    assert "script" not in [t for t, _ in tags.tags]
    assert all(not name.startswith("on") for _, a in tags.tags for name in a)
    assert all((a.get("src") or "data:").startswith("data:") for t, a in tags.tags if t == "img")
    assert any(evil in text for text in tags.text)  # the reader still sees what the catalog says
