"""In-memory vector indexes for the study library: exact cosine with numpy, FAISS for large sets.

Rows are unit-norm embeddings ``[n, dim]`` keyed by int64 ids (the library's study row ids), so
cosine similarity is the inner product. Two implementations with one shape of answer:

* :class:`ExactIndex` keeps one contiguous matrix (float32 or float16) and scores every row per
  query: ``rows @ queries.T`` then ``argpartition``. float32 uses numpy (BLAS); numpy has no fast
  float16 kernel (its float16 matmul and even its float16→float32 cast are much slower than the
  float32 matmul, docs/performance.md), so float16 rows are scored by torch's float16 kernel on the *same* memory
  (``torch.from_numpy``, no copy), falling back to chunked casts when torch is absent.
* :class:`FaissIndex` wraps ``faiss`` (imported lazily; ``faiss-cpu`` is optional): exact
  ``IndexFlatIP`` below ``ivf_min_rows`` rows, an inverted-file index (``IndexIVFFlat``, or
  ``IndexIVFScalarQuantizer`` fp16 for float16 libraries, so it holds the library's own float16
  values) with ``nlist = √n`` lists and ``nprobe`` probed lists above it (approximate: recall
  measured by ``bench/library_search.py``). An IVF index can be saved to a file and loaded again
  (:meth:`FaissIndex.save`, :meth:`FaissIndex.load`: a header with the bundle hash, dim, dtype and
  a CRC-32 of the FAISS bytes), so a process does not train it again; :meth:`FaissIndex.sync` then
  checks every stored id and vector against the library's rows and mends the differences, so a
  file is never trusted, only reused where it agrees.

Ids stay sorted ascending in :class:`ExactIndex` (rows are appended with growing ids and a full
load sorts them), so ``positions()`` is a binary search.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np

from engine.atomic import atomic_write

DTYPES = ("float32", "float16")
#: FAISS switches from exact flat search to IVF at this many rows: below it an exact search is about as
#: fast as the IVF one (docs/performance.md); IVF needs a training pass and trades recall for speed.
IVF_MIN_ROWS = 20_000
#: Lists probed per query (of √n): recall@10 ≈ 0.99 on clustered rows (docs/performance.md); the least
#: :meth:`FaissIndex.calibrate` starts from.
IVF_NPROBE = 16
#: :meth:`FaissIndex.calibrate` probes more lists until recall@10 on the library's own rows reaches this.
RECALL_TARGET = 0.95
CALIBRATION_QUERIES = 64
#: An IVF index trained on n rows is trained again once the library holds 4n (or n/4): its √n lists
#: would be twice (half) the right size.
IVF_RETRAIN_FACTOR = 4
#: Saved-index file: magic line, one JSON header line, then the FAISS bytes.
FILE_MAGIC = b"SPEECHCT-FAISS-INDEX\n"
FILE_FORMAT = 1
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


class IndexFileError(Exception):
    """A saved FAISS index that cannot be used (missing, corrupt, or made for other vectors): rebuild it."""


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
        self.trained_rows = 0  # rows the IVF lists were trained on (0: flat)
        self.recall: float | None = None  # recall@10 measured by calibrate()
        self.unsaved = 0  # rows added or removed since the index was built, loaded or saved
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

    def fits(self, n: int) -> bool:
        """Whether this index is still the right kind and size for ``n`` rows (else build a new one)."""
        if self.kind == "flat":
            return n < self.ivf_min_rows
        f = IVF_RETRAIN_FACTOR
        return n >= self.ivf_min_rows and self.trained_rows / f <= n < self.trained_rows * f

    def build(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Rebuild from scratch: flat, or IVF (trained on a sample) when there are enough rows."""
        faiss = self._faiss
        ids = np.asarray(ids, np.int64)
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if len(ids) >= self.ivf_min_rows:
            nlist = self.nlist or max(1, int(round(math.sqrt(len(ids)))))
            quantizer = faiss.IndexFlatIP(self.dim)
            if self.dtype == np.float16:  # the library's float16 values as they are (no residuals)
                index = faiss.IndexIVFScalarQuantizer(
                    quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT, False
                )
            else:
                index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(self.seed)
            n_train = min(len(ids), 40 * nlist)
            index.train(rows[np.sort(rng.choice(len(ids), n_train, replace=False))])
            self._adopt_ivf(index, quantizer)
            self.trained_rows = len(ids)
        else:
            index = self._flat()
            self.kind = "flat"
            self.trained_rows = 0
            self._index = index
        self.unsaved = len(ids)
        if len(ids):
            self._add_chunks(ids, rows)

    def _adopt_ivf(self, index, quantizer) -> None:
        index.nprobe = min(self.nprobe, index.nlist)
        self._quantizer = quantizer  # the index points at it: keep it alive as long as the index
        self._index = index
        self.kind = "ivf"

    def _add_chunks(self, ids: np.ndarray, rows: np.ndarray, chunk: int = 65_536) -> None:
        for s in range(0, len(ids), chunk):
            self._index.add_with_ids(
                np.ascontiguousarray(rows[s : s + chunk], np.float32), ids[s : s + chunk]
            )

    def add(self, ids: np.ndarray, rows: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        self._add_chunks(ids, np.asarray(rows, np.float32).reshape(-1, self.dim))
        self.unsaved += len(ids)

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        if len(ids):
            self.unsaved += int(self._index.remove_ids(self._faiss.IDSelectorBatch(ids)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(cosines [m, k], ids [m, k]); missing results have id -1 and score -inf."""
        q = np.ascontiguousarray(np.asarray(queries, np.float32).reshape(-1, self.dim))
        k = max(1, min(int(k), len(self)))
        if len(self) == 0:
            return np.full((len(q), 0), -np.inf, np.float32), np.full((len(q), 0), -1, np.int64)
        sims, ids = self._index.search(q, k)
        sims = np.where(ids < 0, -np.inf, sims).astype(np.float32)
        return sims, ids

    def calibrate(self, exact: ExactIndex, *, target: float = RECALL_TARGET, k: int = 10) -> float:
        """Probe as many lists as it takes (doubling from ``nprobe``, up to all of them, which is exact) for
        recall@``k`` ≥ ``target`` against ``exact`` on :data:`CALIBRATION_QUERIES` of the library's own rows
        (each query's own row left out). Crowded rows, where a row's neighbours are barely nearer than
        the rest, need many lists; clustered ones few. Returns the recall reached (also ``self.recall``)."""
        if self.kind != "ivf" or len(exact) <= k:
            self.recall = 1.0
            return 1.0
        rng = np.random.default_rng(self.seed)
        pick = np.sort(rng.choice(len(exact), min(CALIBRATION_QUERIES, len(exact)), replace=False))
        queries = exact.rows[pick].astype(np.float32)
        scores = exact.scores(queries)
        truth = []
        for j, own in enumerate(exact.ids[pick]):
            best = exact.ids[top_k(scores[:, j], k + 1)]
            truth.append(set(best[best != own][:k].tolist()))
        nlist = int(self._index.nlist)
        nprobe = min(self.nprobe, nlist)
        while True:
            self._index.nprobe = nprobe
            _, got = self._index.search(queries, k + 1)
            recall = float(np.mean([
                len(set(row[(row != own) & (row >= 0)][:k].tolist()) & t) / k
                for row, own, t in zip(got, exact.ids[pick], truth)
            ]))
            if recall >= target or nprobe >= nlist:
                break
            nprobe = min(nlist, 2 * nprobe)
        self.nprobe, self.recall = nprobe, recall
        return recall

    # ------------------------------------------------------------------ checking against the library
    def _chunks(self):
        """(ids [m], stored rows [m, dim] in the index's dtype) per inverted list (one chunk when flat):
        views of FAISS's memory, valid until the index changes."""
        faiss = self._faiss
        if self.kind == "flat":
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            codes = faiss.vector_to_array(faiss.downcast_index(self._index.index).codes)
            yield ids, codes.view(self.dtype).reshape(len(ids), self.dim)
            return
        lists = self._index.invlists
        for i in range(lists.nlist):
            size = lists.list_size(i)
            if size:
                ids = faiss.rev_swig_ptr(lists.get_ids(i), size)
                codes = faiss.rev_swig_ptr(lists.get_codes(i), size * lists.code_size)
                yield ids, codes.view(self.dtype).reshape(size, self.dim)

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids [n], stored rows [n, dim] in the index's dtype) of every entry, in storage order (copies)."""
        ids = np.empty(len(self), np.int64)
        rows = np.empty((len(self), self.dim), self.dtype)
        at = 0
        for chunk_ids, chunk_rows in self._chunks():
            ids[at : at + len(chunk_ids)] = chunk_ids
            rows[at : at + len(chunk_ids)] = chunk_rows
            at += len(chunk_ids)
        return ids, rows

    def sync(self, exact: ExactIndex) -> tuple[int, int]:
        """Make the index hold exactly ``exact``'s ids and rows: entries whose id is gone, whose vector
        differs (bit for bit) or which are duplicated are removed, ids it lacks are added. Returns
        (removed, added). List by list, so no copy of the whole index is made."""
        if exact.dtype != self.dtype:
            raise ValueError(f"a {self.dtype} index cannot follow {exact.dtype} rows")
        bits = np.uint16 if self.dtype == np.float16 else np.uint32  # compare bits: no float16 arithmetic
        mine = exact.rows.view(bits)
        good_ids, bad_ids = [], []
        for ids, stored in self._chunks():
            pos = exact.positions(ids)
            good = pos >= 0
            good[good] = (stored.view(bits)[good] == mine[pos[good]]).all(axis=1)
            good_ids.append(ids[good])
            bad_ids.append(ids[~good])
        found = np.concatenate(good_ids) if good_ids else np.empty(0, np.int64)
        uniq, counts = np.unique(found, return_counts=True)
        bad = np.union1d(np.concatenate(bad_ids) if bad_ids else np.empty(0, np.int64), uniq[counts > 1])
        removed = int(self._index.remove_ids(self._faiss.IDSelectorBatch(bad))) if len(bad) else 0
        have = np.setdiff1d(uniq, bad, assume_unique=True)
        missing = ~np.isin(exact.ids, have, assume_unique=True)
        if missing.any():
            self._add_chunks(exact.ids[missing], exact.rows[missing].astype(np.float32))
        self.unsaved += removed + int(missing.sum())
        return removed, int(missing.sum())

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, *, bundle_hash: str) -> None:
        """Write the index to ``path`` whole or not at all (IVF only: a flat index is rebuilt in no time)."""
        if self.kind != "ivf":
            raise ValueError("only an IVF index is saved")
        payload = self._faiss.serialize_index(self._index)
        header = {
            "format": FILE_FORMAT, "kind": self.kind, "bundle_hash": bundle_hash, "dim": self.dim,
            "dtype": str(self.dtype), "trained_rows": self.trained_rows, "ntotal": len(self),
            "nprobe": int(self._index.nprobe), "recall": self.recall,
            "bytes": int(payload.nbytes), "crc32": zlib.crc32(payload),
        }
        with atomic_write(path) as fh:
            fh.write(FILE_MAGIC)
            fh.write(json.dumps(header).encode() + b"\n")
            fh.write(payload.data)
        self.unsaved = 0

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        dim: int,
        dtype: str,
        bundle_hash: str,
        ivf_min_rows: int = IVF_MIN_ROWS,
        nprobe: int = IVF_NPROBE,
    ) -> FaissIndex:
        """An index saved by :meth:`save` for these vectors; :class:`IndexFileError` (saying why) when the
        file is unreadable, damaged (its CRC), of another format, or made for another bundle, dim or dtype.
        Its contents are not checked against the library here: call :meth:`sync`."""
        fi = cls(dim, dtype, ivf_min_rows=ivf_min_rows, nprobe=nprobe)
        try:
            data = np.fromfile(path, np.uint8)
        except OSError as exc:
            raise IndexFileError(f"cannot read it ({exc.strerror or exc})") from exc
        if data[: len(FILE_MAGIC)].tobytes() != FILE_MAGIC:
            raise IndexFileError("not a SpeechCT index file")
        end = data[len(FILE_MAGIC) : len(FILE_MAGIC) + 4096].tobytes().find(b"\n")
        try:
            header = json.loads(data[len(FILE_MAGIC) : len(FILE_MAGIC) + end].tobytes()) if end >= 0 else None
        except ValueError:
            header = None
        if not isinstance(header, dict):
            raise IndexFileError("its header is damaged")
        expected = {"format": FILE_FORMAT, "kind": "ivf", "bundle_hash": bundle_hash, "dim": fi.dim,
                    "dtype": str(fi.dtype)}
        for key, want in expected.items():
            if header.get(key) != want:
                raise IndexFileError(f"it was made for {key} {header.get(key)!r}, not {want!r}")
        payload = data[len(FILE_MAGIC) + end + 1 :]
        if payload.nbytes != header.get("bytes") or zlib.crc32(payload) != header.get("crc32"):
            raise IndexFileError("it is damaged (size or CRC-32 differs from its header)")
        try:
            index = fi._faiss.deserialize_index(payload)  # already its own type (downcasting again would free it)
        except RuntimeError as exc:
            raise IndexFileError(f"FAISS cannot read it ({str(exc).splitlines()[0]})") from exc
        want_type = fi._faiss.IndexIVFScalarQuantizer if fi.dtype == np.float16 else fi._faiss.IndexIVFFlat
        if not isinstance(index, want_type) or index.d != fi.dim or getattr(index, "by_residual", False):
            raise IndexFileError(f"it holds a {type(index).__name__} of dim {index.d}")
        saved_nprobe = header.get("nprobe")
        if isinstance(saved_nprobe, int) and 1 <= saved_nprobe <= index.nlist:
            fi.nprobe = saved_nprobe  # as calibrated when it was built
        fi._adopt_ivf(index, index.quantizer)  # the index owns its quantizer
        fi.trained_rows = int(header.get("trained_rows") or 0)
        fi.recall = header.get("recall") if isinstance(header.get("recall"), float) else None
        return fi
