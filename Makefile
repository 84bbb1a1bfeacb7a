# Two commands: `make run` (the main job, offline, bundled defaults) and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default (fast to install here); for CUDA: make TORCH_SPEC="torch" install
TORCH_SPEC ?= torch==2.13.0
RUN_OUT ?= runs/tiny-icl-synth-sst2

.PHONY: install run test train-model evaluate-model benchmark clean

$(BIN)/iclgd-lens: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(BIN)/iclgd-lens

run: install
	$(BIN)/iclgd-lens compare --model tiny-icl --task synth-sst2 --k 32 --seed 0 --lr 0.3 \
		--n-eval 200 --out $(RUN_OUT) --overwrite --quiet

test: install
	$(BIN)/python -m pytest

# The shipped tiny-icl, in two curriculum stages (CPU, one thread each; see its MODEL_CARD.md):
# 1. the three binary tasks until class matching emerges; 2. continued on five tasks (fresh optimizer).
TRAIN_COMMON = --shared-probe-classes --n-layers 2 --pos alibi --lm-weight 0 --p-real 0.5 --p-fixed 0.3 \
	--batch-size 16 --short-demos 10 --max-demos 40 --lr 2e-3 --steps 20000 --eval-every 500 --threads 1
STAGE1_OUT ?= runs/tiny-icl-stage1
train-model: install
	$(BIN)/python analyses/train_tiny_icl.py $(TRAIN_COMMON) --tasks synth-sst2 synth-mr synth-subj \
		--p-long 0 --seed 1 --stop-at 3000 --out $(STAGE1_OUT)
	$(BIN)/python analyses/train_tiny_icl.py $(TRAIN_COMMON) --init $(STAGE1_OUT) \
		--tasks synth-sst2 synth-sst5 synth-mr synth-subj synth-agnews --p-long 0.05 --warmup 50 --seed 2 --stop-at 3000

evaluate-model: install
	$(BIN)/python analyses/evaluate_tiny_icl.py

clean:
	rm -rf $(VENV) runs .pytest_cache
