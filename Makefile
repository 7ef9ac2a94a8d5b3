# The README's two set-up commands: `make serve` and `make test`.
# Both build .venv/ once (everything for export, service, tests and load tests) and reuse it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REPO ?= model_repo
MODEL ?= resnet50
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint bench venv model clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[export,loadtest,test]'
	touch $(STAMP)

# Export the default model when the repository lacks it. Online this uses torchvision's ImageNet
# weights; offline the exporter says so loudly and exports random weights, recorded as `random`.
model: $(STAMP)
	@if [ ! -f $(REPO)/$(MODEL)/config.pbtxt ]; then \
	  $(PY) -m export --arch $(MODEL) --weights DEFAULT --repo $(REPO) --fallback-random; \
	fi

serve: model
	$(PY) -m service --model-repo $(REPO) --default-model $(MODEL) --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(PY) -m ruff check service export tests loadtest
	$(PY) -m mypy
	$(PY) -m pytest -ra

bench: $(STAMP)
	$(PY) -m loadtest.bench

clean-venv:
	rm -rf $(VENV)
