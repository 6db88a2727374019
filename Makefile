# Two commands set everything up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export TF_CPP_MIN_LOG_LEVEL ?= 2
export KERAS_BACKEND := tensorflow

.PHONY: demo test install clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Sinusoid meta-training and evaluation on the embedded task distribution (no download), a few minutes on 2 cores.
demo: $(STAMP)
	$(PY) scripts/train_sinusoid.py --preset demo --workdir runs/sinusoid_demo --export runs/sinusoid_demo/export

# The slowest tests are listed at the end, so a suite that creeps towards CI's time budget shows where.
# Most of the suite is tf.function tracing, one core at a time: one worker per core, a test file per worker.
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile --durations=12 tests

# Training runs (runs/) are kept: they hold the only copy of long runs' checkpoints.
clean:
	rm -rf $(VENV)
