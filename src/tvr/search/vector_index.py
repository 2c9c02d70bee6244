"""A faiss inner-product index over unit vectors, exact by default and approximate for very large galleries.

``VectorIndex.build(vectors)`` gives exact search (faiss ``Flat``); any faiss factory string, e.g.
``"IVF1024,PQ64"``, gives an approximate index that is trained on the indexed vectors themselves; a
refine stage (``",RFlat"`` or ``",Refine(SQ8)"``) re-scores ``refine_factor x k`` of its candidates with
(near-)exact vectors. The factory string and the search settings travel with a saved index (in a JSON
file beside it), because faiss's own file cannot say which factory string built it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import faiss
import numpy as np
import torch

from tvr.atomic import replacing, write_json
from tvr.errors import UserInputError

log = logging.getLogger(__name__)

# faiss's k-means warns below this many training vectors per centroid (Clustering's default
# max_points_per_centroid is 256; its warning threshold is 39 per centroid).
RECOMMENDED_TRAINING_VECTORS_PER_LIST = 39


class VectorIndexSettingsError(UserInputError):
    """A factory string, nprobe or refine factor that cannot work (on these vectors); a user's setting, so
    ``tvr-search`` reports it in one line."""


def as_float32_matrix(vectors: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """A C-contiguous float32 ``[N, D]`` numpy view or copy, which is what faiss's Python API expects."""
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().cpu().numpy()
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] array, got shape {tuple(matrix.shape)}")
    return matrix


class VectorIndex:
    """A faiss inner-product index over unit vectors [N, D] (float32): exact ("Flat", the default) or any
    faiss factory string such as "IVF1024,PQ64" for very large galleries (trained on the indexed vectors)."""

    def __init__(self, index: faiss.Index, factory: str, nprobe: int, refine_factor: int) -> None:
        self._index = index
        self.factory = factory
        self._ivf = faiss.try_extract_index_ivf(index)
        outer = faiss.downcast_index(index)
        self._refine = outer if isinstance(outer, faiss.IndexRefine) else None
        # The stored vectors of an exact index, viewed (not copied) for the BLAS path of `search`.
        self._flat_vectors = _flat_vectors(outer) if isinstance(outer, faiss.IndexFlat) else None
        self.nprobe = nprobe
        self.refine_factor = refine_factor

    @property
    def nprobe(self) -> int:
        """Inverted lists an IVF index visits per query; settable, so a sweep needs no rebuild."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        _check_nprobe(value)
        self._nprobe = value
        if self._ivf is not None:
            self._ivf.nprobe = value

    @property
    def refine_factor(self) -> int:
        """How many times ``k`` candidates a refine stage re-scores; settable like ``nprobe``."""
        return self._refine_factor

    @refine_factor.setter
    def refine_factor(self, value: int) -> None:
        _check_refine_factor(value)
        self._refine_factor = value
        if self._refine is not None:
            self._refine.k_factor = value

    @classmethod
    def build(
        cls,
        vectors: np.ndarray | torch.Tensor,
        factory: str = "Flat",
        nprobe: int = 16,
        train_size: int | None = None,
        seed: int = 0,
        refine_factor: int = 1,
    ) -> "VectorIndex":
        """Index ``vectors``; an index that needs training is trained on ``train_size`` of them (a seeded
        random subset; all of them by default). ``nprobe`` is how many inverted lists an IVF index visits
        per query; ``refine_factor`` how many times ``k`` candidates a refine stage re-scores (faiss's
        ``k_factor``; at 1 it only re-orders the ``k`` it returns). Indexes without lists or a refine stage
        ignore them."""
        matrix = as_float32_matrix(vectors, "vectors")
        if matrix.shape[0] == 0:
            raise ValueError("vectors is empty: an index needs at least one vector")
        # Checked here too, so that a bad setting fails before a long training rather than after it.
        _check_nprobe(nprobe)
        _check_refine_factor(refine_factor)
        if train_size is not None and train_size < 1:
            raise ValueError(f"train_size={train_size} must be at least 1, or None to train on every vector")
        index = _create(matrix.shape[1], factory)
        if not index.is_trained:
            _train(index, _training_subset(matrix, train_size, seed), factory)
        index.add(matrix)
        return cls(index, factory, nprobe, refine_factor)

    @property
    def ntotal(self) -> int:
        return self._index.ntotal

    @property
    def dim(self) -> int:
        return self._index.d

    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (float32) and ids (int64), each ``[Nq, min(k, ntotal)]``, best first. An approximate index
        that finds fewer than that many vectors for a query pads its row with id -1 (faiss's convention)."""
        matrix = as_float32_matrix(queries, "queries")
        if matrix.shape[1] != self.dim:
            raise ValueError(
                f"queries have dimension {matrix.shape[1]} but the index holds {self.dim}-d vectors; "
                "encode the queries with the model that built the index"
            )
        if k < 1:
            raise ValueError(f"k={k} must be at least 1")
        k = min(k, self.ntotal)
        if self._flat_vectors is not None and len(matrix) < faiss.cvar.distance_compute_blas_threshold:
            # faiss scans so few queries with one SIMD loop per query on one thread each, which reached
            # about half the memory bandwidth on the 2-core benchmark machine (tools/bench_search.py); a
            # BLAS matrix product streams the stored vectors at close to the full bandwidth.
            top = torch.topk(torch.from_numpy(matrix @ self._flat_vectors.T), k, dim=1)
            return top.values, top.indices
        scores, ids = self._index.search(matrix, k)
        return torch.from_numpy(scores), torch.from_numpy(ids)

    def memory_bytes(self) -> int:
        """The index's size as faiss serialises it, which tracks its resident size (vectors or codes, lists,
        quantizers) without depending on the allocator; it briefly holds one serialised copy."""
        return int(faiss.serialize_index(self._index).nbytes)

    def save(self, path: str | os.PathLike) -> None:
        """Write the faiss index to ``path`` and its settings to ``path.json``, each atomically, so that a
        crash never leaves a half-written file under either name."""
        path = Path(path)
        settings = {
            "factory": self.factory,
            "nprobe": self.nprobe,
            "refine_factor": self.refine_factor,
            "ntotal": self.ntotal,
            "dim": self.dim,
        }
        with replacing(path) as index_tmp:
            faiss.write_index(self._index, str(index_tmp))
        write_json(_settings_path(path), settings, indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "VectorIndex":
        path = Path(path)
        settings = json.loads(_settings_path(path).read_text())
        index = faiss.read_index(str(path))
        # The two files are replaced one after the other; a crash in between pairs new settings with an
        # old index, which the sizes reveal.
        if (index.ntotal, index.d) != (settings["ntotal"], settings["dim"]):
            raise ValueError(
                f"{path} holds {index.ntotal} {index.d}-d vectors but {_settings_path(path)} describes "
                f"{settings['ntotal']} {settings['dim']}-d ones; the save was interrupted, so save the index again"
            )
        return cls(index, settings["factory"], settings["nprobe"], settings["refine_factor"])


def _settings_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _check_nprobe(nprobe: int) -> None:
    if nprobe < 1:
        raise VectorIndexSettingsError(
            f"nprobe={nprobe} must be at least 1 (the number of inverted lists searched per query)"
        )


def _check_refine_factor(refine_factor: int) -> None:
    if refine_factor < 1:
        raise VectorIndexSettingsError(
            f"refine_factor={refine_factor} must be at least 1 (candidates re-scored per result)"
        )


def _flat_vectors(index: faiss.IndexFlat) -> np.ndarray:
    return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)


def _create(dim: int, factory: str) -> faiss.Index:
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise VectorIndexSettingsError(
            f"factory={factory!r} is not a faiss index factory string ({_faiss_reason(error)}); "
            "use e.g. 'Flat' for exact search or 'IVF1024,PQ64' for an approximate one"
        ) from error
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ):
        # The factory turns on polysemous training for "IVF...,PQ..." (off with a trailing "np"). It only
        # serves Hamming-filtered search (polysemous_ht), which this class never enables, and with 64
        # sub-quantizers it took ~25x longer than the rest of a 100k build (458 s vs 17 s).
        faiss.downcast_index(ivf).do_polysemous_training = False
    return index


def _training_subset(matrix: np.ndarray, train_size: int | None, seed: int) -> np.ndarray:
    if train_size is None or train_size >= matrix.shape[0]:
        return matrix
    rows = np.random.default_rng(seed).choice(matrix.shape[0], size=train_size, replace=False)
    return matrix[np.sort(rows)]


def _train(index: faiss.Index, training: np.ndarray, factory: str) -> None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        if len(training) < ivf.nlist:
            raise VectorIndexSettingsError(
                f"factory={factory!r} has {ivf.nlist} inverted lists but only {len(training)} training vectors; "
                f"index at least {ivf.nlist} vectors (or raise train_size), or use fewer lists"
            )
        recommended = RECOMMENDED_TRAINING_VECTORS_PER_LIST * ivf.nlist
        if len(training) < recommended:
            log.warning(
                "factory=%r trains %d inverted lists on %d vectors; faiss recommends at least %d, so the "
                "lists (and recall) may be poor",
                factory,
                ivf.nlist,
                len(training),
                recommended,
            )
    try:
        index.train(training)
    except RuntimeError as error:
        # Quantizers inside the factory (e.g. PQ's 256 codewords per sub-vector) have minimums of their own.
        raise VectorIndexSettingsError(
            f"factory={factory!r} cannot be trained on {len(training)} vectors ({_faiss_reason(error)}); "
            "index more vectors (or raise train_size), or choose a smaller factory"
        ) from error


def _faiss_reason(error: RuntimeError) -> str:
    """faiss's messages start with the C++ function signature; the part after the last ': ' says why."""
    return str(error).strip().rsplit(": ", 1)[-1]
