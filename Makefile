# One virtual environment (.venv) for everything; each target sets it up when needed.
#   make lab    JupyterLab on the tutorials (the main job)
#   make serve  the classroom dashboard (workbench serve) on http://localhost:5006
#   make test   the whole test suite: unit tests and every notebook (pytest --nbval-lax)
# TORCH picks the torch build installed before the package; e.g. a CPU-only wheel elsewhere:
#   make test TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup lab serve test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[all,dev,reference]"
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

serve: $(STAMP)
	$(BIN)/workbench serve --run-dir workbench-runs

test: $(STAMP)
	$(BIN)/python -m pytest --nbval-lax --nbval-current-env --doctest-modules workbench tests notebooks

bench: $(STAMP)
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
