"""The classifier network: one encoder per modality, a combiner that fuses them, a classifier on top.

A metadata-only or image-only model is the same network with a single modality, so all three models in the
comparison share one implementation, one training loop and one save format. Sparse inputs (title TF-IDF)
go through an ``EmbeddingBag`` in "sum" mode, which is exactly a linear layer on a sparse vector.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

COMBINERS = ("concat", "gated")


@dataclass(frozen=True)
class HeadConfig:
    """Architecture and training hyperparameters. Presets follow the reference study's diagnostic trio."""

    preset: str = "regularized"
    encoder_dim: int = 256
    hidden: tuple[int, ...] = (512,)
    dropout: float = 0.3
    input_dropout: float = 0.2  # on image embeddings only (dropout on one-hot metadata hurt accuracy)
    batch_norm: bool = True
    weight_decay: float = 1e-4
    lr: float = 2e-3
    epochs: int = 40
    batch_size: int = 256
    patience: int | None = 8
    # Early stopping may only end training after this many epochs: with the one-cycle schedule the validation
    # score is noisy while the learning rate is high, and stopping then cost the image model about half a point
    # (exploratory run, 3 seeds on the real catalog: 86.2% mean with patience alone, 86.7% with this floor).
    min_epochs: int = 30
    label_smoothing: float = 0.0
    modality_dropout: float = 0.15
    combiner: str = "concat"
    # Wide & Deep: sparse inputs (title TF-IDF) also get a direct linear path to the logits, so the network
    # keeps a linear text classifier's strength (a TF-IDF linear SVM is hard to beat on titles).
    wide: bool = True
    # Class imbalance: none | sqrt | inverse (loss weights ~ count^-1/2 or ^-1) | sampler (sqrt-weighted sampling).
    # On the real catalog none of them beat plain cross-entropy on macro-F1 by more than run-to-run noise, and
    # all cost accuracy (benchmarks/RESULTS.md), so the default is none.
    balance: str = "none"

    def to_json(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_json(cls, state: dict) -> HeadConfig:
        return cls(**{**state, "hidden": tuple(state["hidden"])})


PRESETS: dict[str, HeadConfig] = {
    # End-to-end check: a narrow network trained briefly.
    "small": HeadConfig(
        preset="small",
        encoder_dim=32,
        hidden=(64,),
        dropout=0.0,
        input_dropout=0.0,
        batch_norm=False,
        weight_decay=0.0,
        epochs=8,
        patience=None,
        label_smoothing=0.0,
        modality_dropout=0.0,
    ),
    # Diagnostic: large and unregularized; it should (nearly) memorise the training set.
    "overfit": HeadConfig(
        preset="overfit",
        encoder_dim=512,
        hidden=(1024, 512),
        dropout=0.0,
        input_dropout=0.0,
        batch_norm=False,
        weight_decay=0.0,
        lr=1e-3,
        epochs=80,
        patience=None,
        label_smoothing=0.0,
        modality_dropout=0.0,
        balance="none",
    ),
    # The model to use: dropout, batch norm, weight decay, early stopping on validation.
    "regularized": HeadConfig(),
}


def make_config(preset: str, **overrides: object) -> HeadConfig:
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset '{preset}'. Choose one of: {', '.join(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    if "combiner" in given and given["combiner"] not in COMBINERS:
        raise ValueError(f"Unknown combiner '{given['combiner']}'. Choose one of: {', '.join(COMBINERS)}")
    return replace(PRESETS[preset], **given)


@dataclass
class ModalitySpec:
    name: str
    dim: int
    sparse: bool = False


@dataclass
class SparseBatch:
    """CSR rows as EmbeddingBag inputs."""

    indices: torch.Tensor
    offsets: torch.Tensor
    weights: torch.Tensor


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor | SparseBatch]
    present: dict[str, torch.Tensor] = field(default_factory=dict)  # bool (B,) per modality


class ModalityEncoder(nn.Module):
    def __init__(self, spec: ModalitySpec, cfg: HeadConfig) -> None:
        super().__init__()
        self.sparse = spec.sparse
        if spec.sparse:
            self.project = nn.EmbeddingBag(spec.dim, cfg.encoder_dim, mode="sum")
            self.bias = nn.Parameter(torch.zeros(cfg.encoder_dim))
        else:
            self.input_dropout = nn.Dropout(cfg.input_dropout if spec.name == "image" else 0.0)
            self.project = nn.Linear(spec.dim, cfg.encoder_dim)
        self.post = nn.Sequential(
            *([nn.BatchNorm1d(cfg.encoder_dim)] if cfg.batch_norm else []),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
        )
        # Stands in for the encoding when the modality is absent for a product.
        self.missing = nn.Parameter(torch.zeros(cfg.encoder_dim))

    def forward(self, x: torch.Tensor | SparseBatch, present: torch.Tensor | None) -> torch.Tensor:
        if self.sparse:
            assert isinstance(x, SparseBatch)
            h = self.project(x.indices, x.offsets, per_sample_weights=x.weights) + self.bias
        else:
            h = self.project(self.input_dropout(x))
        h = self.post(h)
        if present is not None:
            h = torch.where(present[:, None], h, self.missing.expand_as(h))
        return h


class FusionNet(nn.Module):
    """Encoders per modality -> combiner -> MLP classifier."""

    def __init__(self, modalities: list[ModalitySpec], n_classes: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.names = [m.name for m in modalities]
        self.combiner = cfg.combiner
        self.encoders = nn.ModuleDict({m.name: ModalityEncoder(m, cfg) for m in modalities})
        if cfg.combiner == "gated":
            # Per-product softmax weights over modalities, computed from all encodings together.
            self.gate = nn.Linear(cfg.encoder_dim * len(modalities), len(modalities))
            width = cfg.encoder_dim
        else:
            width = cfg.encoder_dim * len(modalities)
        layers: list[nn.Module] = []
        for h in cfg.hidden:
            layers += [
                nn.Linear(width, h),
                *([nn.BatchNorm1d(h)] if cfg.batch_norm else []),
                nn.ReLU(),
                nn.Dropout(cfg.dropout),
            ]
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.classifier = nn.Sequential(*layers)
        self.wide = nn.ModuleDict(
            {m.name: nn.EmbeddingBag(m.dim, n_classes, mode="sum") for m in modalities if m.sparse and cfg.wide}
        )
        for bag in self.wide.values():
            nn.init.zeros_(bag.weight)

    def forward(self, batch: Batch) -> torch.Tensor:
        encoded = [self.encoders[n](batch.inputs[n], batch.present.get(n)) for n in self.names]
        if self.combiner == "gated":
            stacked = torch.stack(encoded, dim=1)  # (B, M, E)
            scores = self.gate(torch.cat(encoded, dim=1))
            if batch.present:
                present = torch.stack([batch.present[n] for n in self.names], dim=1)
                scores = scores.masked_fill(~present, -1e4)
            fused = (torch.softmax(scores, dim=1)[:, :, None] * stacked).sum(dim=1)
        else:
            fused = torch.cat(encoded, dim=1)
        logits = self.classifier(fused)
        for name, bag in self.wide.items():
            x = batch.inputs[name]
            assert isinstance(x, SparseBatch)
            linear = bag(x.indices, x.offsets, per_sample_weights=x.weights)
            present = batch.present.get(name)
            logits = logits + (linear if present is None else linear * present[:, None])
        return logits
