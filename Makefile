# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch is pinned: 2.13.0 is the CPU build on this machine's disk; an unpinned
# torch would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: demo test lint clean bench protos

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[test,inspect]'
	touch $@

# The main job end to end on built-in data; it grows as netc does.
demo: $(VENV)/.installed
	rm -rf runs/demo
	$(PY) -m netc zoo
	$(PY) -m netc compile lenet5
	$(PY) -m netc train lenet5 --data digits --out runs/demo/lenet5
	$(PY) -m netc export runs/demo/lenet5 -o runs/demo/lenet5.onnx
	$(PY) -m netc optimize runs/demo/lenet5.onnx -o runs/demo/lenet5.opt.onnx
	$(PY) examples/serve_digits.py runs/demo/lenet5 runs/demo/repo

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

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
