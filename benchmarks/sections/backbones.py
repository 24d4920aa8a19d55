"""A larger backbone: EfficientNet-Lite2 (260x196) vs the default Lite0, image-only, with the cold embedding of
the whole catalog timed for each (Lite0's cache is warm by now, so it is timed in a scratch cache)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench import Bench, cold_embedding


def measure(b: Bench) -> dict[str, Any]:
    from deepfusion.backbones import get_backbone

    paths = list(b.catalog.products["image_path"].dropna())
    rows = []
    for name in ("efficientnet_lite0", "efficientnet_lite2"):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, _ = cold_embedding(b, name, paths, Path(tmp))
        if name == "efficientnet_lite0":  # the default: the image section's model, trained once
            row = b.latest_models("image").get("image/regularized") or b.train(
                "image/regularized", "image", ("image",)
            )
        else:
            row = b.train(f"image/regularized-{name}", "image", ("image",), backbone=name)
        size = "x".join(map(str, get_backbone(name).input_size))
        rows.append({"backbone": name, "input_size": size, "cold_seconds": seconds, **row})
    return {"models": b.models, "rows": rows, "n_images": len(paths)}
