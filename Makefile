# Two commands for a fresh machine (Python >= 3.10 with pip and venv; no GPU needed):
#   make demo   install what the demo needs into .venv and run it on the embedded default
#   make test   install everything (test tools, torch for the parity checks, the align/app/tfds extras, libtpu
#               for the TPU compile checks) and test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_out

.PHONY: demo test test-tpu256 install bench clean

# The package and its core dependencies only (JAX, Flax, Orbax, ...): what `make demo` needs.
$(VENV)/.installed-demo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# Everything the test suite exercises, on top of the demo's install.
$(VENV)/.installed: pyproject.toml $(VENV)/.installed-demo
	$(PY) -m pip install -q -e '.[test,tfds,align,app,tpu]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed-demo
	$(PY) -m idinvert_jax.demo --output $(DEMO_OUT)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --durations=15 tests

# The official 256-px steps compiled for a TPU v5e slice by the real TPU compiler (no TPU needed; 7-20 CPU-minutes
# and up to 11 GB per step on a CPU, hence not part of `make test`).
test-tpu256: $(VENV)/.installed
	IDINVERT_TPU_COMPILE_256=1 $(PY) -m pytest -q -rs tests/test_tpu_compile.py -k ffhq256

bench: $(VENV)/.installed
	$(PY) bench/run_all.py --quick

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
