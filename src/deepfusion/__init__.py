"""DeepFusion: keep e-commerce catalogs correctly categorized by fusing image, metadata and title."""

from .catalog import Catalog, CatalogError, load_catalog
from .predictor import Predictor
from .split import split_by_duplicate_groups

__all__ = ["Catalog", "CatalogError", "Predictor", "load_catalog", "split_by_duplicate_groups"]
__version__ = "0.1.0"
