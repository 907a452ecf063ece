# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Everything installs into a local virtual environment; on a CPU machine torch==2.13.0 is the CPU build
# (any other torch request would pull a multi-GB CUDA build, see docs/install.md). constraints.txt is the one tested
# version set, shared with .ci/vllm_cpu.sh and the Dockerfile.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	$(PY) -m pip check
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/igrpo demo --output $(DEMO_DIR)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
