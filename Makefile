# `make demo` and `make test` work on a fresh machine: they build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=

.PHONY: demo test venv clean

$(BIN)/stdit-engine: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, so the project's torch range installs nothing bigger. PyPI's Linux wheel is the
	# CUDA build: TORCH_INDEX=https://download.pytorch.org/whl/cpu takes the CPU one from there.
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
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
