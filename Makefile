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

.PHONY: install run serve container test lint clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --progress-bar off -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## run: the main job on the offline default (a synthetic build): prepare, train, export, quantise,
## benchmark, track in MLflow, promote, package for serving; ends with a summary
run: install
	PBF_STATE_DIR=$(STATE) $(BIN)/pbf run --config configs/default.yaml

## serve: serve the packaged champion (after `make run`) on http://localhost:3000
serve: install
	BENTOML_HOME=$(STATE)/bentoml $(BIN)/bentoml serve service:DefectService --port 3000

## container: the serving image (after `make run`): the bento and its Docker image, pinned
## packages, a local Debian base image where Docker Hub is out of reach; IMAGES="bento mlflow
## worker" adds the compose stack's images. Needs a Docker engine (README, "Containers").
IMAGES ?= bento
container: install
	BENTOML_HOME=$(STATE)/bentoml $(BIN)/python scripts/containerize.py $(IMAGES)

## test: lint, then the whole test suite (browser tests need Debian's chromium; axe-core from npm)
test: install tests/service/node_modules
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

tests/service/node_modules: tests/service/package.json tests/service/package-lock.json
	cd tests/service && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

lint: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(STATE)
