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

# The main job end to end on built-in data; it grows as netc does.
demo: $(VENV)/.installed
	rm -rf runs/demo
	$(PY) -m netc zoo
	$(PY) -m netc compile lenet5
	$(PY) -m netc train lenet5 --data digits --out runs/demo/lenet5

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	$(PY) bench/compile.py
	$(PY) bench/train_overhead.py
	$(PY) bench/train.py

clean:
	rm -rf $(VENV) build *.egg-info
