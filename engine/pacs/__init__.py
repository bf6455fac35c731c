"""Studies from a PACS and results back to it: the department's side of SpeechCT.

- :mod:`engine.pacs.settings`: servers, credentials (settings file or environment, never the command
  line), the cache's folder and size cap;
- :mod:`engine.pacs.dicomweb` (QIDO-RS / WADO-RS / STOW-RS with dicomweb-client) and
  :mod:`engine.pacs.dimse` (C-FIND / C-GET or C-MOVE / C-STORE with pynetdicom): one interface,
  :func:`engine.pacs.client.connect` picks by the server's kind;
- :mod:`engine.pacs.cache`: the local study cache (whole studies only, LRU by study, size cap);
- :mod:`engine.pacs.retrieve`: a study (its CT series) from the PACS into the cache, resumable, and
  ``pacs://SERVER/STUDY_UID[/SERIES_UID]`` addresses for ``speechct index add`` and ``rank --ct``.

Every failure is a :class:`engine.pacs.errors.PacsError`: one line naming the server, never a secret.
"""
