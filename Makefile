# nightrec: `make demo` runs the nightly DAG once on synthetic data; `make test` runs the tests.
PY ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

export PATH := $(BIN):$(PATH)
export NIGHTREC_HOME ?= $(CURDIR)/var
export NIGHTREC_MODELS_DIR ?= $(CURDIR)/models
export AIRFLOW_HOME ?= $(CURDIR)/var/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN ?= sqlite:///$(AIRFLOW_HOME)/airflow.db
export HF_HUB_OFFLINE := 1

# onnxruntime-gpu for its test on a host with no GPU: the CUDA 13 build (bench/gpu_wheels.sh)
ORT_GPU_VERSION := 1.31.1
DEMO_USERS ?= 2000
DEMO_ITEMS ?= 300

.PHONY: demo test env lint bench clean

env: $(STAMP)

# The environment: created once, re-installed only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU build of torch (a bare `torch` would pull the multi-GB CUDA build)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# onnxruntime-gpu beside the environment, not in it (one ONNX Runtime per environment):
	# tests/test_onnxruntime_gpu.py runs it in a child process, on a host with no GPU
	rm -rf $(VENV)/onnxruntime-gpu
	$(BIN)/python -m pip install -q --no-deps --no-compile --target $(VENV)/onnxruntime-gpu \
		onnxruntime-gpu==$(ORT_GPU_VERSION) \
		|| echo "onnxruntime-gpu not installed: tests/test_onnxruntime_gpu.py will skip"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	mkdir -p $(AIRFLOW_HOME)
	nightrec -q synth --users $(DEMO_USERS) --items $(DEMO_ITEMS) --seed 42
	airflow db migrate > $(AIRFLOW_HOME)/migrate.log 2>&1
	airflow pools set nightrec_warehouse 1 "tasks that open the nightrec warehouse" > /dev/null
	airflow dags test nightly_recommendations > $(AIRFLOW_HOME)/dags-test.log 2>&1 \
		|| (tail -50 $(AIRFLOW_HOME)/dags-test.log; exit 1)
	@grep -E "\[nightrec\.(ingest|snapshot|embed|train|registry|score|publish)\]" $(AIRFLOW_HOME)/dags-test.log \
		| grep -v "already ingested" | sed -E 's/^.*\[info *\] //; s/ \[nightrec\..*$$//' | cut -c1-160 || true
	@echo
	@echo "DAG run log:     $(AIRFLOW_HOME)/dags-test.log"
	@echo "warehouse:       $(NIGHTREC_HOME)/warehouse.duckdb (the pipeline's own; not for readers)"
	@echo "serving tables:  $(NIGHTREC_HOME)/serving/serving.duckdb (Parquet: see serving/current.json)"
	@echo "model:           $$(readlink $(NIGHTREC_MODELS_DIR)/current)"
	@echo
	nightrec -q recs --sample 2 --limit 10

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check tasks dags tests bench
	$(BIN)/ruff format --check tasks dags tests bench
	$(BIN)/mypy tasks

bench: $(STAMP)
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf var models/v* models/current
