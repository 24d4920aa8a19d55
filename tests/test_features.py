from __future__ import annotations

import json

import numpy as np
import pandas as pd

from deepfusion.features import ClassIndex, MetadataEncoder, TitleEncoder, clean_title, name_length


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "gender": ["Men", "Women", None, "Men"],
            "masterCategory": ["Apparel", "Footwear", "Apparel", "Apparel"],
            "subCategory": ["Topwear", "Shoes", "Topwear", "Bottomwear"],
            "baseColour": ["Blue", "Black", "Red", None],
            "season": ["Summer", None, "Fall", "Summer"],
            "usage": ["Casual", "Casual", "Formal", "Casual"],
            "year": [2011.0, np.nan, 2015.0, 2013.0],
            "productDisplayName": ["Puma Men's T-Shirt!", None, "  Red   Formal Shirt ", "Levis Jeans"],
        }
    )


def test_clean_title_and_name_length() -> None:
    assert clean_title("  Puma Men's T-Shirt!! (Blue)  ") == "puma men s t shirt blue"
    assert clean_title(None) == "" and clean_title(float("nan")) == ""
    assert list(name_length(pd.Series(["a b  c", None, ""]))) == [3, 0, 0]


def test_metadata_encoder_imputes_and_roundtrips_through_json() -> None:
    enc = MetadataEncoder().fit(frame())
    assert enc.medians_["year"] == 2013.0
    # Title word counts 5, 3, 2 (one title missing): the missing one is imputed with their median, 3.
    assert enc.medians_["name_length"] == 3.0
    lengths = enc.transform(frame())[:, enc.feature_names().index("name_length")]
    assert lengths[1] == lengths[2] != lengths[0]
    assert "gender_Unknown" in enc.feature_names()
    x = enc.transform(frame())
    assert x.shape == (4, enc.n_features) and np.isfinite(x).all()
    restored = MetadataEncoder.from_json(json.loads(json.dumps(enc.to_json())))
    np.testing.assert_allclose(restored.transform(frame()), x)


def test_unseen_values_encode_as_zeros_not_errors() -> None:
    enc = MetadataEncoder().fit(frame())
    new = frame().iloc[:1].assign(gender="Martian", baseColour="Ultraviolet")
    row = pd.Series(enc.transform(new)[0], index=enc.feature_names())
    assert row[[c for c in row.index if c.startswith("gender_")]].sum() == 0


def test_title_encoder_roundtrips_through_json() -> None:
    enc = TitleEncoder().fit(pd.concat([frame()] * 3))
    x = enc.transform(frame())
    restored = TitleEncoder.from_json(json.loads(json.dumps(enc.to_json())))
    np.testing.assert_allclose(restored.transform(frame()).toarray(), x.toarray(), rtol=1e-6)
    assert x[1].nnz == 0  # missing title


def test_label_encoder() -> None:
    enc = ClassIndex().fit(pd.Series(["b", "a", "b", None]))
    assert enc.classes_ == ["a", "b"]
    assert list(enc.transform(pd.Series(["b", "zzz"]))) == [1, -1]
    assert list(enc.inverse_transform(np.array([0, 1]))) == ["a", "b"]
    assert ClassIndex.from_json(enc.to_json()).classes_ == enc.classes_
