# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Everything installs into a local virtual environment; on a CPU machine torch==2.13.0 is the CPU build
# (any other torch request would pull a multi-GB CUDA build, see docs/install.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/igrpo demo --output $(DEMO_DIR)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
