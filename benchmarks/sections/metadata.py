"""Metadata-only models: the three presets, then the regularized one with each class-balancing option."""

from __future__ import annotations

from typing import Any

from bench import Bench


def measure(b: Bench) -> dict[str, Any]:
    for preset in ("small", "overfit", "regularized"):
        b.train(f"metadata/{preset}", "metadata", ("metadata",), preset)
    for balance in ("sqrt", "inverse", "sampler"):  # "none" is the regularized default above
        b.train(f"metadata/regularized-balance-{balance}", "metadata", ("metadata",), balance=balance)
    return {"models": b.models}
