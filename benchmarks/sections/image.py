"""Image-only models: the three presets, then the regularized one with augmented views and a smaller input."""

from __future__ import annotations

from typing import Any

from bench import Bench


def measure(b: Bench) -> dict[str, Any]:
    for preset in ("small", "overfit", "regularized"):
        b.train(f"image/{preset}", "image", ("image",), preset)
    b.train("image/regularized-augment-1", "image", ("image",), augment_views=1)
    b.train("image/regularized-160x120", "image", ("image",), image_size=(160, 120))
    return {"models": b.models}
