# Two commands do all the set-up: `make run` and `make test`. Reruns skip the install.
SHARED ?= ../shared/data
VENV := .venv
STAMP := $(VENV)/.installed
OUT ?= out

.PHONY: setup run test lint bundle-check
setup: $(STAMP)

$(STAMP): requirements.lock constraints.txt setup.py
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -c constraints.txt -r requirements.lock
	$(VENV)/bin/pip install -q -c constraints.txt --no-build-isolation deepspeed==0.19.8
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

run: setup
	$(VENV)/bin/dolly-spark run --input $(SHARED)/databricks-dolly-15k.jsonl --output-root $(OUT) --tokenizer $(SHARED)/tokenizer/gpt-neox-20b

bundle-check: setup
	$(VENV)/bin/python -m tools.bundle_check bundles/

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	$(VENV)/bin/python -m pytest -q tests
