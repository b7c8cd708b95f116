# Two commands matter: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Pinned for this machine: these wheels are served from local disk (a CUDA build that runs on the CPU).
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
QUICK ?= 0

.PHONY: install test test-latest constraints mutants demo demo-seeds world-bases lint bench clean

# The suite's versions come from constraints.txt (a lock of what it passed on); pyproject.toml keeps ranges for users.
$(BIN)/.installed: pyproject.toml Makefile constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt $(TORCH_PIN)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[training,clip,dev]" $(TORCH_PIN)
	touch $@

install: $(BIN)/.installed

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q zreward_diffusers tests

# The newest versions pyproject.toml allows, in a venv of their own: drift shows here before users see it.
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet --upgrade $(TORCH_PIN)
	$(LATEST)/bin/pip install --quiet --upgrade -e ".[training,clip,dev]" $(TORCH_PIN)
	$(LATEST)/bin/pip freeze --exclude-editable > $(LATEST)/versions.txt
	HF_HUB_OFFLINE=1 $(LATEST)/bin/python -m pytest -q zreward_diffusers tests

# Rewrite constraints.txt from what test-latest installed (run after it passes).
constraints:
	{ head -2 constraints.txt; cat $(LATEST)/versions.txt; } > constraints.txt.new && mv constraints.txt.new constraints.txt

# Plants known bugs one at a time in a copy of the code and reports which the tests catch (not part of `make test`).
mutants: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m tests.mutants

# make demo: the whole method in miniature from the bases shipped in world/ (14-23 min here); make demo QUICK=1:
# the same stages, tiny (a few minutes); FROM_SCRATCH=1 also pretrains the base VLMs and the generator first.
DEMO_PROFILE := $(if $(filter 1,$(QUICK)),quick,demo)
DEMO_OUT := runs/demo$(if $(filter 1,$(QUICK)),_quick)$(if $(filter 1,$(FROM_SCRATCH)),_scratch)
DEMO_ARGS := --profile $(DEMO_PROFILE) --out $(DEMO_OUT)$(if $(filter 1,$(FROM_SCRATCH)), --from-scratch)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m recipes.demo $(DEMO_ARGS)

# make demo-seeds: the demo again with training seeds 1 and 2 (after `make demo`, seed 0), then the teacher, student
# and DRaFT tables over the three seeds (benchmarks/README.md, "Over seeds"): about 40 more minutes.
demo-seeds: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m recipes.demo --profile demo --out runs/demo_seed1 --seed 1
	HF_HUB_OFFLINE=1 $(BIN)/python -m recipes.demo --profile demo --out runs/demo_seed2 --seed 2
	$(BIN)/python -m recipes.demo_tables runs/demo runs/demo_seed1 runs/demo_seed2

# make world-bases: retrain the world's shipped models (base VLMs, RISD student) and refresh world/ (about 45 min).
world-bases: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m recipes.world_bases

# ruff check only: the code is formatted by hand to 119 columns (`ruff format` would rewrap its aligned
# continuation lines in 68 files; adopting it is a separate, whole-tree change).
lint: install
	$(BIN)/ruff check zreward_diffusers training pipelines recipes benchmarks tests

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.loss_overhead

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache
