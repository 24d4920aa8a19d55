"""One-off: split the old single results.json into one results file per section (kept in git history only).

Dates are the rows' own where recorded, else the day of the commit that recorded the figures into results.json
(``recorded_in``, found by walking that file's history); the code's commit is unknown, so it is ``unknown`` in
the file name. Figures are copied unchanged; the few facts the old markdown held as text only (counts, notes)
become fields.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
OLD = json.loads((HERE / "results.json").read_text())
MODELS = OLD["models"]
MIGRATED = "benchmarks/results.json"


def models(*keys: str) -> dict:
    return {k: MODELS[k] for k in keys}


def prefixed(prefix: str, exclude: tuple[str, ...] = ()) -> dict:
    return {k: v for k, v in MODELS.items() if k.startswith(prefix) and not k.endswith(exclude)}


def strip(section: str) -> dict:
    return {k: v for k, v in OLD[section].items() if k != "markdown"}


SEED_KEYS = ("image/regularized-seed1", "fusion/regularized-seed1", "image/regularized-seed3",
             "fusion/regularized-seed3")
FINETUNE_KEYS = tuple(f"{m}/regularized-finetuned-{c}" for c in ("2x3", "4x6") for m in ("image", "fusion"))
FUSION_KEYS = ("fusion/regularized", "fusion/regularized-gated", "fusion/regularized-no-title",
               "fusion/regularized-metadata-title", "fusion/regularized-no-text-scores",
               "fusion/regularized-members-1")
IMAGE_KEYS = ("image/small", "image/overfit", "image/regularized", "image/regularized-augment-1",
              "image/regularized-160x120")

backbone_rows = [dict(r, input_size={"efficientnet_lite0": "224x168", "efficientnet_lite2": "260x196"}[r["backbone"]])
                 for r in OLD["backbones"]["rows"]]
links_figures = {
    "command": OLD["links"]["command"], "images": 500, "mean_kb": 12.3, "workers": 16,
    # Two runs; the old page kept only each figure's range, so these are the two runs' values, unpaired.
    "images_per_s": {"fetch": [282, 284], "cached": [3382, 10925], "local": [1592, 2340]},
    "note": "On the shared 2-core machine (load average about 7 from other jobs).",
}
scaling_figures = strip("scaling") | {
    "repeats": 10,
    "note": "The two fusion fit rows were measured again after a25c35d, which releases the raw image vectors once "
    "scaled and gives the no-metadata network views instead of copies of the image features (same values, same "
    "model); before it: 1,532 MB and 3,365 MB peak (152 s and 974 s).",
}

# section: (date, recorded_in, figures)
SECTIONS = {
    "metadata": ("2026-11-28", "154a21d", {"models": prefixed("metadata/")}),
    "image": ("2026-11-25", "154a21d", {"models": models(*IMAGE_KEYS)}),
    "fusion": ("2026-11-28", "9dfcbcd", {"models": models(*FUSION_KEYS), **strip("fusion_analysis")}),
    "seeds": ("2026-11-28", "d462c8c", {"models": models(*SEED_KEYS)}),
    "backbones": ("2026-11-25", "08881ca", {
        "models": models("image/regularized-efficientnet_lite2"), "rows": backbone_rows, "n_images": 39949,
        "note": "Measured earlier on 2026-11-25 with one network per model, before the two-network default; not "
        "re-run."}),
    "finetune": ("2026-11-28", "639cee6", {"models": models(*FINETUNE_KEYS), **strip("finetune")}),
    "embedding": ("2026-11-25", "08881ca", strip("embedding") | {"sample_images": 1024}),
    "title_encoders": ("2026-11-25", "08881ca", strip("title_encoders") | {
        "titles": 39954,
        "note": "The section's code was dropped (issue #19: it trained the network through the pipeline's private "
        "parts); these figures stay until a sentence encoder can be measured through the Predictor."}),
    "baselines": ("2026-11-28", "9dfcbcd", strip("baselines") | {"test_products": 3994}),
    "prediction": ("2026-11-28", "9dfcbcd", strip("prediction") | {"test_products": 3994}),
    "splits": ("2026-11-28", "639cee6", strip("splits")),
    "label_noise": ("2026-11-28", "2ffc086", strip("label_noise") | {"catalog_products": 39954, "splits": 5}),
    "refit": ("2026-11-28", "b4d314e", strip("refit")),
    "missing_inputs": ("2026-12-03", "2528e7b", strip("missing_inputs") | {"fusion_trained": "2026-12-03"}),
    "serving": ("2026-12-03", "9ff1bcf", strip("serving") | {"requests": 300, "cached_products": 32,
                                                            "environment": OLD["environment"]}),
    "scaling": ("2026-12-03", "50e1e46", scaling_figures),
    "links": ("2026-12-04", "2cd88b0", links_figures),
}

if __name__ == "__main__":
    used = set()
    for section, (date, recorded_in, figures) in SECTIONS.items():
        used |= set(figures.get("models", {}))
        figures = {k: v for k, v in figures.items() if k != "date"}
        record = {"section": section, "date": date, "commit": "unknown", "recorded_in": recorded_in,
                  "migrated_from": MIGRATED, **figures}
        path = HERE / "results" / f"{date}-unknown-{section}.json"
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")
        print(path.name)
    assert used == set(MODELS), set(MODELS) - used
