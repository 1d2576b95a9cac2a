# Two commands do all the set-up: `make run` and `make test`. Reruns skip the install.
SHARED ?= ../shared/data
VENV := .venv
STAMP := $(VENV)/.installed
OUT ?= out

.PHONY: setup run test lint bundle-check test-runtimes test-dbr-17.3 test-dbr-18 setup-runtimes
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

# The "latest" row is .venv (requirements.lock); the Databricks ML runtime rows follow.
test: setup lint
	$(VENV)/bin/python -m pytest -q tests
	$(MAKE) test-runtimes

# Databricks ML runtime rows (docs/databricks.md): one venv per runtimes/<row>.txt, built once
# (stamp) and kept beside .venv. torch stays the local CPU wheel (constraints.txt) on every row.
RUNTIME_ROWS := dbr-17.3-lts-ml-gpu dbr-18-lts-ml-gpu
RUNTIME_REQS := transformers accelerate datasets tokenizers safetensors mlflow pandas pyarrow numpy \
	databricks-sdk sqlalchemy 'pyspark[connect]' pysail deltalake pyyaml matplotlib pytest hypothesis jsonschema ninja \
	presidio-analyzer detect-secrets rensa
# The parity tests: train -> log -> register -> evaluate -> score on real records, then the
# collator, generation and pyfunc tests, under the row's own libraries.
PARITY_TESTS := tests/test_runtime_parity.py tests/test_collator.py tests/test_generate.py tests/test_pyfunc_model.py

.venv-%/.installed: runtimes/%.txt constraints.txt setup.py
	test -x .venv-$*/bin/python || python3 -m venv .venv-$*
	.venv-$*/bin/pip install -q torch==2.13.0
	.venv-$*/bin/pip install -q -c constraints.txt -c runtimes/$*.txt $(RUNTIME_REQS)
	.venv-$*/bin/pip install -q -c constraints.txt -c runtimes/$*.txt --no-build-isolation deepspeed
	.venv-$*/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

setup-runtimes: $(foreach row,$(RUNTIME_ROWS),.venv-$(row)/.installed)

test-dbr-17.3: .venv-dbr-17.3-lts-ml-gpu/.installed
	.venv-dbr-17.3-lts-ml-gpu/bin/python -m pytest -q $(PARITY_TESTS)

test-dbr-18: .venv-dbr-18-lts-ml-gpu/.installed
	.venv-dbr-18-lts-ml-gpu/bin/python -m pytest -q $(PARITY_TESTS)

test-runtimes: test-dbr-17.3 test-dbr-18
