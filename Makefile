# Two entry points: `make example` (set up + run the example build) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.trtq-installed

.PHONY: example test bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[examples,dev]'
	touch $@

example: $(STAMP)
	$(PY) examples/prepare_example.py
	$(VENV)/bin/trtq build configs/efficientnet_lite0.yaml

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf engines/*/ models/ data/sample-photos/
