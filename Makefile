# One venv for everything; `make demo` and `make test` create it on first use.
SHELL := /bin/bash
PYTHON ?= python3
DEMO_DIR ?= runs/demo
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
T5_VERSION := 0.9.4

.PHONY: venv demo test lint format clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU build of torch (for the transformers parity tests) before anything can pull CUDA.
	$(PIP) install -q torch==2.13.0
	# t5 without its dependencies: setup.py lists them, minus the tensorflow-datasets duplicate.
	$(PIP) install -q --no-deps t5==$(T5_VERSION)
	$(PIP) install -q -e '.[test]'
	$(PIP) check
	touch $@

# The demo's prompts, in bash's $'...' quoting: each command echoes as one line.
DEMO_PROMPT := $$'import os\n\n\ndef '
DEMO_PREFIX := $$'def read_lines(path):\n    with open(path) as f:\n        '
DEMO_SUFFIX := $$'\n    return lines\n'

demo: venv
	$(PY) -m codegen2_jax.main --gin_file=experiments/demo_cpu.gin --gin.MODEL_DIR="'$(DEMO_DIR)'"
	$(PY) -m codegen2_jax.experiments.plot_curves --model_dir=$(DEMO_DIR)
	$(PY) -m codegen2_jax.sampling.sample_cli --checkpoint_dir=$(DEMO_DIR)/checkpoints --prompt=$(DEMO_PROMPT) --max_new_tokens=64
	$(PY) -m codegen2_jax.sampling.sample_cli --checkpoint_dir=$(DEMO_DIR)/checkpoints --prefix=$(DEMO_PREFIX) --suffix=$(DEMO_SUFFIX) --max_new_tokens=32

test: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -n 2 --dist loadgroup --durations=15 -q -rs tests

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
