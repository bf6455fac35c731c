"""The study library, as a package of four parts, top to bottom:

- :mod:`~engine.library.ingest`: the only part that reads study files: folder import, rebuild, dictation
  pairing;
- :mod:`~engine.library.search`: :class:`Library`, the searchable library (similarity scores, the bundle
  hash check);
- :mod:`~engine.library.store`: the SQLite storage (schema, rows, vector BLOBs) behind
  :class:`~engine.library.store.StudyStore`, the interface a PostgreSQL backend implements;
- :mod:`~engine.library.vectors`: the in-memory vector indexes (numpy exact, FAISS).

The library takes embeddings, never models: ``engine.runtime.Engine.index_study`` encodes and adds.
"""

from engine.library.search import (
    BACKENDS,
    Hit,
    Library,
    check_library_location,
    default_library_dir,
    query_uids,
)
from engine.library.store import LibraryWriteError, StudyRecord
from engine.study_identity import study_key

__all__ = ["BACKENDS", "Hit", "Library", "LibraryWriteError", "StudyRecord",
           "check_library_location", "default_library_dir", "query_uids", "study_key"]
