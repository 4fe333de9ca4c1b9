# Two entry points (see README): `make train` runs the main job, `make test` the tests.
# Both create .venv and install the project on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Offline machines: CIFAR10_LOCAL=path/to/cifar10 imports that copy into DATA_DIR first.
DATA_DIR ?= $(HOME)/tensorflow_datasets
CIFAR10_LOCAL ?=
TRAIN_ARGS ?=

# constraints.txt pins the versions the README's figures were measured with.
$(BIN)/cifar-train: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' -c constraints.txt
	touch $@

.PHONY: setup train test lint notebook mutate
setup: $(BIN)/cifar-train

train: setup
	$(BIN)/cifar-train --experiment challenge --data-dir $(DATA_DIR) \
	  $(if $(CIFAR10_LOCAL),--local-copy $(CIFAR10_LOCAL)) --out runs/challenge $(TRAIN_ARGS)

# The completed course notebook, executed in place with its outputs (docs/results.md).
notebook: setup
	$(BIN)/cifar-notebook --ipynb notebooks/cifar10_notebook.ipynb --data-dir $(DATA_DIR) \
	  $(if $(CIFAR10_LOCAL),--local-copy $(CIFAR10_LOCAL))

# Lint first (seconds), then two pytest-xdist workers, one a core: the process-bound tests
# overlap (docs/tests.md). loadgroup keeps the tests of one shared run on one worker.
test: setup lint
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Mutation testing of the pure modules against their own fast tests ([tool.mutmut] in
# pyproject.toml; about 23 minutes on 2 cores; not in CI). Survivors: docs/mutation.md.
mutate: setup
	$(BIN)/pip install -q -e '.[mutate]' -c constraints.txt
	$(BIN)/mutmut run --max-children 2; $(BIN)/mutmut results
