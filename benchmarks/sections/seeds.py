"""Run-to-run spread: the image-only and fusion models retrained with two more seeds besides SEED. (A model
trained with seed s is an ensemble of networks seeded s and s + 1, so seeds 1 and 3 share no network.)"""

from __future__ import annotations

from typing import Any

from bench import Bench


def measure(b: Bench) -> dict[str, Any]:
    for seed in (1, 3):
        b.train(f"image/regularized-seed{seed}", "image", ("image",), seed=seed)
        b.train(f"fusion/regularized-seed{seed}", "fusion", ("metadata", "title", "image"), seed=seed)
    return {"models": b.models}
