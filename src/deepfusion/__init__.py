"""DeepFusion: keep e-commerce catalogs correctly categorized by fusing image, metadata and title."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .catalog import Catalog, CatalogError, load_catalog
    from .predictor import Predictor
    from .split import split_by_duplicate_groups

# The public names are imported on first use (PEP 562), not here: the submodules pull in pandas, scikit-learn
# and torch, and every `import deepfusion.<anything>` (the CLI answering --help included) would pay for them.
_LAZY = {
    "Catalog": "catalog",
    "CatalogError": "catalog",
    "load_catalog": "catalog",
    "Predictor": "predictor",
    "split_by_duplicate_groups": "split",
}

__all__ = ["Catalog", "CatalogError", "Predictor", "load_catalog", "split_by_duplicate_groups"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
