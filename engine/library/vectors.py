"""In-memory vector indexes for the study library: exact cosine with numpy, FAISS for large sets.

Rows are unit-norm embeddings ``[n, dim]`` keyed by int64 ids (the library's study row ids), so
cosine similarity is the inner product. Two implementations with one shape of answer:

* :class:`ExactIndex` keeps one contiguous matrix (float32 or float16) and scores every row per
  query: ``rows @ queries.T`` then ``argpartition``. float32 uses numpy (BLAS); numpy has no fast
  float16 kernel (its float16 matmul and even its float16→float32 cast are much slower than the
  float32 matmul, docs/performance.md), so float16 rows are scored by torch's float16 kernel on the *same* memory
  (``torch.from_numpy``, no copy), falling back to chunked casts when torch is absent.
* :class:`FaissIndex` wraps ``faiss`` (imported lazily; ``faiss-cpu`` is optional): exact
  ``IndexFlatIP`` (``IndexScalarQuantizer`` fp16 for float16 libraries) below ``ivf_min_rows``
  rows, ``IndexIVFFlat`` with ``nlist = √n`` lists and ``nprobe`` probed lists above it
  (approximate: recall measured by ``bench/library_search.py``).

Ids stay sorted ascending in :class:`ExactIndex` (rows are appended with growing ids and a full
load sorts them), so ``positions()`` is a binary search.
"""

from __future__ import annotations

import math

import numpy as np

DTYPES = ("float32", "float16")
#: FAISS switches from exact flat search to IVF at this many rows (below it flat queries are fast
#: enough, docs/performance.md; IVF needs a training pass and trades recall for speed, see the bench).
IVF_MIN_ROWS = 1_000_000
IVF_NPROBE = 32
#: Rows of a sample used to estimate score statistics (mean/variance of q·v) when not every row is scored.
MOMENT_SAMPLE = 16_384


def check_dtype(dtype: str) -> np.dtype:
    if str(dtype) not in DTYPES:
        raise ValueError(f"vector dtype must be one of {DTYPES}, got {dtype!r}")
    return np.dtype(str(dtype))


class ExactIndex:
    """Contiguous ``[n, dim]`` matrix of unit rows + sorted int64 ids; exact inner-product scores."""

    def __init__(self, dim: int, dtype: str = "float32"):
        self.dim = int(dim)
        self.dtype = check_dtype(dtype)
        self._buf = np.empty((0, self.dim), self.dtype)
        self._ids = np.empty(0, np.int64)
        self._n = 0
        self._moments: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self._n]

    @property
    def rows(self) -> np.ndarray:
        """View ``[n, dim]`` of the stored rows (in the index dtype)."""
        return self._buf[: self._n]

    def reset(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Replace the contents (ids need not be sorted)."""
        ids = np.array(ids, np.int64)
        rows = np.asarray(rows)
        if len(ids) > 1 and not np.all(ids[1:] > ids[:-1]):  # already sorted (SQL ORDER BY): no copy
            order = np.argsort(ids, kind="stable")
            ids, rows = ids[order], rows[order]
        self._ids = ids
        self._buf = np.ascontiguousarray(rows, dtype=self.dtype).reshape(-1, self.dim)
        self._n = len(self._ids)
        self._moments = None

    def add(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Append rows; ids larger than every stored id keep the fast path, others re-sort."""
        ids = np.atleast_1d(np.asarray(ids, np.int64))
        rows = np.asarray(rows, dtype=self.dtype).reshape(len(ids), self.dim)
        if self._n and len(ids) and ids.min() <= self._ids[self._n - 1]:
            self.remove(ids)  # replacing existing ids, or out of order: rebuild sorted
            self.reset(np.concatenate([self.ids, ids]), np.concatenate([self.rows, rows]))
            return
        need = self._n + len(ids)
        if need > len(self._buf):  # amortised O(1) appends: double the capacity
            cap = max(need, 2 * len(self._buf), 64)
            buf = np.empty((cap, self.dim), self.dtype)
            buf[: self._n] = self.rows
            id_buf = np.empty(cap, np.int64)
            id_buf[: self._n] = self.ids
            self._buf, self._ids = buf, id_buf
        self._buf[self._n : need] = rows
        self._ids[self._n : need] = ids
        self._n = need
        self._moments = None

    def remove(self, ids: np.ndarray) -> None:
        keep = ~np.isin(self.ids, np.asarray(ids, np.int64))
        if keep.all():
            return
        self.reset(self.ids[keep], self.rows[keep])

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of ``ids``, -1 where absent."""
        ids = np.asarray(ids, np.int64)
        if self._n == 0:
            return np.full(len(ids), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids), self._n - 1)
        return np.where(self.ids[pos] == ids, pos, -1)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """Cosines ``[n, m]`` (float32) of every row with each of ``queries`` ``[m, dim]`` (unit rows)."""
        q = np.asarray(queries, np.float32).reshape(-1, self.dim)
        if self._n == 0:
            return np.empty((0, len(q)), np.float32)
        if self.dtype == np.float32:
            return self.rows @ q.T
        return _float16_scores(self.rows, q)

    def score_rows(self, positions: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Cosines ``[len(positions), m]`` for a subset of rows (exact re-scoring of candidates)."""
        q = np.asarray(queries, np.float32).reshape(-1, self.dim)
        return self.rows[positions].astype(np.float32) @ q.T

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean row [dim], second-moment matrix E[v vᵀ] [dim, dim]), float64, from ≤ MOMENT_SAMPLE rows.

        For a query q the library's cosines then have mean q·μ and variance qᵀCq − (q·μ)², which
        standardises a combined score without scoring every row (used with FAISS candidates).
        """
        if self._moments is None:
            step = max(1, math.ceil(self._n / MOMENT_SAMPLE))
            sample = self.rows[::step].astype(np.float64)
            if len(sample) == 0:
                self._moments = (np.zeros(self.dim), np.zeros((self.dim, self.dim)))
            else:
                self._moments = (sample.mean(axis=0), sample.T @ sample / len(sample))
        return self._moments


def _float16_scores(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    try:
        import torch
    except ImportError:  # numpy only: cast in cache-sized chunks (slow but exact)
        out = np.empty((len(rows), len(q)), np.float32)
        for s in range(0, len(rows), 8192):
            out[s : s + 8192] = rows[s : s + 8192].astype(np.float32) @ q.T
        return out
    with torch.no_grad():
        r = torch.from_numpy(rows)
        qt = torch.from_numpy(q.astype(np.float16))
        if len(q) == 1:
            return (r @ qt[0]).float().numpy()[:, None]
        return (r @ qt.T).float().numpy()


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest finite scores, best first (argpartition, then a small sort)."""
    finite = np.flatnonzero(np.isfinite(scores))
    if len(finite) == 0 or k <= 0:
        return np.empty(0, np.int64)
    if len(finite) < len(scores):
        sub = scores[finite]
    else:
        finite, sub = None, scores
    k = min(k, len(sub))
    part = np.argpartition(-sub, k - 1)[:k] if k < len(sub) else np.arange(len(sub))
    part = part[np.lexsort((part, -sub[part]))]  # by score, ties by position: deterministic
    return part if finite is None else finite[part]


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class FaissIndex:
    """FAISS inner-product index over ids: flat (exact) below ``ivf_min_rows`` rows, IVF above."""

    def __init__(
        self,
        dim: int,
        dtype: str = "float32",
        *,
        ivf_min_rows: int = IVF_MIN_ROWS,
        nprobe: int = IVF_NPROBE,
        nlist: int | None = None,
        seed: int = 0,
    ):
        import faiss  # lazily: faiss-cpu is an optional dependency

        self._faiss = faiss
        self.dim = int(dim)
        self.dtype = check_dtype(dtype)
        self.ivf_min_rows = int(ivf_min_rows)
        self.nprobe = int(nprobe)
        self.nlist = nlist
        self.seed = seed
        self.kind = "flat"
        self._index = self._flat()

    def _flat(self):
        faiss = self._faiss
        if self.dtype == np.float16:
            inner = faiss.IndexScalarQuantizer(
                self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
            )
        else:
            inner = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIDMap2(inner)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def build(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Rebuild from scratch: flat, or IVF (trained on a sample) when there are enough rows."""
        faiss = self._faiss
        ids = np.asarray(ids, np.int64)
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if len(ids) >= self.ivf_min_rows:
            nlist = self.nlist or max(1, int(round(math.sqrt(len(ids)))))
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(self.seed)
            n_train = min(len(ids), 40 * nlist)
            index.train(rows[np.sort(rng.choice(len(ids), n_train, replace=False))])
            index.nprobe = min(self.nprobe, nlist)
            self._quantizer = quantizer  # the index points at it: keep it alive as long as the index
            self.kind = "ivf"
        else:
            index = self._flat()
            self.kind = "flat"
        self._index = index
        if len(ids):
            self._add_chunks(ids, rows)

    def _add_chunks(self, ids: np.ndarray, rows: np.ndarray, chunk: int = 65_536) -> None:
        for s in range(0, len(ids), chunk):
            self._index.add_with_ids(
                np.ascontiguousarray(rows[s : s + chunk], np.float32), ids[s : s + chunk]
            )

    def add(self, ids: np.ndarray, rows: np.ndarray) -> None:
        self._add_chunks(np.asarray(ids, np.int64), np.asarray(rows, np.float32).reshape(-1, self.dim))

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        if len(ids):
            self._index.remove_ids(self._faiss.IDSelectorBatch(ids))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(cosines [m, k], ids [m, k]); missing results have id -1 and score -inf."""
        q = np.ascontiguousarray(np.asarray(queries, np.float32).reshape(-1, self.dim))
        k = max(1, min(int(k), len(self)))
        if len(self) == 0:
            return np.full((len(q), 0), -np.inf, np.float32), np.full((len(q), 0), -1, np.int64)
        sims, ids = self._index.search(q, k)
        sims = np.where(ids < 0, -np.inf, sims).astype(np.float32)
        return sims, ids
