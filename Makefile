# The two commands a newcomer needs: `make run` and `make test`. Both set up .venv first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# gpu where nvidia-smi sees a device, cpu otherwise; `make FLAVOUR=cpu ...` forces one.
FLAVOUR ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.installed-$(FLAVOUR)
# The CPU build of torch: a local wheel where this machine keeps one, else PyTorch's CPU index
# (PyPI's Linux torch wheel is the CUDA build, which pulls several GB of CUDA packages).
TORCH_CPU_SOURCE ?= $(if $(wildcard /opt/wheels/torch-2.13.0+cpu*),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
# Where `make run` writes its data, checkpoints and predictions.
export TML_RUN_DIR ?= $(CURDIR)/runs

.PHONY: help setup run test lint bench clean

help:
	@echo "make run    set up, then run the local job (config: projects/home/recap/config/local_cpu.yaml)"
	@echo "make test   set up, then run the test suite"
	@echo "make setup  create .venv with the $(FLAVOUR) build of the stack"
	@echo "make lint   ruff check and format check"
	@echo "make bench  print the benchmark figures"

setup: $(STAMP)

# Re-installs only when the dependency spec (pyproject.toml) changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(FLAVOUR),gpu)
	$(PIP) -e '.[gpu,dev]'
else
	$(PIP) $(TORCH_CPU_SOURCE) torch==2.13.0
	$(PIP) -e '.[cpu,dev]'
	# torchrec's metadata asks for the CUDA fbgemm-gpu; fbgemm-gpu-cpu provides the same module.
	$(PIP) --no-deps torchrec==1.8.0
endif
	@rm -f $(VENV)/.installed-*
	@touch $@

run: $(STAMP)
	$(BIN)/python -m projects.home.recap.config --config_path projects/home/recap/config/local_cpu.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	@for script in benchmarks/*.py; do [ -e "$$script" ] || continue; echo "== $$script"; $(BIN)/python "$$script" || exit 1; done

clean:
	rm -rf $(VENV) runs
