# Two commands matter: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Pinned for this machine: these wheels are served from local disk (a CUDA build that runs on the CPU).
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
QUICK ?= 0

.PHONY: install test demo lint bench clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[training,clip,dev]" $(TORCH_PIN)
	touch $@

install: $(BIN)/.installed

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q zreward_diffusers tests

# make demo: the whole method in miniature (about 25 min here); make demo QUICK=1: the same stages, tiny (~2 min).
DEMO_ARGS := $(if $(filter 1,$(QUICK)),--profile quick --out runs/demo_quick,--profile demo --out runs/demo)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pipelines.demo $(DEMO_ARGS)

# ruff check only: the code is formatted by hand to 119 columns (`ruff format` would rewrap its aligned
# continuation lines in 68 files; adopting it is a separate, whole-tree change).
lint: install
	$(BIN)/ruff check zreward_diffusers training pipelines benchmarks tests

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.loss_overhead

clean:
	rm -rf $(VENV) runs .pytest_cache
