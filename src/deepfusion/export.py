"""Export a trained model folder for production: ONNX graphs plus JSON, read by ``deepfusion.runtime``.

    from deepfusion.export import export_model
    export_model("RUN/fusion", "exported/")          # then: ExportedModel.load("exported/") on the serving host

Export runs in the training environment (it loads the model with torch); the folder it writes needs only
onnxruntime, numpy and Pillow to predict (``deepfusion.runtime``). It holds:

* ``main.onnx``: the network for products with a title (or the only network). The title enters as padded
  (index, value) pairs of its TF-IDF vector, ``title_indices`` / ``title_values`` (batch x tokens), instead of
  a dense vector: the title encoder, its wide path and the stacked SVM are then gathers of the few rows a title
  touches, not products with the whole (vocabulary x width) weight matrices. The stacked SVM's scores are
  computed inside the graph, so its inputs are only the modalities and one ``present_<modality>`` mask each.
* ``fallback.onnx``: the no-title network (when the model has one), fed the same way without the title.
* ``no_metadata.onnx``: the route for products with a title but no attribute at all (when the model has one):
  its title-only SVM and, for products with an image, its title + image linear model, calibrated (mixing.py); a
  model saved by an earlier version also has its network and image expert in this graph.
* ``backbone.onnx``: the image backbone, the very file the training embedder runs (image models only).
* ``sentence.onnx`` + ``sentence_tokenizer.json``: with a sentence model (sentence.py), its transformer with mean
  pooling and unit length, and its tokenizer, run by onnxruntime and the ``tokenizers`` package; the embedding
  joins the title's (index, value) pairs after its TF-IDF columns, so the networks' graphs are unchanged.
* ``preprocessing.json``: the model folder's own (labels, metadata encoder, title vocabularies and idfs, image
  scaling), copied unchanged; ``runtime.py`` reimplements the encoders in numpy from it.
* ``manifest.json``: format, classes, the catalog fields, per network its file, inputs and temperature, the
  image preprocessing, the review threshold, for a category tree its levels, path spelling and decoding
  (``tree``), and every file's size and SHA-256.

Every graph is checked against the torch network on a sample batch before the folder is written; the folder is
built in a temporary sibling and moved into place, so a failed export leaves nothing half-written behind.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from . import __version__
from .catalog import ID, TITLE
from .inputs import IMAGE_CLIP, stacking_features
from .mixing import ExpertMix, LinearScores
from .model_files import read_config, validate_model_folder
from .models import Batch, FusionEnsemble, FusionNet, ModalitySpec, SparseBatch
from .predictor import Predictor
from .text_scores import TextScoreModel

log = logging.getLogger(__name__)

EXPORT_FORMAT = "deepfusion-export"
# Bump with runtime.EXPORT_VERSION when the folder layout or a graph's inputs change (2: no_metadata.onnx).
EXPORT_VERSION = 2
OPSET = 17
MANIFEST = "manifest.json"
# What an export folder may hold: an existing folder with anything else in it is refused, never cleaned.
EXPORT_FILES = frozenset(
    {MANIFEST, "main.onnx", "fallback.onnx", "no_metadata.onnx", "backbone.onnx", "preprocessing.json", "metrics.json",
     "sentence.onnx", "sentence_tokenizer.json"}
)
# ONNX against torch on the sample batch; float32 sums in another order differ by far less.
CHECK_ATOL = 1e-4


class ExportError(Exception):
    """A model that cannot be exported, or an output folder that cannot be written; the message says why."""


# ---------------------------------------------------------------------------------------------- graphs
class _PaddedBag(nn.Module):
    """``EmbeddingBag(mode="sum")`` over padded (batch, tokens) index / weight pairs: a Gather, a Mul and a
    ReduceSum in ONNX. Padding is index 0 with weight 0, which adds nothing. Called like an EmbeddingBag, so
    FusionNet's own forward runs unchanged (``offsets`` is unused: every row is one bag)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)

    def forward(
        self, indices: torch.Tensor, offsets: torch.Tensor | None = None, per_sample_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        assert per_sample_weights is not None
        return (self.weight[indices] * per_sample_weights.unsqueeze(-1)).sum(dim=1)


def _pad_bags(module: nn.Module) -> nn.Module:
    """``module`` with every EmbeddingBag in it (sparse encoders, wide paths, linear text scores) replaced, in
    place, by a ``_PaddedBag`` over the same weights: the export feeds every sparse input as padded pairs."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.EmbeddingBag):
                setattr(parent, name, _PaddedBag(child.weight))
    return module


def _padded_copy(net: FusionNet | FusionEnsemble | ExpertMix) -> FusionNet | FusionEnsemble | ExpertMix:
    """A copy of ``net`` whose EmbeddingBags take padded index / value pairs."""
    return _pad_bags(copy.deepcopy(net).eval())


def _text_scores(model: TextScoreModel, title_dim: int, metadata_dim: int) -> LinearScores:
    """A stacked SVM (text_scores.py) as a graph: (title TF-IDF, then the metadata encoding if it reads it). The
    main network's SVM reads title + metadata; the no-metadata route's reads the title alone."""
    if model.coef_.ndim != 2 or model.coef_.shape[1] != title_dim + metadata_dim:
        raise ExportError(
            f"a text-score model reads {model.coef_.shape[-1]} features, but the title encoder has {title_dim}"
            + (f" and the metadata encoder {metadata_dim}" if metadata_dim else "")
        )
    return _pad_bags(LinearScores(model.coef_, model.intercept_, model.scale_, title_dim, "metadata"))


class _ExportGraph(nn.Module):
    """Flat named tensors in, logits out: what an ONNX graph needs. Builds the ``Batch`` the network reads."""

    def __init__(self, net: FusionNet | FusionEnsemble | ExpertMix, text_scores: LinearScores | None) -> None:
        super().__init__()
        self.net = _padded_copy(net)
        self.text_scores = text_scores
        self.specs: list[ModalitySpec] = list(net.input_specs)
        self.modalities = [s.name for s in self.specs if s.name != "text_scores"]
        if "text_scores" in {s.name for s in self.specs} and (text_scores is None or "title" not in self.modalities):
            raise ExportError("the network reads stacked text scores but the model has no text-score model or title")
        self.input_names = input_names(self.specs)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        given = dict(zip(self.input_names, tensors, strict=True))
        inputs: dict[str, torch.Tensor | SparseBatch] = {}
        present: dict[str, torch.Tensor] = {}
        for spec in self.specs:
            if spec.name == "text_scores":
                continue
            if spec.sparse:
                inputs[spec.name] = SparseBatch(given[f"{spec.name}_indices"], None, given[f"{spec.name}_values"])
            else:
                inputs[spec.name] = given[spec.name]
            present[spec.name] = given[f"present_{spec.name}"]
        if self.text_scores is not None and any(s.name == "text_scores" for s in self.specs):
            inputs["text_scores"] = self.text_scores(Batch(inputs, present))
            present["text_scores"] = present["title"]  # without a title its scores are not trusted (predictor)
        return self.net(Batch(inputs, present))


def input_names(specs: list[ModalitySpec]) -> list[str]:
    """The graph's input names for a network's specs: each modality's tensor(s), then one mask per modality."""
    names: list[str] = []
    modalities = [s for s in specs if s.name != "text_scores"]
    for spec in modalities:
        names += [f"{spec.name}_indices", f"{spec.name}_values"] if spec.sparse else [spec.name]
    return names + [f"present_{s.name}" for s in modalities]


def _sample_inputs(specs: list[ModalitySpec], rows: int = 5, tokens: int = 7, seed: int = 0) -> dict[str, np.ndarray]:
    """A small batch for tracing and checking: random values, masks that mix present and absent, and padding."""
    rng = np.random.default_rng(seed)
    sample: dict[str, np.ndarray] = {}
    modalities = [s for s in specs if s.name != "text_scores"]
    for spec in modalities:
        if spec.sparse:
            idx = rng.integers(0, spec.dim, size=(rows, tokens), dtype=np.int64)
            values = rng.random((rows, tokens), dtype=np.float32)
            values[:, -2:] = 0.0  # padding as the runtime writes it: index 0, value 0
            idx[:, -2:] = 0
            sample[f"{spec.name}_indices"], sample[f"{spec.name}_values"] = idx, values
        else:
            sample[spec.name] = rng.normal(size=(rows, spec.dim)).astype(np.float32)
    for j, spec in enumerate(modalities):
        mask = np.ones(rows, dtype=bool)
        mask[(j + 1) % rows] = False
        sample[f"present_{spec.name}"] = mask
    return sample


# The text scores a network reads, as the predictor computes them: (title TF-IDF, metadata or None) -> scores.
ScoreFn = Callable[[sp.csr_matrix, np.ndarray | None], np.ndarray]


def _reference_logits(
    net: FusionNet | FusionEnsemble | ExpertMix, sample: dict[str, np.ndarray], scores: ScoreFn | None
) -> np.ndarray:
    """The torch network's logits for ``sample``, through the predictor's own code: sparse inputs as
    EmbeddingBag bags and the text scores from the fitted ``TextScoreModel`` (``scores``)."""
    inputs: dict[str, Any] = {}
    present: dict[str, torch.Tensor] = {}
    csr: dict[str, sp.csr_matrix] = {}
    for spec in net.input_specs:
        if spec.name == "text_scores":
            continue
        if spec.sparse:
            idx, values = sample[f"{spec.name}_indices"], sample[f"{spec.name}_values"]
            rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
            # Summed duplicates are exactly what the padded bag computes (padding adds an explicit zero).
            csr[spec.name] = sp.csr_matrix((values.ravel(), (rows, idx.ravel())), shape=(idx.shape[0], spec.dim))
            m = csr[spec.name]
            inputs[spec.name] = SparseBatch(
                torch.from_numpy(m.indices.astype(np.int64)),
                torch.from_numpy(m.indptr[:-1].astype(np.int64)),
                torch.from_numpy(m.data.astype(np.float32)),
            )
        else:
            inputs[spec.name] = torch.from_numpy(sample[spec.name])
        present[spec.name] = torch.from_numpy(sample[f"present_{spec.name}"])
    if any(s.name == "text_scores" for s in net.input_specs):
        assert scores is not None
        inputs["text_scores"] = torch.from_numpy(scores(csr["title"], sample.get("metadata")))
        present["text_scores"] = present["title"]
    with torch.no_grad():
        return net.eval()(Batch(inputs, present)).numpy()


def _export_graph(
    net: FusionNet | FusionEnsemble | ExpertMix,
    text_scores: LinearScores | None,
    file: Path,
    scores: ScoreFn | None = None,
) -> list[str]:
    """Write ``net`` as an ONNX graph to ``file`` and check it against torch (``scores``: the text scores it
    reads, computed as the predictor does); returns the graph's input names."""
    import onnxruntime as ort

    graph = _ExportGraph(net, text_scores).eval()
    sample = _sample_inputs(graph.specs)
    args = tuple(torch.from_numpy(sample[name]) for name in graph.input_names)
    dynamic = {
        name: {0: "batch", 1: "tokens"} if name.endswith(("_indices", "_values")) else {0: "batch"}
        for name in graph.input_names
    }
    with warnings.catch_warnings(), torch.no_grad():  # the exporter's deprecation chatter is not actionable
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            args,
            str(file),
            input_names=graph.input_names,
            output_names=["logits"],
            dynamic_axes={**dynamic, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    # The exporter drops an input the graph never reads (the no-metadata route's linear models ignore the title's
    # mask): the manifest lists what the graph takes, and the runtime feeds exactly that.
    names = [i.name for i in session.get_inputs()]
    got = session.run(["logits"], {name: sample[name] for name in names})[0]
    expected = _reference_logits(net, sample, scores)
    diff = float(np.abs(got - expected).max()) if got.size else 0.0
    if not diff <= CHECK_ATOL * max(1.0, float(np.abs(expected).max())):
        raise ExportError(f"{file.name}: the ONNX graph differs from the torch network by {diff:.2e}")
    log.info("%s matches the torch network (max abs diff %.2e)", file.name, diff)
    return names


# ---------------------------------------------------------------------------------------------- folder
def _file_entry(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _check_out_dir(out_dir: Path, model_dir: Path) -> None:
    """Refuse an output folder that holds anything an export does not write (it is the user's, not ours)."""
    if out_dir.resolve() == model_dir.resolve():
        raise ExportError(f"{out_dir} is the model folder itself; export into another folder.")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in EXPORT_FILES or not p.is_file())
        if not foreign and _manifest_format(out_dir / MANIFEST) != EXPORT_FORMAT:
            foreign = sorted(p.name for p in out_dir.iterdir())  # export's file names, but no export's manifest
        if foreign:
            raise ExportError(
                f"{out_dir} already holds files that are not an exported model ({', '.join(foreign[:5])}); "
                "export into an empty or new folder."
            )


def _manifest_format(path: Path) -> object:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest.get("format") if isinstance(manifest, dict) else None


def export_model(model_dir: str | Path, out_dir: str | Path, *, cache_dir: str | Path | None = None) -> Path:
    """Export the model saved in ``model_dir`` (a folder written by ``Predictor.save``) to ``out_dir``, which
    is created, or replaced if it holds an earlier export. ``cache_dir``: where the backbone's ONNX file is (or
    is exported to), as for training. Returns ``out_dir``. Raises ``ModelLoadError`` for a folder that is not a
    valid model and ``ExportError`` when the export cannot be written or does not match the torch model."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    validate_model_folder(model_dir)
    _check_out_dir(out_dir, model_dir)
    predictor = Predictor.load(model_dir, cache_dir=cache_dir, progress=False)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Not mkdtemp: its folder is private (0700), and the export should get the usual permissions.
    tmp = out_dir.parent / f".{out_dir.name}.export-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        manifest = _write_export(predictor, model_dir, tmp)
        files = sorted(p.name for p in tmp.iterdir())
        manifest["files"] = {name: _file_entry(tmp / name) for name in files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)  # checked above: it holds only an earlier export's files
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s to %s (%s)", model_dir, out_dir, ", ".join(sorted(manifest["files"])))
    return out_dir


# The TfidfVectorizer settings runtime.TfidfAnalyzer implements, and the values it supports for the others.
_TFIDF_SETTINGS = ("analyzer", "ngram_range", "lowercase", "token_pattern", "sublinear_tf", "norm")
_TFIDF_FIXED = {
    "binary": False,
    "use_idf": True,
    "strip_accents": None,
    "stop_words": None,
    "preprocessor": None,
    "tokenizer": None,
    "input": "content",
}


def tfidf_settings(vectorizers: Sequence[Any]) -> list[dict[str, Any]]:
    """The settings of fitted ``TfidfVectorizer``s that runtime.TfidfAnalyzer needs; refuses settings it does not
    implement, so a change to features.TitleEncoder fails the export instead of silently changing predictions."""
    settings = []
    for vec in vectorizers:
        params = vec.get_params()
        odd = {k: params[k] for k, v in _TFIDF_FIXED.items() if params.get(k) != v}
        if odd or params["analyzer"] not in ("word", "char_wb") or params["norm"] not in ("l2", None):
            raise ExportError(f"the title encoder uses TF-IDF settings the runtime does not implement: {odd or params}")
        settings.append({k: list(params[k]) if k == "ngram_range" else params[k] for k in _TFIDF_SETTINGS})
    return settings


class _SentenceGraph(nn.Module):
    """A sentence-transformers model as one graph: token ids and mask in, the mean of the token embeddings over the
    mask, at unit length, out (what SentenceEncoder computes)."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return mean / mean.norm(dim=1, keepdim=True).clamp(min=1e-12)


# Titles the exported sentence model is checked on: short, long (truncated), with symbols and accents.
_SENTENCE_CHECK = [
    "Hornby 00 Gauge Steam Locomotive",
    "FunkyBuys® Large Christmas Holiday Express Festive Train Set (SI-TY1017) Toy Light / Sounds",
    "Café crème — élégant " * 60,
    "x",
]


def _export_sentence(sentence: Any, folder: Path) -> dict[str, Any]:
    """Write the sentence model as sentence.onnx and its tokenizer; check the runtime's embedding (tokenizers +
    onnxruntime) against the model's own on sample titles."""
    import onnxruntime as ort

    from .runtime import SentenceRuntime
    from .sentence import MAX_CHARS

    model = sentence.model
    modules = list(model)
    pooling = modules[1] if len(modules) > 1 else None
    mode = (pooling.get_config_dict() if hasattr(pooling, "get_config_dict") else {}).get("pooling_mode")
    if (
        len(modules) < 2
        or not hasattr(modules[0], "auto_model")
        or mode != "mean"
        or any(type(m).__name__ != "Normalize" for m in modules[2:])
    ):
        raise ExportError(
            f"the sentence model {sentence.name!r} is not a transformer with mean pooling, the only kind the runtime "
            "runs; serve the model folder itself (deepfusion serve MODEL)."
        )
    tokenizer = Path(str(sentence.source)) / "tokenizer.json"
    if not tokenizer.is_file():
        raise ExportError(f"the sentence model {sentence.name!r} has no tokenizer.json (a fast tokenizer) to export.")
    shutil.copyfile(tokenizer, folder / "sentence_tokenizer.json")
    spec = {
        "file": "sentence.onnx",
        "tokenizer": "sentence_tokenizer.json",
        "max_length": int(model.max_seq_length),
        "dim": int(sentence.dim),
        "weight": float(sentence.weight),
        "max_chars": MAX_CHARS,
    }
    ids = torch.ones((2, 8), dtype=torch.int64)
    graph = _SentenceGraph(modules[0].auto_model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (ids, torch.ones_like(ids)),
            str(folder / "sentence.onnx"),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                          "embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    session = ort.InferenceSession(str(folder / "sentence.onnx"), providers=["CPUExecutionProvider"])
    runtime = SentenceRuntime(session, folder / "sentence_tokenizer.json", spec)
    got, want = runtime.embed(_SENTENCE_CHECK), sentence.encode(_SENTENCE_CHECK)
    if not np.allclose(got, want, atol=CHECK_ATOL, rtol=0):
        raise ExportError(
            f"the exported sentence model differs from {sentence.name!r} by up to {np.abs(got - want).max():.2e}"
        )
    return spec


def _write_export(predictor: Predictor, model_dir: Path, folder: Path) -> dict[str, Any]:
    """Write the graphs and JSON of ``predictor`` into ``folder``; returns the manifest (without ``files``)."""
    config = read_config(model_dir)
    cfg = predictor.config_
    has_title = "title" in cfg.modalities
    n_title = predictor.title_encoder_.n_features if has_title else 0
    n_metadata = predictor.metadata_encoder_.n_features if "metadata" in cfg.modalities else 0
    text = main_scores = None
    if cfg.uses_stacking:
        text = _text_scores(predictor.text_model_, n_title, n_metadata)

        def main_scores(title: sp.csr_matrix, metadata: np.ndarray | None) -> np.ndarray:
            return predictor.text_model_.scores(stacking_features(title, metadata))

    title = {"vectorizers": tfidf_settings(predictor.title_encoder_.vectorizers_)} if has_title else None
    if has_title and predictor.title_encoder_.sentence is not None:
        title["sentence"] = _export_sentence(predictor.title_encoder_.sentence, folder)
    networks: dict[str, Any] = {
        "main": {
            "file": "main.onnx",
            "modalities": list(cfg.modalities),
            # The mix (mixing.py): the network with the stacked SVM's scores, calibration included.
            "inputs": _export_graph(predictor.main_mix_, text, folder / "main.onnx", main_scores),
            "output": "logits",
            "temperature": 1.0,
            "network_temperature": float(predictor.temperature_),  # the network's own, for /v1/model
            "text_scores": "title+metadata" if text is not None else None,
        }
    }
    if cfg.uses_title_fallback:
        networks["fallback"] = {
            "file": "fallback.onnx",
            "modalities": list(cfg.fallback_modalities),
            "inputs": _export_graph(predictor.fallback_net_, None, folder / "fallback.onnx"),
            "output": "logits",
            "temperature": float(predictor.fallback_temperature_),
            "text_scores": None,
        }
    if cfg.uses_metadata_fallback:
        # Products with a title and no attribute (Predictor._logits): title (+ image) and the title-only SVM.
        title_only = _text_scores(predictor.title_text_model_, n_title, 0)

        def title_scores(title: sp.csr_matrix, metadata: np.ndarray | None) -> np.ndarray:
            return predictor.title_text_model_.scores(title)

        networks["no_metadata"] = {
            "file": "no_metadata.onnx",
            "modalities": list(cfg.no_metadata_modalities),
            # The route's mix (mixing.py): its linear models (and an older model's networks), calibration included.
            "inputs": _export_graph(predictor.no_metadata_mix_, title_only, folder / "no_metadata.onnx", title_scores),
            "output": "logits",
            "temperature": 1.0,
            "text_scores": "title",
        }
    shutil.copyfile(model_dir / "preprocessing.json", folder / "preprocessing.json")
    if (model_dir / "metrics.json").is_file():
        shutil.copyfile(model_dir / "metrics.json", folder / "metrics.json")
    image = None
    if "image" in cfg.modalities:
        embedder = predictor.image_embedder()
        source = embedder.onnx_file()
        shutil.copyfile(source, folder / "backbone.onnx")
        image = {
            "file": "backbone.onnx",
            "backbone": embedder.spec.name,
            "input": "images",
            "output": "features",
            "size": list(embedder.image_size),  # (height, width)
            "mean": list(embedder.spec.mean),
            "std": list(embedder.spec.std),
            "dim": embedder.dim,
            "clip": IMAGE_CLIP,
            # The backbone.onnx holds the folder's own weights (fine-tuned, or given with --weights).
            "finetuned": bool(config["config"]["image"].get("weights")),
        }
    manifest: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "deepfusion_version": __version__,
        "model_format_version": config.get("format_version"),
        "classes": list(predictor.classes_),
        "modalities": list(cfg.modalities),
        "fields": _fields(predictor),
        "schema": predictor.schema_.to_json(),
        "preprocessing": "preprocessing.json",
        "networks": networks,
        "title": title,
        "text_scores": "in main.onnx" if text is not None else None,
        "image": image,
    }
    if "review_threshold" in config:
        manifest["review_threshold"] = float(config["review_threshold"])
    manifest["tree"] = _tree(predictor)
    return manifest


def _tree(predictor: Predictor) -> dict[str, Any] | None:
    """What the runtime needs for a tree label's per-level answers (Predictor.level_columns): the level names,
    the joiner that splits a class into its path (and a path label's separator, which it holds), and the
    decoding; None for a flat label."""
    tax = predictor.taxonomy
    if not tax.is_tree:
        return None
    return {"levels": tax.level_names, "sep": tax.sep, "display": tax.display, "decode": predictor.decode}


def _fields(predictor: Predictor) -> dict[str, Any]:
    """The product fields the runtime reads: the products frame's id and text columns (``text``: the catalog's text
    columns, combined as schema.combine_text when a product has no ``title`` field) and the model's attributes."""
    encoder = getattr(predictor, "metadata_encoder_", None)
    schema = predictor.schema_
    return {
        "id": ID,
        "id_column": schema.id,
        "title": TITLE,
        "text": list(schema.text),
        "categorical": list(encoder.categorical if encoder is not None else schema.categorical),
        "numeric": list(encoder.numeric if encoder is not None else schema.numeric),
        "numbers": "plain" if schema.is_fashion else "catalog",
    }
