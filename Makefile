# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch is pinned: 2.13.0 is the CPU build on this machine's disk; an unpinned
# torch would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: demo test lint clean bench

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m netc zoo
	$(PY) -m netc compile resnet18
	$(PY) -m netc compile fcn8s --input-shape 3,500,500

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	$(PY) bench/compile.py

clean:
	rm -rf $(VENV) build *.egg-info
