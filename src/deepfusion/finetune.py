"""Optional fine-tuning of the last backbone blocks (``--finetune``), for users with a GPU.

The default pipeline keeps the backbone frozen and caches its embeddings. Fine-tuning instead trains the last
few MBConv blocks and the head convolution end to end on augmented product images, then hands back an ordinary
backbone weights file: the rest of the pipeline (ONNX export, embedding cache keyed by the weights' digest, the
classifier head) runs unchanged on top of it. On a CPU this is slow and meant for small catalogs only.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from .backbones import build_torch_extractor, get_backbone
from .embeddings import ImageEmbedder, image_sha1

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def finetune_backbone(
    backbone: str,
    image_paths: Sequence[str],
    labels: np.ndarray,
    out_path: str | Path,
    *,
    weights: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    blocks: int = 2,
    epochs: int = 3,
    batch_size: int = 32,
    lr: float = 3e-4,
    seed: int = 42,
    device: str | None = None,
    progress: bool = True,
) -> Path:
    """Train the last ``blocks`` MBConv blocks + head conv with a temporary linear classifier; save the whole
    backbone state dict as safetensors at ``out_path`` and return it."""
    spec = get_backbone(backbone)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    extractor = build_torch_extractor(spec, weights, image_size)
    net = extractor.net
    for p in net.parameters():
        p.requires_grad = False
    trainable = [*net._blocks[-blocks:], net._conv_head, net._bn1] if blocks > 0 else [net._conv_head, net._bn1]
    for module in trainable:
        for p in module.parameters():
            p.requires_grad = True
    n_classes = int(labels.max()) + 1
    classifier = nn.Linear(spec.feature_dim, n_classes)
    extractor.to(device)
    classifier.to(device)
    params = [p for p in extractor.parameters() if p.requires_grad] + list(classifier.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    # Preprocessing (resize, normalisation, augmentation) is the embedder's, so training matches inference.
    prep = ImageEmbedder(backbone, weights=weights, image_size=image_size, progress=False)
    data = [(Path(p).read_bytes(), int(y)) for p, y in zip(image_paths, labels, strict=True) if p]
    keys = [image_sha1(b) for b, _ in data]

    def make_batch(idx: list[int], views: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.stack([prep.preprocess(data[i][0], view=v, key=keys[i]) for i, v in zip(idx, views, strict=True)])
        return torch.from_numpy(x), torch.tensor([data[i][1] for i in idx])

    log.info("fine-tuning the last %d blocks of %s on %d images (%s)", blocks, spec.name, len(data), device)
    with ThreadPoolExecutor(max(1, prep.threads - 1)) as pool:  # as many as the embedder uses
        for epoch in range(epochs):
            started = time.perf_counter()
            extractor.train()
            for module in net.modules():  # frozen layers keep their ImageNet batch-norm statistics
                if isinstance(module, nn.BatchNorm2d) and not module.weight.requires_grad:
                    module.eval()
            order = list(range(len(data)))
            rng.shuffle(order)
            batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
            batches = [b for b in batches if len(b) >= 2]
            # The random views are drawn here, in order, so the result does not depend on thread timing.
            views = [[1 + rng.randrange(1000) for _ in b] for b in batches]
            seen = correct = 0
            total_loss = 0.0
            # Images are decoded and augmented a few batches ahead in threads while the network trains.
            for x, y in tqdm(
                prefetched(pool, lambda bv: make_batch(*bv), zip(batches, views, strict=True), ahead=4),
                total=len(batches),
                desc=f"fine-tuning epoch {epoch + 1}/{epochs}",
                disable=not progress,
                leave=False,
            ):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                logits = classifier(extractor(x))
                loss = nn.functional.cross_entropy(logits, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                seen += len(y)
                correct += int((logits.argmax(1) == y).sum())
                total_loss += loss.item() * len(y)
            log.info(
                "fine-tuning epoch %d/%d: loss %.4f, training accuracy %.4f, %.0f s",
                epoch + 1,
                epochs,
                total_loss / max(seen, 1),
                correct / max(seen, 1),
                time.perf_counter() - started,
            )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items() if not k.startswith("_fc")}
    save_file(state, str(out_path))
    return out_path


def prefetched(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """``fn(item)`` for each item, in order, computed on ``pool`` up to ``ahead`` items before the caller asks for
    it (a bounded look-ahead keeps memory flat however many items there are). The embedder's own look-ahead
    (ImageEmbedder._batches) fans each batch out image by image instead, which is faster for inference."""
    items = iter(items)
    pending = deque(pool.submit(fn, item) for item in itertools.islice(items, ahead))
    while pending:
        result = pending.popleft().result()
        for item in itertools.islice(items, 1):
            pending.append(pool.submit(fn, item))
        yield result
