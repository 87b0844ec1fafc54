# Keyplane: `make serve` to run it, `make test` to prove it. `make help` lists every target.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: help serve test lint unit bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Keyplane needs Python 3.11+") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

serve: $(STAMP) ## Install, migrate SQLite, create a demo tenant (first run) and serve on :8080
	KEYPLANE_LOG_FORMAT=$${KEYPLANE_LOG_FORMAT:-text} $(BIN)/keyplane serve --demo --host $(HOST) --port $(PORT)

lint: $(STAMP) ## ruff, mypy --strict and the import contracts (.importlinter)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

TEST_WORKERS ?= auto
test: $(STAMP) lint ## Install, lint, and run the whole suite (PostgreSQL/Redis too when they answer)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal

unit: $(STAMP) ## Only the fast unit tests
	$(BIN)/pytest tests/unit

bench: $(STAMP) ## Performance ratios (see bench/; installs the djangorestframework baseline)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/keyplane bench

clean: ## Remove the virtualenv and local data
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
