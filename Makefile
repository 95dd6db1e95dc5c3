# `make demo` and `make test` work on a fresh machine: they build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: demo test venv clean

$(BIN)/stdit-engine: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first, so the project's torch range installs nothing bigger.
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[dev,export,serve,quality,ray]'
	touch $@

venv: $(BIN)/stdit-engine

demo: venv
	$(BIN)/stdit-engine generate --preset tiny --random-weights --device cpu \
		--prompt "a sea turtle swimming over a coral reef" --out demo.mp4

test: venv
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo.mp4
