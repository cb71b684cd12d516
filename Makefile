# Two entry points, both from a fresh clone: `make demo` and `make test`.
# Everything installs into .venv with pip (the CPU torch wheel is pinned in constraints.txt).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SAMPLE := pipelines/sample.toml
export DO_NOT_TRACK := 1
export SCARF_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1

.PHONY: install browser demo lint test bench clean-sample

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(PY) -c "import kbguard, torch, qdrant_edge, unstructured; assert torch.__version__.startswith('2.13.0')"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/kbguard rebuild --config $(SAMPLE)
	$(VENV)/bin/kbguard status --config $(SAMPLE)
	$(VENV)/bin/kbguard search "How do I test a view with the test client?" -k 3 --config $(SAMPLE)
	$(VENV)/bin/kbguard verify --config $(SAMPLE)

lint: install
	$(VENV)/bin/ruff check kbguard tests benchmarks tools
	$(VENV)/bin/mypy

# The report test opens a report in a real headless browser: Debian's chromium (apt-get, as
# root; ~25 s on a fresh machine). Nothing happens when it is already installed.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "make browser: the report test needs Debian's chromium; install it as root" \
	         "(apt-get install chromium) and run make again." >&2; exit 1; fi; \
	  echo "make browser: installing Debian's chromium for the report test"; \
	  apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: install browser
	$(VENV)/bin/pytest -q

clean-sample:
	rm -rf .kbguard/sample manifests/sample.duckdb manifests/sample.duckdb.wal manifests/sample.duckdb.lock
