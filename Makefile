PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= run/demo

.PHONY: demo test experiment experiment-quick bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,experiment]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python tools/demo.py --output_dir $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

experiment: $(STAMP)
	$(BIN)/python tools/experiment.py --jobs 2 $(ARGS)

experiment-quick: $(STAMP)
	$(BIN)/python tools/experiment.py --budget quick --jobs 2 $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/moving_average.py
	$(BIN)/python bench/averaging.py
	$(BIN)/python bench/side_by_side.py --steps 200

clean:
	rm -rf run .pytest_cache
