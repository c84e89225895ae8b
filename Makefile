# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the whole suite).
# Each creates .venv on first use and installs the locked stack; later runs reuse it until requirements.lock or
# pyproject.toml changes. `make lock` refreshes the lock on purpose.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Exact versions and hashes of everything `make` installs (dev extra, torch, build backend), for Python 3.11 on Linux
# x86_64; pyproject.toml keeps the ranges library users need. tests/test_lock.py checks the two agree.
LOCK   := requirements.lock
FIX_PY := make clean-venv install PYTHON=python3.11
# torch/torchvision pinned to the builds this machine carries on disk, so installing them copies instead of downloading.
TORCH  := torch==2.14.1 torchvision==0.29.1
# pip-compile runs in a venv of its own, at fixed versions, so the lock tool never mixes with the locked stack.
LOCKENV   := .venv-lock
PIP_TOOLS := pip==26.3 pip-tools==7.6.2
# The pip that installs the lock: the venv's bundled pip (23.x) cannot install a hashed lock whose packages ask for
# extras (python-fasthtml needs uvicorn[standard]), so it is replaced first, by a pinned and hashed pip.
PIP_PIN   := pip==26.3 --hash=sha256:f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13
# `make lock` keeps every pin pyproject.toml still allows (and reuses its hashes); `make lock-upgrade` takes the newest.
LOCK_UPGRADE ?=

.PHONY: install lock lock-upgrade demo test bench docs docs-check outputs readme clean-venv

# Every file is checked against the lock's hashes (PyPI's, and those of the local wheels pip-compile saw); medsynth
# itself is then installed editable without dependencies, built by the locked setuptools (no build isolation).
$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "$(LOCK) is for Python 3.11: $(FIX_PY)")'
	echo '$(PIP_PIN)' > $(VENV)/pip.lock && $(BIN)/python -m pip install --quiet --require-hashes -r $(VENV)/pip.lock
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# Resolve pyproject.toml's dependencies, the dev extra and the build backend (torch/torchvision held at $(TORCH)) into
# the lock with hashes, then record the SHA-256 of pyproject.toml's dependency lists that tests/test_lock.py compares.
# Hashes cover every file of each pinned release (pip-compile downloads the ones its index lists without a hash, so a
# full upgrade takes ~15 min here) and the local /opt wheels, which are byte-identical copies: either source installs.
lock:
	test -x $(LOCKENV)/bin/python || $(PYTHON) -m venv $(LOCKENV)
	$(LOCKENV)/bin/pip install --quiet $(PIP_TOOLS)
	printf '%s\n' $(TORCH) > $(LOCKENV)/torch-pins.txt
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCKENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
		--strip-extras --extra dev --build-deps-for editable --no-emit-index-url --no-emit-find-links \
		--constraint $(LOCKENV)/torch-pins.txt $(LOCK_UPGRADE) --output-file $(LOCK) pyproject.toml
	{ echo "# medsynth's development stack for Python 3.11 on Linux x86_64: \`make\` installs exactly this, with"; \
	  echo "# --require-hashes. Written by \`make lock\` (pip-compile); pyproject.toml keeps the ranges for users."; \
	  echo "# Indexes come from pip's configuration; the hashes make every source give the same bytes."; \
	  $(LOCKENV)/bin/python tests/test_lock.py; cat $(LOCK); } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

lock-upgrade:
	$(MAKE) lock LOCK_UPGRADE=--upgrade

demo: $(STAMP)
	$(BIN)/medsynth demo

test: $(STAMP)
	$(BIN)/nbdev-test --n-workers 2 --timing
	$(BIN)/pytest tests/ --durations=20

# The benchmarks: sampler accuracy vs NFE, loader throughput, Learner overhead and sampling speed, single scale vs pyramid.
bench: $(STAMP)
	$(BIN)/python benchmarks/samplers.py --out runs/benchmarks
	$(BIN)/python benchmarks/loader.py --out runs/benchmarks
	$(BIN)/python benchmarks/training.py --out runs/benchmarks
	$(BIN)/python benchmarks/multiscale.py --out runs/benchmarks

docs: $(STAMP)
	$(BIN)/nbdev-docs

# The docs site without Quarto: nbdev's processors, one HTML page per notebook with the sidebar, each opened in headless
# Chromium (console errors, images, signatures, links); a screenshot of the index goes to runs/docs_check/index.png.
docs-check: $(STAMP)
	$(BIN)/python tools/docs_check.py

# Every notebook in nbs/ run from a fixed seed and saved with its outputs (small PNG figures), then cleaned; about ten
# minutes on two cores. tests/test_outputs.py fails until this is re-run after a notebook changes what it shows.
outputs: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python tools/outputs.py

# README.md from nbs/index.ipynb: nbdev-readme where Quarto exists, tools/nb2readme.py elsewhere.
readme: $(STAMP)
	if command -v quarto >/dev/null; then $(BIN)/nbdev-readme; else $(BIN)/python tools/nb2readme.py; fi

clean-venv:
	rm -rf $(VENV)
