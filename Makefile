# Two commands for a fresh machine (Python >= 3.10 with pip and venv; no GPU needed):
#   make demo   install what the demo needs into .venv and run it on the embedded default
#   make test   install everything (test tools, torch for the parity checks, the align/app/tfds extras) and test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_out

.PHONY: demo test install bench clean

# The package and its core dependencies only (JAX, Flax, Orbax, ...): what `make demo` needs.
$(VENV)/.installed-demo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# Everything the test suite exercises, on top of the demo's install.
$(VENV)/.installed: pyproject.toml $(VENV)/.installed-demo
	$(PY) -m pip install -q -e '.[test,tfds,align,app]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed-demo
	$(PY) -m idinvert_jax.demo --output $(DEMO_OUT)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --durations=15 tests

bench: $(VENV)/.installed
	$(PY) bench/run_all.py --quick

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
