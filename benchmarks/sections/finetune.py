"""The backbone's last blocks fine-tuned on the training images (`deepfusion train --finetune`) instead of kept
frozen: image-only and fusion models on the tuned backbone, per blocks x epochs in --finetune-configs. Opt-in: on
a CPU the fine-tuning itself is slow. The image model fine-tunes (exactly as --finetune does) and the fusion model
reuses its tuned backbone. With --finetuned-weights DIR, a file DIR/ft_{blocks}x{epochs}.safetensors (a backbone
tuned by the same code elsewhere, e.g. on a GPU) is used instead, and DIR/ft_{cfg}.json may say where and how long
that took ({"device": ..., "seconds": ...})."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench import Bench


def _tune(b: Bench, cfg: str) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """The image model on the backbone tuned per ``cfg`` (given, or tuned in this run), how the tuning went, and
    the tuned weights."""
    blocks, epochs = (int(v) for v in cfg.split("x"))
    given_dir = b.options.get("finetuned_weights")
    given = Path(given_dir) / f"ft_{cfg}.safetensors" if given_dir else None
    if given is not None and given.is_file():
        sidecar = given.with_suffix(".json")
        tuned = {"where": "given", **(json.loads(sidecar.read_text()) if sidecar.is_file() else {})}
        image = b.train(f"image/regularized-finetuned-{cfg}", "image", ("image",), weights=given)
        return image, tuned, given
    import torch

    start = time.perf_counter()
    image = b.train(f"image/regularized-finetuned-{cfg}", "image", ("image",), finetune_blocks=blocks,
                    finetune_epochs=epochs)
    # In the run, the time covers the fine-tuning and the image model trained on top of it.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tuned = {"where": "in this run", "device": f"{device}, with the image model's training",
             "seconds": time.perf_counter() - start}
    return image, tuned, b.out / f"image/regularized-finetuned-{cfg}" / "backbone.safetensors"


def measure(b: Bench) -> dict[str, Any]:
    rows = []
    for cfg in b.options.get("finetune_configs", ["2x3"]):
        image, tuned, weights = _tune(b, cfg)
        fusion = b.train(f"fusion/regularized-finetuned-{cfg}", "fusion", ("metadata", "title", "image"),
                         weights=weights)
        for row in (image, fusion):
            row["options"] = {"finetune": cfg}
        rows.append({"config": cfg, "finetune": tuned, "image": image, "fusion": fusion})
    return {"models": b.models, "rows": rows}
