"""``speechct-app [PATH] [--bundle DIR] [--library DIR|URL] [--selftest [--selftest-out DIR]]``.

Opens straight into the first sample study when no PATH is given. ``--selftest`` runs offscreen
(see ``desktop.selftest``) and exits 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="speechct-app", description="SpeechCT desktop assistant")
    p.add_argument("path", nargs="?", help="a DICOM folder/file or NIfTI file (default: the sample study)")
    p.add_argument("--series", help="series UID to open when PATH holds several")
    p.add_argument("--bundle", help="model bundle folder (default: settings, then the engine's default)")
    p.add_argument("--library", help="study library folder or postgresql://USER@HOST:PORT/DB "
                   "(default: settings, then the engine's default)")
    p.add_argument("--selftest", action="store_true", help="run the offscreen self-test and exit 0/1")
    p.add_argument("--selftest-out", help="folder for the self-test's PNGs (default: a temporary folder)")
    return p.parse_args(argv)


def library_setting(text: str) -> str:
    """``--library`` as the settings keep it: a folder made absolute, a postgresql:// URL as given."""
    if "://" in text:
        return text
    return str(Path(text).expanduser().resolve())


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.selftest:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkOSOpenGLRenderWindow")
    elif not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and sys.platform.startswith("linux"):
        if os.environ.get("QT_QPA_PLATFORM") != "offscreen":
            print("speechct-app: no display (DISPLAY/WAYLAND_DISPLAY unset); try `xvfb-run speechct-app` "
                  "or `speechct-app --selftest`", file=sys.stderr)
            return 2
    from .preload import start_engine_import

    start_engine_import()  # torch's import overlaps the GUI's, not after it (see desktop.preload)
    from PySide6.QtWidgets import QApplication

    from .main_window import MainWindow
    from .panels.studies import sample_studies
    from .settings import Settings

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("SpeechCT")
    settings = Settings() if args.selftest else Settings.load()
    if args.bundle:
        settings.bundle = str(Path(args.bundle).expanduser().resolve())
    if args.library:
        settings.library = library_setting(args.library)
    source_factory = None
    tmp = None
    if args.selftest:
        import tempfile

        from .dictation.sources import FileSource

        tmp = tempfile.TemporaryDirectory(prefix="speechct-selftest-")
        if not args.library:
            settings.library = str(Path(tmp.name) / "library")
        settings.recordings_dir = str(Path(tmp.name) / "recordings")
        samples = sample_studies()
        wav = samples[0].parent / "dictation.wav" if samples else None
        source_factory = lambda: FileSource(wav, realtime=False)  # noqa: E731
    window = MainWindow(settings, source_factory=source_factory, save_settings=not args.selftest,
                        cache_dir=False if args.selftest else None)
    window.resize(1600, 1000)
    window.show()
    if args.selftest:
        from .selftest import run_selftest

        try:
            code = run_selftest(window, app, Path(args.selftest_out) if args.selftest_out else None)
        finally:
            window.close()
            if tmp is not None:
                tmp.cleanup()
        return code
    target = args.path or (str(sample_studies()[0]) if sample_studies() else None)
    if target:
        window.open_study(target, args.series)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
