# make setup: the cached test environment (venv + ComfyUI 0.3.75) and, as root, Debian Chromium for tests/browser.
# make test:  every test layer, one ComfyUI server for the whole session.
# make demo:  erases "red" from the embedded demo world and writes pictures to demo-output/.
# make bench: the benchmarks in tests/benchmarks (results in tests/benchmarks/RESULTS.md).
EA_CACHE ?= $(HOME)/.cache/eraseanything-comfyui
VENV ?= $(EA_CACHE)/venv
PYTEST_ARGS ?=
export EA_CACHE

.PHONY: setup setup-env test demo bench gpu-check

setup-env:
	bash tools/setup_env.sh

setup: setup-env
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver; \
	  else \
	    echo "chromium/chromedriver missing and not root: tests/browser will be skipped"; \
	  fi; \
	fi

test: setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --timeout 600 $(PYTEST_ARGS) tests

demo: setup-env
	$(VENV)/bin/python tools/demo.py

bench: setup-env
	$(VENV)/bin/python -m tests.benchmarks.forward_equivalents
	$(VENV)/bin/python -m tests.benchmarks.speed_memory
	$(VENV)/bin/python -m tests.benchmarks.demo_world_quality
	$(VENV)/bin/python -m tests.benchmarks.erasure_quality

gpu-check: setup-env
	bash tests/benchmarks/gpu_check.sh
