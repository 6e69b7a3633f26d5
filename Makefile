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

# Until `mrbench demo` (sweep + report) exists: the built-in data, then the floor and
# the single-task / joint regimes on AXT1 (abundant) + AXT2 (scarce). --resume makes
# a second `make demo` skip finished runs.
demo: $(STAMP)
	$(BIN)/mrbench data synth
	$(BIN)/mrbench data info data/synth-brain
	for m in zero-filled stl joint; do $(BIN)/mrbench run $$m --resume --set run.experiment=demo || exit 1; done
	$(BIN)/mrbench ls runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) .pytest_cache
