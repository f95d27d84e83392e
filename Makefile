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
RUN_CONFIG := projects/home/recap/config/local_cpu.yaml
RUN_DIR := $(TML_RUN_DIR)/local_cpu
# Two ranks on CPU (tables sharded across them); one per GPU where there are GPUs.
NPROC ?= $(if $(filter gpu,$(FLAVOUR)),$(shell nvidia-smi -L | wc -l),2)
# Each rank gets its share of the cores (torchrun would otherwise pin every rank to one thread).
# The Docker entrypoint is the one launcher: torchrun restarting failed workers from the newest
# checkpoint and forwarding preemption signals (docs/operations.md).
TORCHRUN := OMP_NUM_THREADS=$(shell echo $$(( $$(nproc) / $(NPROC) > 0 ? $$(nproc) / $(NPROC) : 1 ))) \
	NPROC_PER_NODE=$(NPROC) PATH="$(CURDIR)/$(BIN):$$PATH" docker/entrypoint.sh
GENERATE := $(BIN)/python -m projects.home.recap.tools.generate_random_data --config_path $(RUN_CONFIG)

.PHONY: help setup flavour run twhin test lint bench clean

help:
	@echo "make run    set up, generate data, train on 2 ranks, evaluate, predict, export ($(RUN_CONFIG))"
	@echo "make twhin  generated graph -> TwHIN on 2 ranks -> export -> recap warm-started from it"
	@echo "make test   set up, then run the test suite"
	@echo "make setup  create .venv with the $(FLAVOUR) build of the stack"
	@echo "make flavour  print the build make setup picks here (gpu or cpu)"
	@echo "make lint   ruff check and format check"
	@echo "make bench  print the benchmark figures"

setup: $(STAMP)

# What `make setup` installs here; benchmarks/gpu_check.sh and the tests read it.
flavour:
	@echo $(FLAVOUR)

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

# Random data (once) -> sharded training with evaluation -> predictions -> export -> results.
run: $(STAMP) $(RUN_DIR)/data/.generated
	rm -rf $(RUN_DIR)/model
	$(TORCHRUN) --config_path $(RUN_CONFIG)
	$(TORCHRUN) --config_path $(RUN_CONFIG) --mode inference
	$(BIN)/tml-recap-export --config_path $(RUN_CONFIG)
	@$(BIN)/tml-recap-report --config_path $(RUN_CONFIG)

$(RUN_DIR)/data/.generated: | $(STAMP)
	rm -rf $(RUN_DIR)/data
	$(GENERATE) --num_examples 50000 --num_files 4
	$(GENERATE) --num_examples 4000 --partition validation
	@touch $@

# The TwHIN chain on generated data: a planted-community graph, TwHIN trained on it, its tables
# exported, and the ranker trained from them (its meta__user_id table starts as TwHIN's users).
TWHIN_CONFIG := projects/twhin/config/tiny_cpu.yaml
TWHIN_DIR := $(TML_RUN_DIR)/twhin
twhin: $(STAMP) $(RUN_DIR)/data/.generated
	rm -rf $(TWHIN_DIR)
	$(BIN)/python -m projects.twhin.data.generate --config_path $(TWHIN_CONFIG) --num_edges 40000 --num_files 2
	OMP_NUM_THREADS=1 $(BIN)/torchrun --standalone --nproc_per_node $(NPROC) -m projects.twhin.main --config_path $(TWHIN_CONFIG)
	$(BIN)/python -m projects.twhin.export --config_path $(TWHIN_CONFIG) --output_dir $(TWHIN_DIR)/export
	rm -rf $(TWHIN_DIR)/recap
	$(TORCHRUN) --config_path $(RUN_CONFIG) training.save_dir=$(TWHIN_DIR)/recap training.num_train_steps=200 \
		model.large_embeddings.tables.0.num_embeddings=2000 model.large_embeddings.tables.0.embedding_dim=16 \
		"model.large_embeddings.tables.0.pretrained={emb_name: user, embedding_snapshot_uri: $(TWHIN_DIR)/export/tables}"

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	@for script in benchmarks/*.py; do [ -e "$$script" ] || continue; echo "== $$script"; $(BIN)/python "$$script" || exit 1; done

clean:
	rm -rf $(VENV) runs
