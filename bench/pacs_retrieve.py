"""Retrieving a study from a PACS: DICOMweb (WADO-RS), DIMSE C-GET and C-MOVE, against dcmtk's getscu.

    .venv/bin/python bench/pacs_retrieve.py [--repeats 3]

Starts a loopback Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``, as the department tests do,
:mod:`tests.department.orthanc`), stores the three sample studies (64 instances, 2.2 MB each) and
fetches each one ``--repeats`` times into a fresh cache with :func:`engine.pacs.retrieve.get_study`
(listing the series and instances included) and, as the peer, with dcmtk's ``getscu`` (a C-GET of
the same study from the same server, written to a folder). Prints the median seconds per study and
each method's ratio to getscu.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# It reaches into tests/: it starts the loopback Orthanc the department tests use (tests.department.orthanc);
# bench/library_search.py's PostgreSQL mode is the only other bench that does.
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if shutil.which("getscu") is None:
        print("dcmtk's getscu is not installed (apt-get install dcmtk)", file=sys.stderr)
        return 2

    import pydicom

    from engine.pacs.cache import StudyCache
    from engine.pacs.client import connect
    from engine.pacs.retrieve import get_study
    from engine.pacs.settings import resolve_server
    from tests.department.orthanc import free_port, missing, start_orthanc

    why = missing()
    if why:
        print(why, file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="speechct-bench-pacs-"))
    server = start_orthanc(tmp / "orthanc", auth=False)
    try:
        uids, counts = [], {}
        for study in sorted((REPO / "assets" / "samples").glob("study-*/dicom")):
            files = sorted(study.glob("*.dcm"))
            server.upload(files)
            uids.append(str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID))
            counts[uids[-1]] = len(files)
        move_port = free_port()
        server.add_modality("speechct", "SPEECHCT", move_port)
        methods = {
            "DICOMweb WADO-RS": resolve_server(url=server.dicomweb_url),
            "DIMSE C-GET": resolve_server(aet=server.dimse_address),
            "DIMSE C-MOVE": resolve_server(aet=server.dimse_address, retrieve="move", move_port=move_port),
        }
        times: dict[str, list[float]] = {name: [] for name in [*methods, "dcmtk getscu (peer)"]}
        for r in range(args.repeats):
            for i, uid in enumerate(uids):
                for k, (name, pacs) in enumerate(methods.items()):
                    client = connect(pacs)
                    t = time.perf_counter()
                    result = get_study(client, uid, StudyCache(tmp / f"cache-{r}-{i}-{k}", 10**10))
                    times[name].append(time.perf_counter() - t)
                    assert not result.cached and result.fetched == counts[uid], (name, result.fetched)
                out = tmp / f"getscu-{r}-{i}"
                out.mkdir()
                t = time.perf_counter()
                subprocess.run(["getscu", "-aet", "SPEECHCT", "-aec", "ORTHANC", "127.0.0.1", str(server.dicom_port),
                                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}", "-od", str(out)],
                               check=True, capture_output=True, timeout=300)
                times["dcmtk getscu (peer)"].append(time.perf_counter() - t)
        peer = statistics.median(times["dcmtk getscu (peer)"])
        print(f"{'method':<22} {'median s/study':>14} {'vs getscu':>10}   ({len(uids)} studies x {args.repeats})")
        for name, values in times.items():
            m = statistics.median(values)
            print(f"{name:<22} {m:>14.2f} {peer / m:>9.1f}x")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
