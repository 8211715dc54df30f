# Quick start: `make demo` runs the main job, `make test` runs the whole suite.
# Both create or reuse .venv inside the repo; a second run installs nothing.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PY) -m pip install --quiet --disable-pip-version-check
# pip prints one harmless warning per package for the machine's unused local indexes.
QUIET  := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
STAMP  := $(VENV)/.installed
DEMO_OUT ?= out/demo

.PHONY: demo test venv lint bench interactive-model clean

venv: $(STAMP)

$(STAMP): constraints.txt requirements-dev.txt Backend/pyproject.toml training/pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "Installing torch (CPU wheel) into $(VENV) ..."
	@$(PIP) torch==2.13.0 $(QUIET)
	@echo "Installing tsfm-backend, tsfm-training and test tools ..."
	@$(PIP) -e ./Backend[server] -e ./training -r requirements-dev.txt $(QUIET)
	@touch $@

test: $(STAMP)
	$(PY) -m pytest Testing

demo: $(STAMP)
	$(PY) -m tsfm_backend.cli demo --output $(DEMO_OUT)

lint: $(STAMP)
	$(PY) -m ruff check .

# The figures in README.md: engine vs MONAI and nnU-Net, interactive protocol, HTTP overhead.
bench: $(STAMP)
	$(PY) Testing/bench/bench_predict.py --preset S --patch 96 --classes 4 --spacing 2.0 --threads 1
	$(PY) Testing/bench/bench_interactive.py --threads 2
	$(PY) Testing/bench/bench_server.py --size 128 --repeats 10 --warmup 2

# Retrains the bundled interactive models into their folders, in stages that each start from the previous
# one's export (CPU only; each stage under 2 hours on an idle 2-core machine): four on the sarcoma CTs
# (sts-click-small), then the class-agnostic default universal-click-small on tumours in CT, MR and PET,
# organs and pseudo-objects.
interactive-model: $(STAMP)
	$(VENV)/bin/tsfm-train run training/configs/interactive_default.yaml
	$(VENV)/bin/tsfm-train run training/configs/interactive_selfplay.yaml
	$(VENV)/bin/tsfm-train run training/configs/interactive_refine.yaml
	$(VENV)/bin/tsfm-train run training/configs/interactive_augment.yaml
	$(VENV)/bin/tsfm-train run training/configs/interactive_universal.yaml
	$(VENV)/bin/tsfm-train run training/configs/interactive_universal_refine.yaml

clean:
	rm -rf $(VENV) out .pytest_cache
