# Doing More With Less — the course's commands. Run `make help`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.course-installed
# Which torch build `make setup` installs. Unset (default): the CPU build from TORCH_CPU_INDEX when no NVIDIA GPU
# is found and that index answers within TORCH_PROBE_S seconds, else the configured pip index (mirror, proxy, cache).
# TORCH_INDEX=URL: that index (e.g. .../whl/cu126). TORCH_INDEX= (empty): the configured pip index, no probe.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PROBE_S   ?= 4
TORCH_PIN        = $(shell sed -n 's/^torch==//p' requirements.txt)
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
export PYDEVD_DISABLE_FILE_VALIDATION = 1
export JUPYTER_PLATFORM_DIRS = 1

.PHONY: help setup torch-choice assets course smoke test check lab labs lint clean grade

help:
	@echo "make course  - set up, fetch assets, execute every notebook into build/, write build/report.html"
	@echo "make test    - set up, fetch assets, run all tests (unit, lab checks, nbval, browser tier)"
	@echo "make check   - the tests of make test only, in an environment that is already set up"
	@echo "make setup   - create the Python environment in $(VENV) (idempotent)"
	@echo "make assets  - fetch and verify the offline assets (model + text) into the asset cache"
	@echo "make lab     - open JupyterLab at the course"
	@echo "make labs    - regenerate labs/ from solutions/ (never overwrites a lab you edited)"
	@echo "make smoke   - execute every notebook with SMOKE=True (tiny sizes)"

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(MAKE) --no-print-directory torch-choice TORCH_CHOICE_INSTALL=1
	$(BIN)/python -m pip install -q -r requirements.txt -c constraints.txt
	@$(BIN)/python -c "import torch; print('torch', torch.__version__, 'installed; CUDA', \
	  torch.version.cuda if torch.version.cuda else 'none (CPU build)')"
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Prints which torch build is chosen and why; with TORCH_CHOICE_INSTALL=1 (from setup) it also installs it.
torch-choice:
	@idx=; \
	if [ "$(origin TORCH_INDEX)" != undefined ]; then \
	  if [ -n "$(TORCH_INDEX)" ]; then idx="$(TORCH_INDEX)"; why="TORCH_INDEX=$(TORCH_INDEX) was given"; \
	  else why="TORCH_INDEX is empty"; fi; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  why="an NVIDIA GPU is present (nvidia-smi); on Linux x86-64 PyPI serves the CUDA build"; \
	elif [ "$$(uname -s)" != Linux ]; then \
	  why="not Linux: the default build there has no CUDA libraries"; \
	elif $(PYTHON) -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=$(TORCH_PROBE_S))" \
	     >/dev/null 2>&1; then \
	  idx="$(TORCH_CPU_INDEX)"; why="no NVIDIA GPU found (no nvidia-smi): the CPU build, without several GB of CUDA libraries"; \
	else \
	  why="no NVIDIA GPU found, but $(TORCH_CPU_INDEX) did not answer within $(TORCH_PROBE_S) s; a mirror or cache may still have the CPU build"; \
	fi; \
	echo "torch $(TORCH_PIN) from $${idx:-the configured pip index}: $$why"; \
	if [ -n "$(TORCH_CHOICE_INSTALL)" ]; then \
	  $(BIN)/python -m pip install -q --no-deps torch==$(TORCH_PIN) $${idx:+--index-url $$idx} || exit 1; \
	fi

assets: setup
	$(BIN)/python -m utils.assets fetch

course: assets
	$(BIN)/python -m utils.course

smoke: assets
	$(BIN)/python -m utils.course --smoke

test: assets
	@$(MAKE) --no-print-directory check

# Lint, unit tests, lab checks, nbval (the one full execution of every notebook, which also writes
# build/report.html with each notebook's runtime against its budget), then the browser tier (which runs even
# when the first part failed, so one CI run shows every failure).
# Narrow it with e.g.  make check TESTS=tests/test_results.py NOTEBOOKS=notebooks/00_welcome_and_setup.ipynb
TESTS         ?= tests
NOTEBOOKS     ?= notebooks solutions
BROWSER_TESTS ?= tests/test_browser.py
check:
	$(BIN)/ruff check utils tests conftest.py
	@status=0; set -x; \
	$(BIN)/python -m pytest $(TESTS) $(NOTEBOOKS) -m "not browser" \
	  --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg --durations=25 || status=$$?; \
	$(BIN)/python -m pytest $(BROWSER_TESTS) -m browser || status=$$((status ? status : $$?)); \
	exit $$status

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
