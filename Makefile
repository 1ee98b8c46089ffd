# The README's two commands: `make train` and `make test`.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python

.PHONY: train test lint bench clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

train: $(STAMP)
	$(PY) ray_jobs/train.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check pioneer ray_jobs serve tests bench
	$(VENV)/bin/ruff format --check pioneer ray_jobs serve tests bench

bench: $(STAMP)
	$(PY) bench/train_throughput.py $(ARGS)
	$(PY) bench/infer_throughput.py
	$(PY) bench/ray_overhead.py
	$(PY) bench/data_throughput.py
	$(PY) bench/eval_throughput.py
	$(PY) bench/serve_load.py
	$(PY) bench/tune_overhead.py

clean-venv:
	rm -rf $(VENV)
