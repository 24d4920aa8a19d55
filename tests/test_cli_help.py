"""The CLI for people: instant and readable --help, choices that match the code, docs/cli.md in step with the CLI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from deepfusion import cli
from deepfusion.cli import app

ROOT = Path(__file__).resolve().parents[1]
VERBS = ["train", "evaluate", "predict", "eda", "audit", "serve"]
HEAVY = ("torch", "sklearn", "pandas", "numpy", "scipy", "pyarrow", "PIL", "onnxruntime", "deepfusion.catalog")
runner = CliRunner()


def _fresh_interpreter(code: str) -> dict:
    """Run ``code`` in a new interpreter (this one has long imported everything) and return what it printed."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_cli_imports_nothing_heavy() -> None:
    """`deepfusion --help` pays only for what `import deepfusion.cli` imports; a refused option value too."""
    code = f"""
import json, sys
import deepfusion.cli
after_import = [m for m in {HEAVY!r} if m in sys.modules]
from typer.testing import CliRunner
result = CliRunner().invoke(deepfusion.cli.app, ["train", "--data", "x", "--out", "y", "--preset", "regularised"])
after_refusal = [m for m in {HEAVY!r} if m in sys.modules]
print(json.dumps({{"import": after_import, "refusal": after_refusal, "exit": result.exit_code}}))
"""
    seen = _fresh_interpreter(code)
    assert seen == {"import": [], "refusal": [], "exit": 2}


def test_package_names_are_imported_on_first_use() -> None:
    code = """
import json, sys
import deepfusion
lazy = "pandas" not in sys.modules and "torch" not in sys.modules
from deepfusion import CatalogError, Predictor, load_catalog
import deepfusion.catalog, deepfusion.predictor
same = load_catalog is deepfusion.catalog.load_catalog and Predictor is deepfusion.predictor.Predictor
listed = "Predictor" in dir(deepfusion)
print(json.dumps({"lazy": lazy, "same": same, "all": sorted(deepfusion.__all__), "dir": listed}))
"""
    seen = _fresh_interpreter(code)
    assert seen["lazy"] and seen["same"] and seen["dir"]
    assert seen["all"] == ["Catalog", "CatalogError", "Predictor", "load_catalog", "split_by_duplicate_groups"]
    import deepfusion

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        deepfusion.nope  # noqa: B018


@pytest.mark.parametrize("verb", [None, *VERBS])
def test_help_is_readable_at_80_columns(verb: str | None) -> None:
    args = [verb, "--help"] if verb else ["--help"]
    result = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert "…" not in result.output and "..." not in result.output.replace("[ARGS]...", "")
    if verb == "train":
        for whole in (
            "--title-fallback / --no-title-fallback",
            "--stacking / --no-stacking",
            "efficientnet_lite0",
            "--finetune-blocks",
            "[default: all]",
            "[small|overfit|regularized]",
            "[concat|gated]",
            "[none|sqrt|inverse|sampler]",
        ):
            assert whole in result.output, whole
        assert "[metadata|image|fusion|all]" in result.output
        assert "|".join(cli.BACKBONES) in result.output


def test_every_option_is_described() -> None:
    group = typer.main.get_command(app)
    ctx = group.make_context("deepfusion", [], resilient_parsing=True)
    missing = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd.help, name
        missing += [f"{name} {p.name}" for p in cmd.get_params(ctx) if not (getattr(p, "help", None) or "").strip()]
    assert missing == []


def test_choices_match_the_code() -> None:
    """The CLI spells its choices out (so --help imports nothing heavy); they must be the ones the code accepts."""
    import numpy as np

    from deepfusion import models, predictor, training
    from deepfusion.backbones import list_backbones

    assert cli.MODELS == (*predictor.MODEL_KINDS, "all")
    assert cli.PRESETS == tuple(models.PRESETS)
    assert cli.COMBINERS == tuple(models.COMBINERS)
    assert cli.MODALITIES == tuple(predictor.MODALITIES)
    assert cli.BACKBONES == tuple(list_backbones())
    assert cli.MODEL_FOLDERS == set(predictor.MODEL_KINDS)
    # Balance modes have no registry: each one other than "none" must change the class weights of an imbalanced y.
    assert models.HeadConfig().balance in cli.BALANCES
    y = np.array([0] * 9 + [1])
    for mode in cli.BALANCES:
        uniform = np.allclose(training.class_weights(y, 2, mode), 1.0)
        assert uniform == (mode == "none"), mode


def test_user_error_classes_exist() -> None:
    """The error wrapper finds these by module and name (importing them up front would cost seconds)."""
    import importlib

    found = []
    for module_name, class_name in cli.USER_ERROR_CLASSES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue  # e.g. model_files.py before it exists: the other entries still cover its error
        cls = getattr(module, class_name, None)
        assert isinstance(cls, type) and issubclass(cls, Exception), (module_name, class_name)
        found.append(class_name)
    assert {"CatalogError", "ModelLoadError", "BackboneError"} <= set(found)


def test_refused_values_list_the_choices(catalog_dir: Path, tmp_path: Path) -> None:
    before = sorted(p.relative_to(catalog_dir) for p in catalog_dir.rglob("*"))
    out = tmp_path / "run"
    for option, value, choices in [
        ("--preset", "regularised", "small, overfit, regularized. Did you mean 'regularized'?"),
        ("--model", "everything", "metadata, image, fusion, all"),
        ("--backbone", "resnet50", ", ".join(cli.BACKBONES)),
        ("--combiner", "sum", "concat, gated"),
        ("--balance", "weights", "none, sqrt, inverse, sampler"),
    ]:
        result = runner.invoke(app, ["train", "--data", str(catalog_dir), "--out", str(out), option, value])
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert f"Invalid value for '{option}': '{value}' is not one of: {choices}" in text
    for option, value in [("--image-size", "224"), ("--image-size", "8x8"), ("--members", "0"), ("--folds", "1")]:
        verb = "audit" if option == "--folds" else "train"
        result = runner.invoke(app, [verb, "--data", str(catalog_dir), "--out", str(out), option, value])
        assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output, result.output
    assert not out.exists()
    assert sorted(p.relative_to(catalog_dir) for p in catalog_dir.rglob("*")) == before


def test_docs_match_the_cli() -> None:
    """docs/cli.md is generated from the CLI; after changing an option, run python scripts/gen_cli_docs.py."""
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    page = gen.render(app)
    assert page == (ROOT / "docs" / "cli.md").read_text(encoding="utf-8"), "run: python scripts/gen_cli_docs.py"
    for verb in VERBS:
        assert f"## `deepfusion {verb}`" in page
    assert "| `--seed` | integer | `42` |" in page and "| `--model` | one of `metadata`" in page
