# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch is pinned: 2.13.0 is the CPU build on this machine's disk; an unpinned
# torch would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: demo test browser lint typecheck clean bench protos

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[test,inspect]'
	touch $@

# The main job end to end on built-in data, about 5 minutes on 2 CPU cores: a digits net
# with batch norm (the optimizer folds it), tinyseg on shapes served with its mean IoU,
# the fully convolutional trick on a canvas of digits, and an inspection report.
demo: $(VENV)/.installed
	rm -rf runs/demo
	$(PY) -m netc zoo
	$(PY) -m netc compile examples/digits_bn.yaml
	$(PY) -m netc train examples/digits_bn.yaml --data digits --out runs/demo/digits
	$(PY) -m netc export runs/demo/digits -o runs/demo/digits.onnx
	$(PY) -m netc optimize runs/demo/digits.onnx -o runs/demo/digits.opt.onnx
	$(PY) examples/serve_digits.py runs/demo/digits runs/demo/repo
	$(PY) -m netc train tinyseg --data shapes --epochs 12 --out runs/demo/tinyseg
	$(PY) examples/serve_shapes.py runs/demo/tinyseg runs/demo/repo runs/demo/masks
	$(PY) examples/fcn_digits.py runs/demo/digits runs/demo/fcn
	$(PY) -m netc inspect runs/demo/digits --report runs/demo/report --data digits \
		--image examples/images/three.png
	@echo "demo done: open runs/demo/report/index.html"

# Lint and type-check first: under a minute together, the suite takes minutes.
test: $(VENV)/.installed browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest

# tests/serving/http/test_page.py drives Debian's chromium and chromium-driver: installed
# here when missing, where apt-get runs as root; never fails the build (the test then
# skips, saying why).
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			echo "installing chromium and chromium-driver for the browser test"; \
			apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
			{ apt-get update -q >/dev/null 2>&1 && \
			  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
			echo "note: could not install chromium; the browser test will be skipped"; \
		else \
			echo "note: no chromium and no apt-get as root; the browser test will be skipped"; \
		fi; \
	fi

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# mypy over the netc package ([tool.mypy] in pyproject.toml).
typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(PY) bench/compile.py
	$(PY) bench/train_overhead.py
	$(PY) bench/train.py
	$(PY) bench/optimize.py

clean:
	rm -rf $(VENV) build *.egg-info

# Python stubs for protos/*.proto, committed in protos/generated/ (never edited by hand).
# The sed makes them importable as netc.protos.generated (protoc writes top-level
# imports) and registers them in netc's own descriptor pool, so they never clash
# with another copy of the same .proto files, such as tritonclient's.
protos: $(VENV)/.installed
	rm -f protos/generated/*_pb2*.py protos/generated/*_pb2*.pyi
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=protos/generated \
		--grpc_python_out=protos/generated --pyi_out=protos/generated protos/*.proto
	sed -i -e 's/^import \([A-Za-z0-9_]*_pb2\) as /from . import \1 as /' \
		-e 's/^from google.protobuf import descriptor_pool as _descriptor_pool$$/from .. import POOL as _POOL/' \
		-e 's/_descriptor_pool\.Default()/_POOL/' \
		protos/generated/*_pb2*.py protos/generated/*_pb2*.pyi
