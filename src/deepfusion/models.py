"""The classifier network: one encoder per modality, a combiner that fuses them, a classifier on top.

A metadata-only or image-only model is the same network with a single modality, so all three models in the
comparison share one implementation, one training loop and one save format. Sparse inputs (title TF-IDF)
go through an ``EmbeddingBag`` in "sum" mode, which is exactly a linear layer on a sparse vector.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

# The network settings live with the rest of the model configuration (config.py).
from .config import COMBINERS, PRESETS, HeadConfig, make_config  # noqa: F401 - PRESETS, make_config: older imports


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


class SeededDropout(nn.Module):
    """Dropout that draws its masks from its own generator (set by the training loop), so networks trained in
    parallel threads stay reproducible: ``nn.Dropout`` draws from torch's global generator, shared by threads."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0:
            return x
        keep = torch.rand(x.shape, generator=self.generator, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ModalityEncoder(nn.Module):
    def __init__(self, spec: ModalitySpec, cfg: HeadConfig) -> None:
        super().__init__()
        self.sparse = spec.sparse
        if spec.sparse:
            self.project = nn.EmbeddingBag(spec.dim, cfg.encoder_dim, mode="sum")
            self.bias = nn.Parameter(torch.zeros(cfg.encoder_dim))
        else:
            self.input_dropout = SeededDropout(cfg.input_dropout if spec.name == "image" else 0.0)
            self.project = nn.Linear(spec.dim, cfg.encoder_dim)
        self.post = nn.Sequential(
            *([nn.BatchNorm1d(cfg.encoder_dim)] if cfg.batch_norm else []),
            nn.ReLU(),
            SeededDropout(cfg.dropout),
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
        self.n_classes = n_classes
        self.input_specs = list(modalities)
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
                SeededDropout(cfg.dropout),
            ]
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.classifier = nn.Sequential(*layers)
        # Sparse inputs: an EmbeddingBag in "sum" mode is a linear layer on a sparse vector.
        self.wide = nn.ModuleDict(
            {
                m.name: nn.EmbeddingBag(m.dim, n_classes, mode="sum")
                if m.sparse
                else nn.Linear(m.dim, n_classes, bias=False)
                for m in modalities
                if m.name in cfg.wide
            }
        )
        for layer in self.wide.values():
            nn.init.zeros_(layer.weight)

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
        for name, layer in self.wide.items():
            x = batch.inputs[name]
            linear = (
                layer(x.indices, x.offsets, per_sample_weights=x.weights) if isinstance(x, SparseBatch) else layer(x)
            )
            present = batch.present.get(name)
            logits = logits + (linear if present is None else linear * present[:, None])
        return logits


class FusionEnsemble(nn.Module):
    """Networks of one architecture trained from different seeds; predicts the mean of their logits."""

    def __init__(self, members: list[FusionNet]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.n_classes = members[0].n_classes
        self.input_specs = members[0].input_specs

    def forward(self, batch: Batch) -> torch.Tensor:
        return torch.stack([member(batch) for member in self.members]).mean(dim=0)


def build_network(modalities: list[ModalitySpec], n_classes: int, cfg: HeadConfig) -> FusionNet | FusionEnsemble:
    """The network for ``cfg``: one ``FusionNet``, or an ensemble of ``cfg.members`` of them."""
    if cfg.members > 1:
        return FusionEnsemble([FusionNet(modalities, n_classes, cfg) for _ in range(cfg.members)])
    return FusionNet(modalities, n_classes, cfg)
