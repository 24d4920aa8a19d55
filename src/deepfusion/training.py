"""Training loop for ``FusionNet``: seeded mini-batches, class balancing, modality dropout, early stopping on
validation, and temperature scaling for calibrated confidences.
"""

from __future__ import annotations

import copy
import ctypes
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.metrics import f1_score
from torch import nn
from tqdm.auto import tqdm

from .models import Batch, FusionEnsemble, FusionNet, HeadConfig, ModalitySpec, SeededDropout, SparseBatch

log = logging.getLogger(__name__)


_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc, malloc.h)


def return_large_blocks(threshold: int = 128 * 1024) -> bool:
    """Have glibc give every freed block of ``threshold`` bytes or more back to the system at once.

    glibc serves such a block with a mapping of its own and unmaps it when freed, but after each such free it raises
    the threshold to that block's size (up to 32 MiB): later arrays of that size (a batch of image vectors, the
    stacked SVM's copies of its folds, scipy's and liblinear's temporaries) then come from the heap, which keeps the
    freed space, fragmented, so the fit's resident memory grows with the arrays it has freed. Setting the threshold
    with ``mallopt`` turns that adjustment off for the process (docs/experiments.md, "2026-12-05: the fusion fit's
    memory per training product, measured"). Changes no value computed; False where the C library has no
    ``mallopt`` (not glibc)."""
    try:
        libc = ctypes.CDLL(None)  # the C library the process runs on
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) if hasattr(libc, "mallopt") else False
    except (OSError, TypeError):  # TypeError: Windows has no process-wide C library to open this way
        return False


@dataclass
class ModalityData:
    """Inputs of every modality for a set of products, row-aligned, plus which modality each product has."""

    features: dict[str, np.ndarray | sp.csr_matrix]
    present: dict[str, np.ndarray]
    # Derived inputs that stand or fall with another modality, e.g. {"text_scores": "title"}: when training hides
    # the title (modality dropout), its scores are hidden too, as they would be for a product without a title.
    follows: dict[str, str] = field(default_factory=dict)
    # Rows that are versions of one product (the product and its blanked copies) share a number here; a training
    # epoch then visits each product once, in one of its versions drawn at random, so an epoch costs what it
    # would without copies. None: every row is its own product.
    product: np.ndarray | None = None

    def __len__(self) -> int:
        return next(iter(self.features.values())).shape[0]

    def specs(self) -> list[ModalitySpec]:
        return [ModalitySpec(n, f.shape[1], sp.issparse(f)) for n, f in self.features.items()]

    def batch(self, idx: np.ndarray, drop: dict[str, np.ndarray] | None = None) -> Batch:
        inputs: dict[str, torch.Tensor | SparseBatch] = {}
        present: dict[str, torch.Tensor] = {}
        for name, feats in self.features.items():
            rows = feats[idx]
            if sp.issparse(rows):
                rows = rows.tocsr()
                inputs[name] = SparseBatch(
                    torch.from_numpy(rows.indices.astype(np.int64)),
                    torch.from_numpy(rows.indptr[:-1].astype(np.int64)),
                    torch.from_numpy(rows.data.astype(np.float32)),
                )
            else:
                inputs[name] = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
            mask = self.present[name][idx]
            if drop is not None and name in drop:
                mask = mask & ~drop[name]
            present[name] = torch.from_numpy(mask.astype(bool))
        return Batch(inputs, present)


@dataclass
class TrainResult:
    net: FusionNet | FusionEnsemble
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch (of the first member)
    best_epoch: int = 0
    seconds: float = 0.0
    members: list[TrainResult] = field(default_factory=list)  # one per ensemble member


def class_weights(y: np.ndarray, n_classes: int, mode: str) -> np.ndarray:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    counts[counts == 0] = 1.0
    if mode == "inverse":
        w = 1.0 / counts
    elif mode in ("sqrt", "sampler"):
        w = 1.0 / np.sqrt(counts)
    else:
        w = np.ones(n_classes)
    return w / (w[y].mean() if len(y) else 1.0)


def one_version_each(rng: np.random.Generator, product: np.ndarray) -> np.ndarray:
    """One row per product, drawn at random among the rows that share its number in ``product`` (sorted)."""
    by_product = np.lexsort((rng.random(len(product)), product))  # grouped by product, random order within each
    first = np.r_[True, product[by_product][1:] != product[by_product][:-1]] if len(product) else np.zeros(0, bool)
    return np.sort(by_product[first])


def epoch_order(rng: np.random.Generator, data: ModalityData) -> np.ndarray:
    """The rows one epoch visits, shuffled: every row, or one version of each product (``data.product``)."""
    if data.product is None:
        return rng.permutation(len(data))
    return rng.permutation(one_version_each(rng, data.product))


def _modality_dropout(rng: np.random.Generator, data: ModalityData, idx: np.ndarray, p: float) -> dict | None:
    names = list(data.features)
    if p <= 0 or len(names) < 2:
        return None
    drop = {n: rng.random(len(idx)) < p for n in names}
    for derived, source in data.follows.items():
        drop[derived] = drop[source]  # the same array, so restoring one below restores both
    # Never hide every modality a product has: keep the first one that is present.
    present = np.column_stack([data.present[n][idx] & ~drop[n] for n in names])
    none_left = ~present.any(axis=1)
    if none_left.any():
        for n in names:
            restore = none_left & data.present[n][idx]
            drop[n] &= ~restore
            none_left &= ~restore
    return drop


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Small heads train fastest on one thread: with two, OpenMP synchronisation costs more than the matmuls of so
    small a network, most of all when the other core is busy (docs/experiments.md, "Figures moved out of code
    comments")."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def predict_logits(net: FusionNet | FusionEnsemble, data: ModalityData, batch_size: int = 1024) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad(), torch_threads(1):
        for start in range(0, len(data), batch_size):
            idx = np.arange(start, min(start + batch_size, len(data)))
            out.append(net(data.batch(idx)).numpy())
    return np.concatenate(out) if out else np.zeros((0, net.n_classes), dtype=np.float32)


@torch_threads(1)
def train_network(
    train: ModalityData,
    y_train: np.ndarray,
    val: ModalityData | None,
    y_val: np.ndarray | None,
    n_classes: int,
    cfg: HeadConfig,
    *,
    seed: int = 42,
    progress: bool = True,
) -> TrainResult:
    """Train one network, or ``cfg.members`` networks from seeds ``seed, seed + 1, ...`` in parallel threads
    (one per CPU core; torch releases the GIL in its kernels) combined into a ``FusionEnsemble``."""
    if cfg.members <= 1:
        net = _new_network(train, n_classes, cfg, seed)
        return _train_one(net, train, y_train, val, y_val, cfg, seed=seed, progress=progress)
    nets = [_new_network(train, n_classes, cfg, seed + i) for i in range(cfg.members)]
    start = time.perf_counter()
    bar = tqdm(
        total=cfg.members * cfg.epochs, desc=f"training {cfg.members} members ({cfg.preset})", disable=not progress
    )
    with ThreadPoolExecutor(max_workers=min(cfg.members, os.cpu_count() or 1)) as pool:
        runs = [
            pool.submit(_train_one, net, train, y_train, val, y_val, cfg, seed=seed + i, bar=bar)
            for i, net in enumerate(nets)
        ]
        members = [r.result() for r in runs]
    bar.close()
    return TrainResult(
        FusionEnsemble([m.net for m in members]),
        history=members[0].history,
        best_epoch=members[0].best_epoch,
        seconds=time.perf_counter() - start,
        members=members,
    )


def _new_network(train: ModalityData, n_classes: int, cfg: HeadConfig, seed: int) -> FusionNet:
    """A freshly initialised network; initialisation depends on ``seed`` only (torch's global generator is
    restored afterwards, and this runs in the calling thread, never concurrently)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FusionNet(train.specs(), n_classes, cfg)


def _train_one(
    net: FusionNet,
    train: ModalityData,
    y_train: np.ndarray,
    val: ModalityData | None,
    y_val: np.ndarray | None,
    cfg: HeadConfig,
    *,
    seed: int = 42,
    progress: bool = False,
    bar: tqdm | None = None,
) -> TrainResult:
    """Train with AdamW; with early stopping, keep the weights of the epoch with the best validation score.
    Every random draw comes from generators seeded here, so parallel runs do not disturb each other."""
    n_classes = net.n_classes
    masks = torch.Generator().manual_seed(seed + 1_000_003)
    for module in net.modules():
        if isinstance(module, SeededDropout):
            module.generator = masks
    rng = np.random.default_rng(seed)
    weights = class_weights(y_train, n_classes, cfg.balance)
    loss_weights = torch.tensor(
        weights if cfg.balance in ("sqrt", "inverse") else np.ones(n_classes), dtype=torch.float32
    )
    criterion = nn.CrossEntropyLoss(weight=loss_weights, label_smoothing=cfg.label_smoothing)
    plain_loss = nn.CrossEntropyLoss()
    # fused=True: the same AdamW update in one kernel, faster per step on the large title embedding tables
    # (docs/experiments.md, "Figures moved out of code comments").
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    n_products = len(train) if train.product is None else len(np.unique(train.product))
    steps_per_epoch = max(1, int(np.ceil(n_products / cfg.batch_size)))
    total_steps = cfg.epochs * steps_per_epoch
    # One-cycle needs a few steps of warm-up; on a tiny catalog keep the learning rate constant instead.
    scheduler = (
        torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.1)
        if total_steps >= 50
        else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    )
    sample_p = weights[y_train] / weights[y_train].sum() if cfg.balance == "sampler" else None

    result = TrainResult(net)
    best_score, best_state, bad_epochs = -np.inf, None, 0
    start = time.perf_counter()
    own_bar = tqdm(total=cfg.epochs, desc=f"training ({cfg.preset})", disable=not progress, leave=False)
    for epoch in range(cfg.epochs):
        net.train()
        order = rng.choice(len(train), len(train), p=sample_p) if sample_p is not None else epoch_order(rng, train)
        total, correct, seen = 0.0, 0, 0
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if len(idx) < 2:  # batch norm needs two rows
                continue
            batch = train.batch(idx, _modality_dropout(rng, train, idx, cfg.modality_dropout))
            target = torch.from_numpy(y_train[idx])
            logits = net(batch)
            loss = criterion(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == target).sum())
            seen += len(idx)
        row = {"epoch": epoch + 1, "train_loss": total / max(seen, 1), "train_accuracy": correct / max(seen, 1)}
        if val is not None and y_val is not None and len(val):
            logits = torch.from_numpy(predict_logits(net, val))
            pred = logits.argmax(1).numpy()
            row["val_loss"] = float(plain_loss(logits, torch.from_numpy(y_val)))
            row["val_accuracy"] = float((pred == y_val).mean())
            row["val_macro_f1"] = float(f1_score(y_val, pred, average="macro", zero_division=0))
            # Early stopping watches accuracy and macro-F1 together, so rare classes count too. (Validation loss
            # is a poor monitor here: class-weighted training shifts it away from the best classifier.)
            row["val_score"] = (row["val_accuracy"] + row["val_macro_f1"]) / 2
        result.history.append(row)
        own_bar.update(1)
        own_bar.set_postfix({k: round(v, 4) for k, v in row.items() if k != "epoch"})
        if bar is not None:
            bar.update(1)
        log.debug("epoch %s", row)
        if cfg.patience is not None and "val_score" in row:
            if row["val_score"] > best_score + 1e-4:
                best_score, best_state, bad_epochs = row["val_score"], copy.deepcopy(net.state_dict()), 0
                result.best_epoch = epoch + 1
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience and epoch + 1 >= cfg.min_epochs:
                    log.info("early stopping after epoch %d (best %d)", epoch + 1, result.best_epoch)
                    break
    own_bar.close()
    if bar is not None:
        bar.update(cfg.epochs - len(result.history))  # epochs saved by early stopping
    if best_state is not None:
        net.load_state_dict(best_state)
    else:
        result.best_epoch = len(result.history)
    result.seconds = time.perf_counter() - start
    net.eval()
    return result


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): one scalar T minimising validation NLL of softmax(logits / T)."""
    if len(y) == 0:
        return 1.0
    z = torch.from_numpy(logits.astype(np.float32))
    target = torch.from_numpy(y)
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(z / log_t.exp(), target)
        loss.backward()
        return loss

    opt.step(closure)
    temperature = log_t.exp().item()
    if not np.isfinite(temperature):  # LBFGS can diverge on tiny or degenerate validation sets
        log.warning("temperature scaling did not converge; confidences are left uncalibrated")
        return 1.0
    return float(np.clip(temperature, 0.05, 20.0))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
