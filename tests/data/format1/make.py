"""How the format-1 model folders beside this file were made: by the code of commit 49a6c5c (the last to write
format 1), on the tests' generated catalog, so tests/test_format1.py can check that today's code loads them and
predicts what they predicted then.

    git worktree add /tmp/format1 49a6c5c
    PYTHONPATH=/tmp/format1/src:tests python tests/data/format1/make.py tests/data/format1

Each folder holds the model and ``expected.csv``: its predictions then (``predict_frame``) on the catalog
``make_catalog(..., messy=False, seed=1)``, each product as it is, without its attributes and without its title.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
from conftest import make_catalog

from deepfusion import Predictor, load_catalog
from deepfusion.catalog import TITLE
from deepfusion.missing import without_modalities

SMALL = (64, 48)


def variants(products: pd.DataFrame, fields: tuple[str, ...]) -> pd.DataFrame:
    """The products as they are, without attributes and without a title (ids suffixed), in one frame."""
    blank = without_modalities(products, ["metadata"], fields).assign(id=lambda d: d["id"] + "-nometa")
    untitled = products.assign(**{TITLE: None, "id": products["id"] + "-notitle"})
    return pd.concat([products, blank, untitled], ignore_index=True)


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frame = load_catalog(make_catalog(root / "catalog", messy=False, seed=1), progress=False).products
        for name, modalities, options in [
            ("fusion", ["metadata", "title", "image"], {"image_size": SMALL}),
            ("tree", ["metadata", "title"], {}),
        ]:
            data = frame
            if name == "tree":  # a category path as the label: masterCategory > articleType
                data = frame.assign(articleType=frame["masterCategory"] + " > " + frame["articleType"])
            predictor = Predictor(modalities, preset="small", epochs=10, seed=3, progress=False,
                                  cache_dir=root / "cache", **options)
            predictor.fit(data.iloc[::2], data.iloc[1::2])
            folder = out / name
            shutil.rmtree(folder, ignore_errors=True)
            predictor.save(folder)
            products = variants(data, predictor.metadata_fields)
            predictor.predict_frame(products).to_csv(folder / "expected.csv", index=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
