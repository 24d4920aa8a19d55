"""The benchmark's sections: one module each, with ``measure(bench) -> dict`` returning plain numbers (no
markdown; ``render.py`` writes the page). ``run.py`` writes each section's numbers to a results file of its own.

The title_encoders section (TF-IDF vs an all-MiniLM-L6-v2 sentence embedding as the title encoder) was dropped:
it trained the network through the pipeline's private parts, and the Predictor has no sentence-encoder option to
measure it through. Its figures of 2026-11-25 stay on the page from their results file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import (
    backbones,
    baselines,
    embedding,
    finetune,
    fusion,
    image,
    label_noise,
    links,
    metadata,
    missing_inputs,
    other_catalogs,
    prediction,
    refit,
    scaling,
    scaling_memory,
    seeds,
    serving,
    splits,
)

# In the order a plain run measures them: later sections reuse the models of earlier ones (under OUT).
SECTIONS: dict[str, Callable[[Any], dict[str, Any] | None]] = {
    "metadata": metadata.measure,
    "embedding": embedding.measure,
    "image": image.measure,
    "seeds": seeds.measure,
    "backbones": backbones.measure,
    "fusion": fusion.measure,
    "prediction": prediction.measure,
    "baselines": baselines.measure,
    "splits": splits.measure,
    "finetune": finetune.measure,
    "label_noise": label_noise.measure,
    "refit": refit.measure,
    "missing_inputs": missing_inputs.measure,
    "scaling": scaling.measure,
    "scaling_memory": scaling_memory.measure,
    "serving": serving.measure,
    "other_catalogs": other_catalogs.measure,
    "links": links.measure,
}

# Sections left out of a plain run: they take long on a CPU, need a model given, or data beside the real catalog.
OPT_IN = ("finetune", "refit", "scaling", "scaling_memory", "serving", "other_catalogs", "links")
