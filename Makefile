# Two entry points: `make example` (set up + run the example build) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.trtq-installed

.PHONY: example test bench clean trt-bindings

# NVIDIA's TensorRT Python bindings (no libraries): the API-surface test checks trtq's TensorRT
# glue against them. 10.x from the CUDA 12 wheels, 11.x from the CUDA 13 wheels.
TRT_WHEELS := .cache/trt-bindings
TRT_BINDINGS := tensorrt-cu12-bindings==10.0.1 tensorrt-cu12-bindings==10.16.1.11 \
                tensorrt-cu13-bindings==11.0.0.114 tensorrt-cu13-bindings==11.4.0.106

# pip prints setuptools' "Editable installation ... folders with the same name as your package"
# note on each (re)install: with this flat layout (trtq/ at the root, no src/) setuptools installs a
# meta-path finder that maps only the 'trtq' package, so tests/, bench/, examples/ do not become
# importable top-level names. The note is true and harmless here: 'python -m …' run in a folder
# holding a 'trtq' folder imports that one first (how each checkout tests its own copy).
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[examples,dev]'
	touch $@

example: $(STAMP)
	$(PY) examples/prepare_example.py
	$(VENV)/bin/trtq build configs/efficientnet_lite0.yaml

$(TRT_WHEELS)/.done: Makefile $(STAMP)
	mkdir -p $(TRT_WHEELS)
	for spec in $(TRT_BINDINGS); do \
	  $(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d $(TRT_WHEELS) $$spec || exit 1; \
	done
	touch $@

trt-bindings: $(TRT_WHEELS)/.done

test: $(STAMP) $(TRT_WHEELS)/.done
	TRTQ_REQUIRE_TRT_BINDINGS=1 $(PY) -m pytest -q

clean:
	rm -rf engines/*/ models/ data/sample-photos/
