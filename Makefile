# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv and install mrbench with the pinned CPU torch (constraints.txt).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	# fastMRI's own reader, used by the tests only to prove our files load in it
	# (--no-deps: its torchvision/lightning pins are not needed for mri_data.py)
	$(BIN)/pip install -q --no-deps fastmri==0.3.0
	touch $(STAMP)

# The main job: synthesise the built-in data (if missing), train every method at
# scarcity levels 0-2, write runs/demo/report.html and print the table. Re-running
# skips finished runs (the sweep resumes; see README).
demo: $(STAMP)
	$(BIN)/mrbench demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# torchopt and higher are benchmark-only (bench_meta.py times the same MAML step with them)
bench: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt torchopt higher
	@for b in benchmarks/bench_*.py; do $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) .pytest_cache
