# Two commands do all the set-up: `make test` and `make figures`.
# Both build the environment first when it is missing (uv, from PyPI).

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedlab-installed

# The UCI heart-disease files: a folder beside the checkout when there is one,
# else data/heart_disease (where the loader downloads them, checksums checked).
HEART_DIR ?= $(firstword $(wildcard $(CURDIR)/../shared/data/heart_disease) $(CURDIR)/data/heart_disease)
export FEDLAB_HEART_DISEASE_DIR ?= $(HEART_DIR)
# FLamby's Fed-TCGA-BRCA files, the same way (data/fed_tcga_brca is where the loader downloads them).
TCGA_BRCA_DIR ?= $(firstword $(wildcard $(CURDIR)/../shared/data/fed_tcga_brca) $(CURDIR)/data/fed_tcga_brca)
export FEDLAB_TCGA_BRCA_DIR ?= $(TCGA_BRCA_DIR)

.PHONY: env test browser soak figures check-figures profile-figures lab bench clean

env: $(STAMP)

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra test --compile-bytecode --python $(PYTHON)
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (fedlab)" >/dev/null
	touch $(STAMP)

test: env browser
	$(PY) -m pytest

# The browser test needs Debian's Chromium (Playwright cannot download its own here).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "*** /usr/bin/chromium missing and not root: the browser test will be skipped ***"; fi; \
	fi

# The browser, notebook and site-process tests RUNS times in a row from a clean clone of HEAD (tools/soak.py): passes, failures,
# stalls; LOAD busy processes beside them stand for the rest of the suite.
RUNS ?= 5
LOAD ?= 1
soak: env browser
	$(PY) tools/soak.py --runs $(RUNS) --load $(LOAD)

figures: env
	$(PY) -m fedlab reproduce

# Reruns every notebook in its full setting from an empty cache and compares each results/ CSV and figure
# with the committed one (exit 1 on any difference).
check-figures: env
	$(PY) -m fedlab reproduce --check

# Where `make figures` spends its time, per notebook cell and phase (scratch folder, empty cache; figures/ untouched)
# -> results/benchmarks/figures_profile.csv
profile-figures: env
	$(PY) benchmarks/figures_profile.py

lab: env
	$(VENV)/bin/jupyter lab notebooks/

# The benchmark (issue #9): fedlab, a plain Keras loop, Flower and the compute limit, one run.
# Flower needs numpy >= 1.26 and a newer protobuf than TensorFlow 2.14 allows: its own venv,
# pinned in benchmarks/flower-requirements.txt (torch 2.13.0 CPU, which pip takes from this
# machine's /opt/wheels; elsewhere from https://download.pytorch.org/whl/cpu).
FLOWER_VENV := .bench/flower
$(FLOWER_VENV)/.installed: benchmarks/flower-requirements.txt
	$(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/pip install --quiet -r benchmarks/flower-requirements.txt
	touch $@

bench: env $(FLOWER_VENV)/.installed
	$(PY) benchmarks/run.py --flower-python $(FLOWER_VENV)/bin/python

clean:
	rm -rf $(VENV) .tools .bench build .pytest_cache

environment.yml: uv.lock tools/export_environment_yml.py | $(UV)
	PATH="$(dir $(UV)):$$PATH" $(PY) tools/export_environment_yml.py
