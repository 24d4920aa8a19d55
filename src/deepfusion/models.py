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
    # score is noisy while the learning rate is high, and stopping then cost the image model accuracy
    # (an exploratory three-seed run on the real catalog, docs/experiments.md).
    min_epochs: int = 30
    label_smoothing: float = 0.0
    modality_dropout: float = 0.15
    combiner: str = "concat"
    # Wide & Deep: these inputs also get a direct linear path to the logits, so the network keeps a linear
    # classifier's strength (a TF-IDF + metadata linear SVM is hard to beat). Not the image: a linear map of 1904
    # image features overfits (docs/experiments.md).
    wide: tuple[str, ...] = ("title", "metadata", "text_scores")
    # Ensemble: this many networks trained from seeds seed, seed + 1, ... in parallel threads, one per CPU core
    # (so two members cost far less than twice one on two cores); the prediction is the mean of their logits.
    members: int = 2
    # Class imbalance: none | sqrt | inverse (loss weights ~ count^-1/2 or ^-1) | sampler (sqrt-weighted sampling).
    # On the real catalog none of them beat plain cross-entropy on macro-F1 by more than run-to-run noise, and
    # all cost accuracy (benchmarks/RESULTS.md), so the default is none.
    balance: str = "none"

    def to_json(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden), "wide": list(self.wide)}

    @classmethod
    def from_json(cls, state: dict) -> HeadConfig:
        wide = state.get("wide", ())
        if isinstance(wide, bool):  # models saved before dense inputs could have a wide path: title only
            wide = ("title",) if wide else ()
        return cls(
            **{**state, "hidden": tuple(state["hidden"]), "wide": tuple(wide), "members": state.get("members", 1)}
        )


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
        wide=("title",),
        members=1,
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
        wide=("title",),
        members=1,
    ),
    # The model to use: dropout, batch norm, weight decay, early stopping on validation, two networks averaged.
    "regularized": HeadConfig(),
}


def make_config(preset: str, **overrides: object) -> HeadConfig:
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset '{preset}'. Choose one of: {', '.join(PRESETS)}")
    # None means "not given" (the CLI passes every option), except for patience, where None turns early stopping off.
    given = {k: v for k, v in overrides.items() if v is not None or k == "patience"}
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
