# Doing More With Less — the course's commands. Run `make help`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.course-installed
# Optional: a torch wheel index, e.g. https://download.pytorch.org/whl/cpu (small CPU build) or .../cu126 (GPU).
TORCH_INDEX ?=
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
export PYDEVD_DISABLE_FILE_VALIDATION = 1
export JUPYTER_PLATFORM_DIRS = 1

.PHONY: help setup assets course smoke test lab labs lint clean grade

help:
	@echo "make course  - set up, fetch assets, execute every notebook into build/, write build/report.html"
	@echo "make test    - set up, fetch assets, run all tests (unit, lab checks, notebook smoke runs, nbval)"
	@echo "make setup   - create the Python environment in $(VENV) (idempotent)"
	@echo "make assets  - fetch and verify the offline assets (model + text) into the asset cache"
	@echo "make lab     - open JupyterLab at the course"
	@echo "make labs    - regenerate labs/ from solutions/ (never overwrites a lab you edited)"
	@echo "make smoke   - execute every notebook with SMOKE=True (tiny sizes)"

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if [ -n "$(TORCH_INDEX)" ]; then $(BIN)/python -m pip install -q torch==2.13.0 --index-url $(TORCH_INDEX); fi
	$(BIN)/python -m pip install -q -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

assets: setup
	$(BIN)/python -m utils.assets fetch

course: assets
	$(BIN)/python -m utils.course

smoke: assets
	$(BIN)/python -m utils.course --smoke

test: assets
	$(BIN)/ruff check utils tests conftest.py
	$(BIN)/python -m pytest tests notebooks solutions --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg

lab: setup
	$(BIN)/jupyter lab --notebook-dir=. $(ROOT_FLAG)

labs: setup
	$(BIN)/python -m utils.labs

SUBMISSIONS ?=
LAB ?=
grade:
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=folder/ [LAB=10]"; exit 2; }
	@$(MAKE) --no-print-directory assets
	$(BIN)/python -m utils.grade "$(SUBMISSIONS)" $(if $(LAB),--lab $(LAB))

lint: setup
	$(BIN)/ruff check utils tests conftest.py

clean:
	rm -rf build
