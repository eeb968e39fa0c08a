# Two commands for a new user: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install browser demo test test-fast bench clean constraints

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first, pinned to the CPU build, so that no CUDA wheel is pulled in. Every version comes from
# constraints.txt, so a fresh checkout trains on the stack the README's recent numbers were measured with.
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,text,export,larger-encoders]"
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the review-page test (tests/serve/test_browser.py), installed when missing and we are root;
# otherwise that test is skipped, and fails under CI=true.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "browser: /usr/bin/chromium missing and cannot install it (needs root and apt-get)"; fi; \
	fi

demo: install
	$(VENV)/bin/sonodistill demo --out runs/demo

test: install browser
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q --timeout=900 tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

bench: install
	$(VENV)/bin/sonodistill bench data

# Re-freeze constraints.txt from .venv (keeping its header), after a deliberate upgrade and a full `make test`.
# Local build labels (+cpu, +cu124) are dropped so that the pins hold for CPU and CUDA builds alike.
constraints: $(PY)
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) runs .pytest_cache
