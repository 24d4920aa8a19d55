"""The EDA report: every figure in eda.json is checked against counts computed here, independently of the
loader, straight from styles.csv (pandas) and the image files (PIL, hashlib); the page is rendered in headless
Chromium when it is installed (``apt-get install -y chromium``)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from deepfusion.eda import build_eda, write_eda_report

CATEGORICAL = ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"]
PLACEHOLDERS = {"na", "n/a", "nan", "null", "none", "-", "?", "unknown"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROBE = ("<script>window.addEventListener('load', () => { const i = [...document.images];"
         " document.body.dataset.images = i.length;"
         " document.body.dataset.decoded = i.filter(x => x.complete && x.naturalWidth > 0).length;"
         " });</script>")


# --------------------------------------------------------------------------------------- independent counts


def read_raw(folder: Path) -> tuple[pd.DataFrame, list[str], int]:
    """styles.csv with pandas (not the loader): rows whose unquoted commas spill over are rejoined by an
    on_bad_lines callback, rows with too few fields are counted as malformed."""
    path = folder / "styles.csv"
    n_fields = len(path.read_text(encoding="utf-8").splitlines()[0].split(","))
    recovered: list[str] = []

    def rejoin(fields: list[str]) -> list[str]:
        recovered.append(fields[0].strip())
        return fields[: n_fields - 1] + [",".join(fields[n_fields - 1 :])]

    table = pd.read_csv(path, dtype=str, keep_default_na=False, on_bad_lines=rejoin, engine="python")
    malformed = table.isna().any(axis=1)
    return table[~malformed].reset_index(drop=True), recovered, int(malformed.sum())


def image_facts(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"status": "missing"}
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return {"status": "ok", "sha1": hashlib.sha1(data).hexdigest(), "mode": im.mode,
                    "size": f"{im.width}x{im.height}"}
    except Exception:
        return {"status": "corrupt"}


def sorted_counts(values: pd.Series) -> dict[str, int]:
    counter = Counter(values)
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def hierarchy_breaks(table: pd.DataFrame) -> tuple[dict[str, int], set[str]]:
    """hierarchy.py's definition written out again: in masterCategory > subCategory > articleType, a product
    breaks the tree at the first category (subCategory, then articleType) that sits under a parent other than its
    most common one, when that most common one holds at least 90% of the category's products."""
    rows = [(pid, (m, s, a)) for pid, m, s, a in zip(table["id"], table["masterCategory"], table["subCategory"],
                                                      table["articleType"], strict=True) if m and s and a]
    under: dict[int, dict[str, Counter[tuple[str, ...]]]] = {1: {}, 2: {}}
    for _, path in rows:
        for k in (1, 2):
            under[k].setdefault(path[k], Counter())[path[:k]] += 1
    counts, ids = {"subCategory": 0, "articleType": 0}, set()
    for pid, path in rows:
        for k, level in ((1, "subCategory"), (2, "articleType")):
            parents = under[k][path[k]]
            usual = sorted(parents.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
            if path[:k] != usual and parents[usual] >= 0.9 * sum(parents.values()):
                counts[level] += 1
                ids.add(pid)
                break
    return counts, ids


def independent(folder: Path) -> dict[str, Any]:
    raw, recovered, malformed = read_raw(folder)
    table = raw.apply(lambda col: col.str.strip())
    n_rows_in_file = len(raw) + malformed
    table = table[table["id"] != ""]
    dup = table["id"].duplicated()
    n_dup_ids = int(dup.sum())
    table = table[~dup]
    table = table[table["articleType"] != ""].reset_index(drop=True)
    year = pd.to_numeric(table["year"], errors="coerce")
    missing = {c: int((table[c] == "").sum()) for c in table.columns}
    missing["year"] = int(year.isna().sum())
    missing["id"] = 0

    with ThreadPoolExecutor(2) as pool:
        facts = list(pool.map(image_facts, [folder / "images" / f"{pid}.jpg" for pid in table["id"]]))
    status = Counter(f["status"] for f in facts)
    ok = [f for f in facts if f["status"] == "ok"]
    modes = Counter(f["mode"] for f in ok)
    sha_groups = Counter(f["sha1"] for f in ok)
    sha_dups = {k: v for k, v in sha_groups.items() if v > 1}
    sha_labels: dict[str, set[str]] = {}
    for f, cls in zip(facts, table["articleType"], strict=True):
        if f["status"] == "ok" and f["sha1"] in sha_dups:
            sha_labels.setdefault(f["sha1"], set()).add(cls)
    titles = Counter(t for t in table["productDisplayName"] if t)
    title_dups = {k: v for k, v in titles.items() if v > 1}

    classes = sorted_counts(table["articleType"])
    values = list(classes.values())
    total = sum(values)
    hierarchy, breaking = hierarchy_breaks(table)

    raw_values = {c: raw[c].astype(str) for c in raw.columns}
    case_groups = 0
    for col in CATEGORICAL:
        stripped = {v.strip() for v in raw_values[col] if v.strip()}
        lowered = Counter(v.lower() for v in stripped)
        case_groups += sum(1 for n in lowered.values() if n > 1)
    distinct_titles = {t.strip() for t in raw_values["productDisplayName"] if t.strip()}
    title_case = sum(1 for n in Counter(t.lower() for t in distinct_titles).values() if n > 1)
    placeholders = {c: sum(1 for v in raw_values[c] if v.strip().lower() in PLACEHOLDERS)
                    for c in raw.columns if c not in ("id", "year")}
    years = year.dropna()
    return {
        "rows_in_file": n_rows_in_file,
        "rows": len(table),
        "n_columns": len(raw.columns),
        "missing": missing,
        "duplicate_ids": n_dup_ids,
        "recovered": recovered,
        "malformed": malformed,
        "classes": classes,
        "n_classes": len(classes),
        "imbalance": round(values[0] / values[-1], 3),
        "under_10": sum(1 for v in values if v < 10),
        "under_100": sum(1 for v in values if v < 100),
        "top_5": round(sum(values[:5]) / total, 6),
        "top_10": round(sum(values[:10]) / total, 6),
        "metadata": {c: sorted_counts(table.loc[table[c] != "", c])
                     for c in CATEGORICAL if c != "articleType"},
        "years": {str(int(y)): int(n) for y, n in sorted(Counter(years).items())},
        "year_min": float(years.min()),
        "year_max": float(years.max()),
        "images": {k: status.get(k, 0) for k in ("ok", "missing", "corrupt")},
        "modes": dict(modes),
        "sizes": dict(Counter(f["size"] for f in ok)),
        "grayscale": modes.get("L", 0) + modes.get("LA", 0) + modes.get("1", 0),
        "dup_image_groups": len(sha_dups),
        "dup_image_products": sum(sha_dups.values()),
        "dup_image_conflicts": sum(1 for labels in sha_labels.values() if len(labels) > 1),
        "dup_title_groups": len(title_dups),
        "dup_title_products": sum(title_dups.values()),
        "hierarchy": hierarchy,
        "hierarchy_rows": len(breaking),
        "trailing": {c: int((v != v.str.rstrip()).sum()) for c, v in raw_values.items()},
        "leading": {c: int((v != v.str.lstrip()).sum()) for c, v in raw_values.items()},
        "case_groups": case_groups,
        "title_case_groups": title_case,
        "placeholders": placeholders,
    }


def assert_matches(eda: dict[str, Any], want: dict[str, Any]) -> None:
    ov, q, tg, md, im = eda["overview"], eda["quality"], eda["target"], eda["metadata"], eda["images"]
    fmt = q["formatting"]
    assert ov["rows_in_file"] == want["rows_in_file"]
    assert ov["rows"] == want["rows"] == tg["n_labelled"]
    assert ov["n_columns"] == want["n_columns"]
    assert ov["missing"] == want["missing"]
    assert ov["duplicate_ids"]["rows_dropped"] == want["duplicate_ids"]
    assert fmt["recovered_comma_rows"] == len(want["recovered"])
    assert fmt["recovered_comma_ids"] == want["recovered"][:50]
    assert fmt["malformed_rows"] == want["malformed"]
    assert tg["counts"] == want["classes"]
    assert tg["n_classes"] == want["n_classes"] == q["unique_values"]["articleType"]["unique"]
    assert tg["imbalance_ratio"] == want["imbalance"]
    assert tg["classes_under_10"] == want["under_10"]
    assert tg["classes_under_100"] == want["under_100"]
    assert tg["top_k_coverage"]["5"] == want["top_5"]
    assert tg["top_k_coverage"]["10"] == want["top_10"]
    for col, counts in want["metadata"].items():
        assert md[col]["counts"] == counts, col
        assert q["unique_values"][col]["unique"] == len(counts), col
    assert md["year"]["counts"] == want["years"]
    assert q["numeric"]["year"]["min"] == want["year_min"]
    assert q["numeric"]["year"]["max"] == want["year_max"]
    assert {k: im["status"][k] for k in ("ok", "missing", "corrupt")} == want["images"]
    assert ov["images"]["with_image"] == want["images"]["ok"]
    assert ov["images"]["without_image"] == want["images"]["missing"] + want["images"]["corrupt"]
    assert im["modes"] == want["modes"]
    assert im["sizes"] == want["sizes"]
    assert im["grayscale"] == want["grayscale"]
    assert im["grayscale_share"] == round(want["grayscale"] / want["images"]["ok"], 6)
    di, dt = ov["duplicate_images"], ov["duplicate_titles"]
    assert (di["groups"], di["products"]) == (want["dup_image_groups"], want["dup_image_products"])
    assert di["groups_with_conflicting_labels"] == want["dup_image_conflicts"]
    assert (dt["groups"], dt["products"]) == (want["dup_title_groups"], want["dup_title_products"])
    hb = eda["relationships"]["hierarchy"]
    assert {c: hb["breaks"][c]["rows"] for c in want["hierarchy"]} == want["hierarchy"]
    assert hb["rows_breaking"] == want["hierarchy_rows"]
    assert fmt["trailing_spaces"] == want["trailing"]
    assert fmt["leading_spaces"] == want["leading"]
    assert fmt["case_variant_groups"] == want["case_groups"]
    assert fmt["title_case_variants"]["groups"] == want["title_case_groups"]
    assert fmt["placeholders"] == want["placeholders"]
    # the gender relationship table adds up to the gender distribution
    by_gender: Counter[str] = Counter()
    for row in eda["relationships"]["gender"].values():
        by_gender.update(row)
    assert dict(by_gender) == want["metadata"]["gender"]


# --------------------------------------------------------------------------------------------- rendering


def find_chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def render(html_path: Path, work: Path, n_charts_min: int) -> Path:
    """Screenshot the page and check, in Chromium's own DOM, that every <img> loaded from a data: URI."""
    exe = find_chromium()
    if exe is None:
        pytest.skip("Chromium not installed: run `apt-get update && apt-get install -y chromium` "
                    "(Debian) to run the headless render test")
    work.mkdir(parents=True, exist_ok=True)
    shot = work / "eda.png"
    subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={work / 'profile1'}", f"--screenshot={shot}",
                    "--window-size=1280,4000", html_path.resolve().as_uri()],
                   capture_output=True, timeout=180)
    assert shot.is_file(), "Chromium wrote no screenshot"
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        assert rgb.size == (1280, 4000)
        colours = rgb.getcolors(maxcolors=1 << 22) or []
        assert len(colours) > 1000, f"screenshot looks blank ({len(colours)} colours)"
        # the charts' bar colour (#3b6ea5) covers a large area only when the charts are drawn (the page
        # itself uses it for thin borders: about 3,500 pixels without charts, over 90,000 with them)
        bars = sum(n for n, c in colours if c == (0x3B, 0x6E, 0xA5))
        assert bars > 20_000, f"charts not visible in the screenshot ({bars} bar-coloured pixels)"

    page = html_path.read_text(encoding="utf-8")
    probe = work / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={work / 'profile2'}", "--dump-dom",
                          probe.resolve().as_uri()], capture_output=True, text=True, timeout=180).stdout
    body = re.search(r'<body data-images="(\d+)" data-decoded="(\d+)"', dom)
    assert body, "the page did not finish loading in Chromium"
    sources = re.findall(r'<img src="([^"]+)"', dom)
    assert int(body.group(1)) == len(sources) == int(body.group(2)), "some images did not load in Chromium"
    charts = 0
    for src in sources:
        assert src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")), src[:40]
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.load()
            assert im.width > 20 and im.height > 20
            charts += im.width >= 300  # charts are wide, product thumbnails are small
    assert charts >= n_charts_min, f"{charts} charts on the page, expected at least {n_charts_min}"
    assert "http://" not in page and "https://" not in page, "the page must open offline"
    return shot


# ------------------------------------------------------------------------------------------------- tests


def add_formatting_problems(folder: Path) -> None:
    """Trailing spaces, inconsistent casing, a placeholder, a hierarchy break and duplicated images."""
    lines = [
        "5101,men,Apparel,Topwear,Tshirts ,Red ,Summer,2012,NA,Odd  Red Tshirt ",
        "5102,Men,Apparel,Bottomwear,Tshirts,Blue,Summer,1900,Casual,Levis men blue jeans",
        "5103,Men,Apparel,Bottomwear,Jeans,Blue,Summer,2012,Casual,Levis Men Blue Jeans",
    ]
    with (folder / "styles.csv").open("a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    images = folder / "images"
    shutil.copy(images / "1014.jpg", images / "5101.jpg")  # a Jeans photo on a Tshirts row: labels conflict
    shutil.copy(images / "1002.jpg", images / "5102.jpg")
    shutil.copy(images / "1015.jpg", images / "5103.jpg")


def test_eda_figures_match_independent_counts(catalog_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eda"
    eda = write_eda_report(catalog_dir, out, progress=False)
    assert capsys.readouterr().out == ""  # library code logs, it does not print
    assert json.loads((out / "eda.json").read_text(encoding="utf-8")) == eda
    want = independent(catalog_dir)
    assert_matches(eda, want)
    # the fixture's known problems, spelled out
    assert want["rows"] == 54 and want["duplicate_ids"] == 1 and want["malformed"] == 1
    assert eda["images"]["status"]["missing"] == 1 and eda["images"]["status"]["corrupt"] == 2
    assert eda["images"]["grayscale"] == 4
    assert eda["quality"]["formatting"]["recovered_comma_ids"] == ["5001", "5002"]
    assert eda["quality"]["numeric"]["year"]["non_numeric"] == 1
    assert eda["overview"]["rejects"]["dropped"] == 3
    rejects = pd.read_csv(out / "rejects.csv", dtype=str)
    assert {"5006", "5008", "1001"} <= set(rejects["id"])
    page = (out / "eda.html").read_text(encoding="utf-8")
    card = r'<div class="v">([^<]*)</div><div class="l">([^<]*)<'
    cards = {label: value for value, label in re.findall(card, page)}
    assert cards["products loaded"] == f"{want['rows']:,}"
    assert cards["readable images"] == f"{want['images']['ok']:,}"
    assert cards["products without a usable image"] == "3"
    assert cards["rows dropped (rejects.csv)"] == "3"
    assert cards["articleType classes"] == "4"
    assert cards["rows with unquoted commas recovered"] == "2"
    assert f"<p>{want['rows_in_file']} data rows" in page
    for heading in ("1. Overview", "2. Quality checks", "3. Target distribution", "4. Metadata distributions",
                    "5. Relationships", "6. Image validation", "7. Sample inspection"):
        assert heading in page


def test_formatting_problems_are_found_on_raw_strings(catalog_dir: Path, tmp_path: Path) -> None:
    add_formatting_problems(catalog_dir)
    eda = write_eda_report(catalog_dir, tmp_path / "eda", progress=False)
    want = independent(catalog_dir)
    assert_matches(eda, want)
    fmt = eda["quality"]["formatting"]
    assert fmt["trailing_spaces"]["articleType"] == 1 and fmt["trailing_spaces"]["baseColour"] == 1
    assert fmt["trailing_spaces"]["productDisplayName"] == 1
    assert fmt["repeated_spaces"]["productDisplayName"] == 1
    assert fmt["case_variants"]["gender"] == [{"variants": {"Men": 31, "men": 1}}]
    assert fmt["title_case_variants"]["groups"] == 1
    assert fmt["placeholders"]["usage"] == 1
    hb = eda["relationships"]["hierarchy"]
    assert hb["breaks"]["articleType"]["groups"][0] == {
        "node": "Tshirts", "expected": "Apparel > Topwear", "found": "Apparel > Bottomwear", "rows": 1, "n_node": 16,
        "ids": ["5102"]}
    assert hb["rows_breaking"] == 1
    assert eda["quality"]["numeric"]["year"]["implausible"] == 1
    di = eda["overview"]["duplicate_images"]
    assert di["groups"] == 3 and di["groups_with_conflicting_labels"] == 1
    assert di["conflicting_examples"][0]["ids"] == ["1014", "5101"]
    odd = {o["id"]: o["why"] for o in eda["samples"]["odd"]}
    assert "5102" in odd and odd["5101"].startswith("same image bytes")


def test_hierarchy_breaks_are_shown_with_their_images(catalog_dir: Path, tmp_path: Path) -> None:
    add_formatting_problems(catalog_dir)
    write_eda_report(catalog_dir, tmp_path / "eda", progress=False)
    page = (tmp_path / "eda" / "eda.html").read_text(encoding="utf-8")
    hierarchy = page.split("Category hierarchy", 1)[1].split("</table>", 1)[0]
    # 5102, a Tshirts row under Bottomwear, appears as its photo with its id, not only as an id.
    thumb = re.search(r'<span class="mini" title="([^"]*)"><img src="data:image/jpeg;base64,([^"]+)" '
                      r'alt="product 5102"><span>5102</span>', hierarchy)
    assert thumb, "the hierarchy break is listed without its image"
    assert thumb.group(1) == "Levis men blue jeans"  # its title on hover
    with Image.open(io.BytesIO(base64.b64decode(thumb.group(2)))) as im:
        assert im.width > 20 and im.height > 20


def test_target_chart_stays_readable_with_many_classes(tmp_path: Path) -> None:
    """A catalog with as many classes as the real one (143): the largest are drawn with room for their
    names, and every class is in the table beside the chart."""
    folder = tmp_path / "many"
    (folder / "images").mkdir(parents=True)
    names = [f"Class number {i}" for i in range(143)]
    lines = ["id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"]
    pid = 0
    for i, name in enumerate(names):
        for _ in range(1 + (143 - i) // 10):
            pid += 1
            lines.append(f"{pid},Men,Apparel,Topwear,{name},Black,Summer,2012,Casual,{name} {pid}")
    (folder / "styles.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_eda_report(folder, tmp_path / "eda", progress=False)
    page = (tmp_path / "eda" / "eda.html").read_text(encoding="utf-8")
    target = page.split('<section id="target">', 1)[1].split("</section>", 1)[0]
    for name in names:
        assert f"<td>{name}</td>" in target, name
    chart = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="the largest articleType classes and their',
                      target)
    assert chart, "no chart of the largest classes"
    with Image.open(io.BytesIO(base64.b64decode(chart.group(1)))) as im:
        # 40 labelled bars, each with at least 20 pixels of height for its name, in an image narrow enough
        # for its half of the page, where it is not scaled down.
        assert im.height >= 40 * 20 and im.width <= 600, im.size


def test_build_eda_is_json_serialisable(catalog_dir: Path) -> None:
    from deepfusion import load_catalog

    eda = build_eda(load_catalog(catalog_dir, progress=False), progress=False)
    json.dumps(eda, allow_nan=False)
    assert set(eda) == {"meta", "overview", "quality", "target", "metadata", "relationships", "images",
                        "samples"}


def test_eda_html_renders_in_headless_chromium(catalog_dir: Path, tmp_path: Path) -> None:
    write_eda_report(catalog_dir, tmp_path / "eda", progress=False)
    render(tmp_path / "eda" / "eda.html", tmp_path / "render", n_charts_min=14)


@pytest.mark.realdata
def test_eda_on_real_catalog(real_data: Path, tmp_path: Path) -> None:
    # No time limit here: a shared CI machine's load decides the wall time (speed belongs in the benchmark).
    eda = write_eda_report(real_data, tmp_path / "eda", progress=False)
    want = independent(real_data)
    assert want["rows"] == 39_954
    assert_matches(eda, want)
    if find_chromium():
        render(tmp_path / "eda" / "eda.html", tmp_path / "render", n_charts_min=14)
