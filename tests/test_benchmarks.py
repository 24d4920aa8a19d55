"""The benchmark's command line and render step: RESULTS.md comes from the latest results file of each section."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _python(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def _write(folder: Path, name: str, **figures: object) -> None:
    (folder / name).write_text(json.dumps({"section": name.rsplit("-", 1)[1][:-5], **figures}))


def _model(accuracy: float, date: str) -> dict:
    return {"accuracy": accuracy, "macro_f1": 0.5, "weighted_f1": 0.5, "rare_macro_f1": 0.4, "train_accuracy": 0.9,
            "train_accuracy_ceiling": None, "ece": 0.01, "fit_seconds": 3.0, "epochs_run": 8, "best_epoch": 8,
            "peak_rss_mb": 700.0, "date": date, "modalities": ["metadata"], "preset": "small", "options": {}}


def _catalog_row(catalog: str, accuracy: float) -> dict:
    return {"catalog": catalog, "level": 1, "classes": 5, "test": 100, "fusion_accuracy": accuracy,
            "fusion_macro_f1": 0.5, "svm_accuracy": 0.5, "svm_macro_f1": 0.5}


def _render(results: Path) -> str:
    """RESULTS.md rendered from the results files in ``results`` (written beside them), as text."""
    out = results / "RESULTS.md"
    result = _python(str(BENCH / "render.py"), "--results", str(results), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out.read_text()


def test_run_help() -> None:
    result = _python(str(BENCH / "run.py"), "--help")
    assert result.returncode == 0, result.stderr
    assert "--sections" in result.stdout and "--render" in result.stdout


def test_render_takes_the_latest_file_of_each_section(tmp_path: Path) -> None:
    rates = {"warm": 1.0, "cold": 1.0, "floor": 1.0, "test_products": 10}
    _write(tmp_path, "2026-11-01T1000-aaaaaaa-prediction.json", **rates, metadata=111)
    _write(tmp_path, "2026-12-01-unknown-prediction.json", **rates, metadata=222)  # no time: the day's start
    _write(tmp_path, "2026-12-01T0900-bbbbbbb-prediction.json", **rates, metadata=333)
    _write(tmp_path, "2026-12-02T0900-ccccccc-prediction.json", **rates, metadata=444, partial=True)  # unfinished
    _write(tmp_path, "2026-12-03T1200-ddddddd-metadata.json", models={"metadata/small": _model(0.7777, "2026-12-03")})
    _write(tmp_path, "2026-11-20T1200-eeeeeee-metadata.json", models={"metadata/small": _model(0.6666, "2026-11-20")})
    # A run may cover one catalog: each catalog's rows come from the newest run that measured it.
    _write(tmp_path, "2026-12-04T2300-fffffff-other_catalogs.json", rows=[_catalog_row("toys", 0.9)])
    _write(tmp_path, "2026-12-04T2200-fffffff-other_catalogs.json",
           rows=[_catalog_row("toys", 0.1), _catalog_row("us", 0.8)])
    page = _render(tmp_path)
    assert "| metadata-only model | 333 |" in page
    assert all(f"| {v} |" not in page for v in (111, 222, 444))
    assert "commit bbbbbbb" in page and "2026-12-01T0900-bbbbbbb-prediction.json" in page
    assert "77.77%" in page and "66.66%" not in page
    assert "| toys | TF-IDF | 1 | 5 | 100 | 90.00% / 0.500 |" in page and "10.00%" not in page
    assert "| us | TF-IDF | 1 | 5 | 100 | 80.00% / 0.500 |" in page
    assert "## Serving" not in page  # never measured: no section
    assert "## Missing inputs on other splits" not in page


def test_render_other_catalogs_on_several_split_seeds(tmp_path: Path) -> None:
    rows = [{**_catalog_row("toys", acc), "split_seed": seed} for seed, acc in ((0, 0.90), (1, 0.80), (2, 0.70))]
    _write(tmp_path, "2026-12-05T1500-aaaaaaa-other_catalogs.json", split_seeds=[0, 1, 2], rows=rows)
    page = _render(tmp_path)
    # One row per catalog level: the mean over the seeds, each seed's accuracy, and the mean lead over the SVM.
    fusion, svm = "80.00% / 0.500 (90.00 / 80.00 / 70.00)", "50.00% / 0.500 (50.00 / 50.00 / 50.00)"
    assert f"| toys | TF-IDF | 1 | 5 | 100 | {fusion} | {svm} | +30.00 |" in page
    assert "seeds 0, 1, 2" in page


def test_render_other_catalogs_keeps_the_plain_run_beside_a_sentence_model_run(tmp_path: Path) -> None:
    """A later run with --sentence-model adds its rows; it does not replace the plain model's."""
    _write(tmp_path, "2026-12-05T1500-aaaaaaa-other_catalogs.json", rows=[_catalog_row("toys", 0.81)])
    _write(tmp_path, "2026-12-06T0100-bbbbbbb-other_catalogs.json",
           rows=[{**_catalog_row("toys", 0.83), "sentence_model": "all-MiniLM-L6-v2"}])
    page = _render(tmp_path)
    assert "| toys | TF-IDF | 1 | 5 | 100 | 81.00% / 0.500 |" in page
    assert "| toys | TF-IDF + all-MiniLM-L6-v2 | 1 | 5 | 100 | 83.00% / 0.500 |" in page
    assert "aaaaaaa" in page and "bbbbbbb" in page


def test_render_missing_inputs_on_several_splits(tmp_path: Path) -> None:
    def ablation(title_image: float, random: float) -> list[dict]:
        row = {"macro_f1": 0.9}
        return [
            {**row, "modalities": ["title", "image"], "withheld": ["metadata"], "accuracy": title_image,
             "baseline_accuracy": 0.97},
            {**row, "modalities": ["metadata", "title", "image"], "withheld": ["each metadata field with chance 0.3"],
             "accuracy": random, "baseline_accuracy": None},
        ]
    splits = [{"split_seed": 42, "ablation": ablation(0.9727, 0.9785), "fusion_trained": "2026-12-05"},
              {"split_seed": 7, "ablation": ablation(0.9801, 0.9833), "fusion_trained": "2026-12-05"}]
    _write(tmp_path, "2026-12-05T0900-aaaaaaa-missing_inputs.json", models={}, **splits[0], splits=splits)
    page = _render(tmp_path)
    assert "| title + image | metadata | 97.27% |" in page  # the first split's table, as before
    assert "| inputs | emptied | split 42 | split 7 |" in page
    assert "| title + image | metadata | 97.27% (97.00%) | 98.01% (97.00%) |" in page
    assert "| metadata + title + image | each metadata field with chance 0.3 | 97.85% | 98.33% |" in page

    # A later run of split 42 alone: its table on top, the other splits still shown from the run that measured them.
    later = {"split_seed": 42, "ablation": ablation(0.9740, 0.9795), "fusion_trained": "2026-12-06"}
    _write(tmp_path, "2026-12-06T0900-bbbbbbb-missing_inputs.json", models={}, **later, splits=[later])
    page = _render(tmp_path)
    assert "| title + image | metadata | 97.40% |" in page
    assert "| title + image | metadata | 97.27% (97.00%) | 98.01% (97.00%) |" in page
    assert "an earlier model than the table above" in page and "2026-12-05T0900-aaaaaaa-missing_inputs.json" in page


def test_results_md_is_rendered_from_the_results_files(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    result = _python(str(BENCH / "render.py"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_text() == (BENCH / "RESULTS.md").read_text(), "run python benchmarks/render.py and commit"


def test_plain_baselines_fit_and_predict(clean_catalog_dir: Path) -> None:
    """The benchmark's baselines (deepfusion.baselines): fitted on a catalog's products, they predict its labels."""
    from deepfusion import load_catalog
    from deepfusion.baselines import MetadataLRBaseline, TextSVMBaseline
    from deepfusion.catalog import TARGET, TITLE

    products = load_catalog(clean_catalog_dir, require_target=True, progress=False).products
    for model in (MetadataLRBaseline(), TextSVMBaseline(("metadata", "title"))):
        assert model.fit(products) is model
        predicted = model.predict(products)
        assert len(predicted) == len(products) and set(predicted) <= set(products[TARGET])
        assert (predicted == products[TARGET].to_numpy()).mean() > 0.5
    untitled = MetadataLRBaseline().fit(products).predict(products.assign(**{TITLE: None}))
    assert len(untitled) == len(products)  # the metadata baseline never reads the title
