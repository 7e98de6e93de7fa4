# The two commands of the README: `make run` (the main job) and `make test` (the tests).
# Both create or update .venv and install the project with pip, so they work on a fresh clone.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STATE ?= .pbf
LAYERS ?= 40
SIZE ?= 512
SEED ?= 0

.PHONY: install run test lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --progress-bar off -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## run: the main job on the offline default (a synthetic build) — generate, prepare, summarise
run: install
	$(BIN)/pbf synth $(STATE)/data/synthetic --layers $(LAYERS) --size $(SIZE) --seed $(SEED)
	$(BIN)/pbf prepare $(STATE)/data/synthetic $(STATE)/data/prepared

## test: lint, then the whole test suite
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(STATE)
