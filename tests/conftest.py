"""Tiny catalogs built by the tests themselves, in the Kaggle layout, including the messy cases."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

CLASSES = {
    # articleType: (gender, masterCategory, subCategory, colour used in the picture, shape)
    "Tshirts": ("Men", "Apparel", "Topwear", (200, 30, 30), "rect"),
    "Jeans": ("Men", "Apparel", "Bottomwear", (30, 30, 200), "tall"),
    "Heels": ("Women", "Footwear", "Shoes", (30, 160, 30), "ellipse"),
    "Watches": ("Unisex", "Accessories", "Watches", (200, 200, 30), "circle"),
}
COLOURS = ["Black", "White", "Blue", "Red"]
HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
REAL_DATA = Path(
    os.environ.get(
        "DEEPFUSION_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-product-images-small"
    )
)


def draw_product(article: str, rng: random.Random, mode: str = "RGB", mark: int = 0) -> Image.Image:
    colour, shape = CLASSES[article][3], CLASSES[article][4]
    im = Image.new("RGB", (60, 80), (245, 245, 245))
    d = ImageDraw.Draw(im)
    jitter = rng.randint(-4, 4)
    box = {"rect": (10, 15, 50, 60), "tall": (20, 5, 40, 75), "ellipse": (5, 40, 55, 70), "circle": (12, 22, 48, 58)}[
        shape
    ]
    box = tuple(v + jitter for v in box)
    (d.ellipse if shape in ("ellipse", "circle") else d.rectangle)(box, fill=colour)
    d.text((2, 68), str(mark), fill=(90, 90, 90))  # makes each product's photo unique
    return im.convert(mode)


def make_catalog(root: Path, n_per_class: int = 12, seed: int = 0, messy: bool = True) -> Path:
    """Write styles.csv + images/ under root. With ``messy``, adds the real-world problems."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    pid = 1000
    for article, (gender, master, sub, _, _) in CLASSES.items():
        for i in range(n_per_class):
            pid += 1
            colour = COLOURS[i % len(COLOURS)]
            title = f"Brand{i % 3} {gender} {colour} {article.rstrip('s')} {i}"
            lines.append(f"{pid},{gender},{master},{sub},{article},{colour},Summer,{2010 + i % 5},Casual,{title}")
            draw_product(article, rng, "L" if i == 0 else "RGB", mark=pid).save(
                root / "images" / f"{pid}.jpg", quality=90
            )
    if messy:
        # Unquoted commas in the title (as in the real Kaggle file): must be recovered, not dropped.
        lines.append("5001,Men,Apparel,Topwear,Tshirts,White,Summer,2011,Casual,Myntra Men's Yes, its all about me Tee")
        draw_product("Tshirts", rng).save(root / "images" / "5001.jpg")
        lines.append("5002,Women,Footwear,Shoes,Heels,Black,Fall,2012,Casual,Catwalk Women Black, Gold and Red Heels")
        draw_product("Heels", rng).save(root / "images" / "5002.jpg")
        # Missing image.
        lines.append("5003,Men,Apparel,Bottomwear,Jeans,Blue,Summer,2012,Casual,Levis Men Blue Jeans")
        # Corrupt image (not an image at all) and a truncated JPEG.
        lines.append("5004,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Puma Men Red Tshirt")
        (root / "images" / "5004.jpg").write_bytes(b"this is not a jpeg")
        lines.append("5005,Unisex,Accessories,Watches,Watches,Black,Winter,2013,Casual,Titan Unisex Black Watch")
        good = root / "images" / "5005.jpg"
        draw_product("Watches", rng).save(good, quality=95)
        good.write_bytes(good.read_bytes()[:200])
        # Duplicate id, empty target, non-numeric year, missing values.
        lines.append("1001,Men,Apparel,Topwear,Tshirts,Red,Summer,2011,Casual,Duplicate id row")
        lines.append("5006,Men,Apparel,Topwear,,Red,Summer,2011,Casual,No target here")
        lines.append("5007,Women,Footwear,Shoes,Heels,Black,,twenty-twelve,,Mochi Women Black Heels")
        draw_product("Heels", rng).save(root / "images" / "5007.jpg")
        # Too few fields: cannot be recovered.
        lines.append("5008,Men,Apparel")
    (root / "styles.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    return make_catalog(tmp_path / "catalog")


@pytest.fixture
def clean_catalog_dir(tmp_path: Path) -> Path:
    return make_catalog(tmp_path / "clean", messy=False, seed=1)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("DEEPFUSION_CACHE", str(path))
    return path


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "styles.csv").is_file():
        pytest.skip(
            f"real catalog not found at {REAL_DATA}; set DEEPFUSION_DATA to the folder holding "
            "styles.csv and images/ of Kaggle's fashion-product-images-small to run this test"
        )
    return REAL_DATA
