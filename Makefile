# ebiw-capture: `make run` serves the app on embedded defaults; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export EBIW_DATA_DIR ?= $(CURDIR)/var
# Debian packages: libzbar0 for the app; DICOM validators, PACS, worklist, browser for the tests.
APT_RUN := libzbar0
APT_TEST := $(APT_RUN) dicom3tools dcmtk orthanc orthanc-dicomweb chromium gcc libc6-dev

.PHONY: run test venv lint apt-run apt-test postgres axe bench clean

# make run PORT=8011 (or EBIW_PORT=8011 make run); HOST=0.0.0.0 to be reached from a phone.
PORT ?= $(or $(EBIW_PORT),8000)
HOST ?= $(or $(EBIW_HOST),127.0.0.1)

run: apt-run $(BIN)/ebiw
	$(BIN)/ebiw db upgrade
	$(BIN)/ebiw demo
	$(BIN)/ebiw serve --host $(HOST) --port $(PORT)

POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres

# The whole suite on the embedded SQLite, then every database test again on PostgreSQL.
test: apt-test venv lint postgres axe
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	EBIW_TEST_POSTGRES_URL=$(POSTGRES_URL) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect \
		$$(ls /etc/postgresql) main start

venv: $(BIN)/ebiw

$(BIN)/ebiw: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# axe-core (npm) for the accessibility checks of the page tests (tests/web/test_pages_phone.py).
AXE := tests/.node/node_modules/axe-core/axe.min.js

axe: $(AXE)

$(AXE):
	npm install --prefix tests/.node --no-save --no-audit --no-fund axe-core@4

# Install the Debian packages that are missing (root, as on CI); never start system services.
apt-run:
	@./deploy/apt-install.sh $(APT_RUN)

apt-test:
	@./deploy/apt-install.sh $(APT_TEST)

bench: venv
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache
