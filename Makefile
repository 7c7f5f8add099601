# kvmpage: every target sets up its own virtual environment (.venv) first.
#   make run    set up, then kvmpage verify: check the built-in layout against the CPU
#   make test   set up, then run the whole test suite
#   make lint   ruff check, ruff format --check, mypy
#   make fuzz   the long differential campaign on KVM (pytest -m slow; KVMPAGE_FUZZ_CASES=N)
#   make guest  reassemble the guest agent (GNU as) and check it matches the shipped bytes

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint fuzz guest bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: on Debian run 'apt-get install python3-venv'"; exit 2; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/kvmpage verify

test: $(STAMP)
	$(BIN)/python -m pytest -q

fuzz: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check kvmpage tests scripts examples
	$(BIN)/ruff format --check kvmpage tests scripts examples
	$(BIN)/mypy

guest: $(STAMP)
	$(BIN)/python -m kvmpage.machine.build --check

bench: $(STAMP)
	$(BIN)/python scripts/bench_paging.py

clean:
	rm -rf $(VENV) build *.egg-info guest/build
