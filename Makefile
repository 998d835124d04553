# Two commands take a fresh machine to a working accelopt: `make demo` and `make test`.
# Everything installs into ./.venv; torch goes in first so pip never swaps in another build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint unit clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

# A finished study on the tiny default pipeline, on the CPU; prints the best configuration.
# Run it again: the stored study answers at once.
demo: install
	$(BIN)/accelopt run --study TinySD-DDIM-10

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# One torch thread per test worker: two workers each spinning two OpenMP threads on two cores
# run the suite ten times slower, not faster. tests/conftest.py keeps tests that share compiled
# kernels or a searched study in one worker, so the two never build the same thing twice.
unit: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2

test: lint unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache accelopt.db accelopt.db.accelopt-lock
