# SpeechCT — the two set-up commands are `make run` and `make test` (see README).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONSTRAINTS := packaging/constraints.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(CONSTRAINTS) | sha256sum | cut -c1-12)
SAMPLE := assets/samples/study-001/dicom

export QT_QPA_PLATFORM ?= offscreen
export VTK_DEFAULT_OPENGL_WINDOW ?= vtkOSOpenGLRenderWindow

.PHONY: all setup system-deps run demo app test test-all lint package bundle lock clean

all: test

system-deps:
	@bash scripts/system-deps.sh

$(STAMP): pyproject.toml $(CONSTRAINTS) scripts/system-deps.sh
	@bash scripts/system-deps.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the local CPU wheel. A bare "torch" would pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# every other version as tested (packaging/constraints.txt, CPython 3.11 on x86_64 Linux): a new release
	# upstream cannot break CI. Elsewhere (e.g. Python 3.10, where numpy 2.4 does not install) pyproject's ranges.
	@if $(PY) -c 'import platform, sys; sys.exit(not (sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64"))'; then \
		$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[desktop,train,faiss,dev,bench,package]'; \
	else \
		echo "note: $(CONSTRAINTS) pins CPython 3.11 on x86_64; installing pyproject's version ranges instead"; \
		$(PY) -m pip install -q -e '.[desktop,train,faiss,dev,bench,package]'; \
	fi
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

setup: $(STAMP)

# The app where a display is available; otherwise the headless demo of the same engine.
run: $(STAMP)
	@if [ -n "$${DISPLAY:-}$${WAYLAND_DISPLAY:-}" ]; then \
		env -u QT_QPA_PLATFORM -u VTK_DEFAULT_OPENGL_WINDOW $(VENV)/bin/speechct-app; \
	else \
		$(MAKE) --no-print-directory demo && \
		echo && echo "No display here: start the app with 'make app' on a desktop, or 'xvfb-run make app'."; \
	fi

demo: $(STAMP)
	@lib=$$(mktemp -d) && trap 'rm -rf "$$lib"' EXIT && set -e && \
	echo "== speechct index add assets/samples (a temporary library)" && \
	$(VENV)/bin/speechct index add assets/samples --library "$$lib" && \
	echo && echo "== speechct rank: study-002 with its dictation (which omits the consolidation; findings the image model is weak on are not checked)" && \
	$(VENV)/bin/speechct rank --ct assets/samples/study-002/dicom --audio assets/samples/study-002/dictation.wav \
		--similar 2 --library "$$lib" && \
	echo && echo "== speechct search by a spoken report (study-001's dictation)" && \
	$(VENV)/bin/speechct search --audio assets/samples/study-001/dictation.wav -k 3 --library "$$lib"

app: $(STAMP)
	env -u QT_QPA_PLATFORM -u VTK_DEFAULT_OPENGL_WINDOW $(VENV)/bin/speechct-app

test: $(STAMP) lint
	$(PY) -m pytest -q

test-all: $(STAMP) lint
	$(PY) -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check engine train desktop tests bench scripts packaging
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# One-folder app bundle (PyInstaller) -> dist/speechct-<version>-linux-<arch>.tar.gz, selftested offline
# from the unpacked archive; fails when the selftest fails. PACKAGE_ARGS e.g. --first-window (packaging/README.md).
package: $(STAMP)
	nice -n 10 $(PY) packaging/build.py $(PACKAGE_ARGS)

# The default model bundle from scratch: synthesis, teacher, audio cache, naive + distilled students,
# evaluation (with the ASR cascade), export; each stage resumable (scripts/make_bundle.py). ~20 GB under
# BUNDLE_DATA; BUNDLE_ARGS e.g. --stop-after teacher, --install (copy to assets/models/default).
BUNDLE_DATA ?= build/bundle-data
bundle: $(STAMP)
	$(PY) scripts/make_bundle.py --data $(BUNDLE_DATA) $(BUNDLE_ARGS)

# Re-pin packaging/constraints.txt to what the venv holds now (after a deliberate upgrade; then make test-all)
lock: $(STAMP)
	@{ sed -n '1,/^torch==/{/^#/p}' $(CONSTRAINTS); \
	   $(PY) -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > $(CONSTRAINTS).new
	@mv $(CONSTRAINTS).new $(CONSTRAINTS) && git --no-pager diff --stat -- $(CONSTRAINTS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
