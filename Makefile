# kvmpage: every target sets up the local virtual environment (.venv) it needs first.
#   make run    install kvmpage alone (it needs nothing else), then kvmpage verify: check the
#               built-in layout against the CPU
#   make test   install kvmpage with its development tools (the dev extra), run the test suite
#   make lint   the same environment; ruff check, ruff format --check, mypy
#   make fuzz   the long differential campaign on KVM (pytest -m slow; KVMPAGE_FUZZ_CASES=N)
#   make guest  reassemble the guest agent (GNU as) and check it matches the shipped bytes
#   make bench  the mapper's per-operation costs
#   make wheel  build the wheel into dist/ (pip install dist/kvmpage-*.whl gives the command)
# Either of run and test can come first: test adds the tools to what run installed, and after
# test, run has nothing left to install.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# what each environment has, installed when pyproject.toml is newer
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: setup run test lint fuzz guest bench wheel clean

setup: $(DEV_STAMP)

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: on Debian run 'apt-get install python3-venv'"; exit 2; }
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

# the dev extra includes everything run needs, so it satisfies run's stamp too
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/kvmpage verify

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q

fuzz: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(DEV_STAMP)
	$(BIN)/ruff check kvmpage tests scripts examples
	$(BIN)/ruff format --check kvmpage tests scripts examples
	$(BIN)/mypy

guest: $(RUN_STAMP)
	$(BIN)/python -m kvmpage.machine.build --check

bench: $(RUN_STAMP)
	$(BIN)/python scripts/bench_paging.py

wheel: $(RUN_STAMP)
	$(BIN)/python -m pip wheel --no-deps --quiet --wheel-dir dist .

clean:
	rm -rf $(VENV) build dist *.egg-info guest/build
