# The README's two Quickstart commands are `make demo` and `make test`; both install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mobiforge-installed

.PHONY: install browser web demo test test-all lint bench clean

install: $(STAMP)

# torch/torchvision are taken from this machine's local wheel store by plain pip (uv/poetry would download GBs).
$(STAMP): pyproject.toml constraints.txt web/package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch torchvision
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all]"
	$(MAKE) --no-print-directory browser web
	touch $(STAMP)

# The page tests drive Debian's chromium through Playwright (never Playwright's own browser download). Installed
# where this is a Debian-like machine and we are root; elsewhere those tests skip and say why.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
		echo "chromium not installed: the browser tests will skip"

# The browser runtime every web folder vendors (LiteRT.js; onnxruntime-web, which the benchmark measures against
# it), pinned by web/package-lock.json.
# Debian's node and npm where this is a Debian-like machine and we are root; elsewhere export --format web says
# what is missing.
web:
	@command -v npm >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; } || \
		echo "npm not installed: the web runtime (export --format web) and its tests will skip"
	@! command -v npm >/dev/null || (cd web && npm ci --silent --no-audit --no-fund)

# The main job on built-in data: ship a verified int8 model for scikit-learn's digits (about 3 minutes on 2 cores).
demo: install
	$(BIN)/mobiforge ship --data digits --time-budget 4m

# The unit suite (under 10 minutes here); test-all adds the longer end-to-end tests marked slow.
test: install
	$(BIN)/python -m pytest -m "not slow"

test-all: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check mobiforge tests benchmarks
	$(BIN)/ruff format --check mobiforge tests benchmarks

bench: install
	$(BIN)/python -m benchmarks.profile_zoo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
