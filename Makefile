PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DISTRIBUTED_STAMP := $(VENV)/.installed-distributed
# Horovod (the extra `distributed`, for onmt-main train --horovod and its tests) compiles against
# the installed TensorFlow with Gloo, no MPI: 8 to 17 minutes on 2 cores the first time (pip then
# keeps the wheel in its cache). It needs gcc, g++, make and cmake. Only `make test` installs it.
HOROVOD_BUILD := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
	HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
DEMO_DIR ?= run/demo

.PHONY: demo test docs experiment experiment-quick bench clean

$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,test,experiment,docs]'
	touch $(STAMP)

# Without build isolation, Horovod's build sees the venv's TensorFlow (so does the editable
# reinstall of this project, hence setuptools and wheel first).
$(DISTRIBUTED_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet 'setuptools>=64' wheel
	@echo "Installing Horovod: it compiles for 8 to 17 minutes the first time on this machine"
	$(HOROVOD_BUILD) $(BIN)/python -m pip install --quiet --no-build-isolation -e '.[cpu,distributed]'
	$(BIN)/python -c "import horovod.tensorflow"
	touch $(DISTRIBUTED_STAMP)

demo: $(STAMP)
	$(BIN)/python tools/demo.py --output_dir $(DEMO_DIR)

# Three workers on two cores: most of an onmt-main run of the tests is single-threaded Python
# (start-up, graph tracing), so a third worker fills the cores. --dist loadfile keeps each file's
# trained runs (module fixtures) on one worker.
test: $(DISTRIBUTED_STAMP)
	$(BIN)/ruff check .
	$(MAKE) docs
	ONMT_TRAINKIT_TEST_HOROVOD=required $(BIN)/python -m pytest -q -n 3 --dist loadfile --durations=30 tests

# The documentation site in site/: warnings (a broken link or anchor) are errors.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet

experiment: $(STAMP)
	$(BIN)/python tools/experiment.py --jobs 2 $(ARGS)

experiment-quick: $(STAMP)
	$(BIN)/python tools/experiment.py --budget quick --jobs 2 $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/moving_average.py
	$(BIN)/python bench/averaging.py
	$(BIN)/python bench/side_by_side.py --steps 200

clean:
	rm -rf run site .pytest_cache
