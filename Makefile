# The commands of the README, on a fresh machine:
#   make demo   every notebook, in order, on the embedded synthetic data (smoke profile)
#   make lab    JupyterLab on the repository, notebooks/*.py opening as notebooks
#   make test   the whole test suite (what CI runs through .ci/run)
# Each creates .venv and installs the package with its extras first if needed;
# `make test` also installs Debian's chromium for the JupyterLab test (make browser).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.d/semiseg-notebooks.json
DEMO   ?= results/demo
PROFILE ?= smoke

.PHONY: install demo demo-ablations lab browser test figures clean

install: $(STAMP) $(LAB_SETTINGS)

# torch/torchvision are pinned through constraints.txt so pip never swaps the
# CPU torch for a CUDA build (see ../shared/docs/ENVIRONMENT.md).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[notebooks,weights,test]'
	touch $(STAMP)

# JupyterLab opens notebooks/*.py with jupytext's notebook view (not the text
# editor): a settings override installed into the environment, not your home.
$(LAB_SETTINGS): jupyterlab-settings/semiseg-notebooks.json | $(STAMP)
	install -D -m 644 $< $@

demo: $(STAMP)
	$(VENV)/bin/semiseg demo --out $(DEMO) --profile $(PROFILE)

# the demo with the ablation notebooks 02-08 (Tables 2-8) as well
demo-ablations: $(STAMP)
	$(VENV)/bin/semiseg demo --out $(DEMO) --profile $(PROFILE) --ablations

# e.g. make lab LAB_ARGS="--no-browser --port 8899"
LAB_ARGS ?=
lab: $(STAMP) $(LAB_SETTINGS)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" \
	  --LabApp.default_url=/lab/tree/notebooks $(LAB_ARGS)

# Debian's chromium and chromium-driver, which tests/test_lab.py drives (through
# selenium) to run a notebook in a real JupyterLab; installed once, with apt-get.
BROWSER_PACKAGES := chromium chromium-driver
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; else \
	  echo "installing $(BROWSER_PACKAGES) with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_PACKAGES); fi

# One test worker per core this shell may use (tests/conftest.py pins each to
# its core and starts the longest work first); TEST_WORKERS=0 runs them in turn.
TEST_WORKERS ?= $(shell nproc)
test: $(STAMP) $(LAB_SETTINGS) browser
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Results of record (committed under figures/), from the real data in ../shared/data.
SHARED ?= ../shared/data
figures: $(STAMP)
	$(VENV)/bin/semiseg notebook notebooks/00_data_preparation.py \
	  --executed results/record/00_data_preparation.ipynb \
	  -p dataset peerhub -p source $(SHARED)/peerhub_crack_spalling \
	  -p data_dir results/record/peerhub -p output_dir figures

clean:
	rm -rf $(DEMO) .pytest_cache
