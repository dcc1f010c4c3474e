# Two entry points for a fresh machine:  `make demo`  and  `make test`.
# torch==2.13.0 (CPU build) is installed first and alone, so no later package can pull
# a multi-GB CUDA torch in its place.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test demo lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests

demo: install
	$(BIN)/genhancer demo --out runs/demo

bench: install
	$(BIN)/genhancer bench --out runs/bench

clean:
	rm -rf runs .pytest_cache
