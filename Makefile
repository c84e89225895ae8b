# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the whole suite).
# Each creates .venv on first use and installs the stack; later runs reuse it until pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch/torchvision pinned to the builds this machine carries on disk; pyproject.toml states the supported ranges.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test bench docs readme clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/medsynth demo

test: $(STAMP)
	$(BIN)/nbdev-test --n-workers 2 --timing
	$(BIN)/pytest tests/

# The benchmarks: sampler accuracy vs NFE, loader throughput, Learner overhead and sampling speed, single scale vs pyramid.
bench: $(STAMP)
	$(BIN)/python benchmarks/samplers.py --out runs/benchmarks
	$(BIN)/python benchmarks/loader.py --out runs/benchmarks
	$(BIN)/python benchmarks/training.py --out runs/benchmarks
	$(BIN)/python benchmarks/multiscale.py --out runs/benchmarks

docs: $(STAMP)
	$(BIN)/nbdev-docs

# README.md from nbs/index.ipynb: nbdev-readme where Quarto exists, tools/nb2readme.py elsewhere.
readme: $(STAMP)
	if command -v quarto >/dev/null; then $(BIN)/nbdev-readme; else $(BIN)/python tools/nb2readme.py; fi

clean-venv:
	rm -rf $(VENV)
