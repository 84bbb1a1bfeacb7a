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
	$(BIN)/iclgd-lens compare --model tiny-icl --task synth-sst2 --k 32 --seed 0 --lr 0.01 \
		--n-eval 200 --out $(RUN_OUT) --overwrite

test: install
	$(BIN)/python -m pytest

train-model: install
	$(BIN)/python analyses/train_tiny_icl.py

evaluate-model: install
	$(BIN)/python analyses/evaluate_tiny_icl.py

clean:
	rm -rf $(VENV) runs .pytest_cache
