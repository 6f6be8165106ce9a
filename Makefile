# The README's two commands: `make demo` (train, sample, score on Fashion-MNIST) and `make test`.
# Both create the virtualenv, install progflow and make sure Fashion-MNIST is present; neither needs the network
# beyond that. The 64px emoji dataset is fetched apart, once, with npm: `make data-emoji`, then `make demo-emoji`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test install data data-emoji demo-emoji bench-speed clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# the CPU build of torch; a looser pin would pull a multi-GB CUDA build
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[plot,test,peer,diffusers]'
	touch $@

install: $(VENV)/.installed

data:
	@bash scripts/ensure-data.sh

demo: install data
	$(VENV)/bin/progflow demo

data-emoji: install
	$(VENV)/bin/progflow fetch-data emoji

demo-emoji: install data-emoji
	$(VENV)/bin/progflow demo --dataset emoji

# one test file per worker, up to 4 workers, one thread each (the CLI tests' subprocesses use one too)
test: install data
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -n auto --maxprocesses 4 --dist loadfile

bench-speed: install data
	$(VENV)/bin/progflow bench speed

clean:
	rm -rf $(VENV) *.egg-info
