# cellseg developer entry points. Every target creates .venv on first use.
#   make demo   synthetic data -> train -> predict -> validate -> score -> report
#   make test   the fast test suite (what CI runs); `make test-slow` adds the slow ones
#   make test-kaggle  the kernel rehearsed on the newest description of Kaggle's image (Python 3.13,
#               torch 2.11; CI runs it once after `make test`; its env, ~5 GB, is built once per
#               machine in ~/.cache). An older image: CELLSEG_REHEARSE_IMAGE=kaggle-2026-08-12
#   make bench  benchmark tables
#   make gpu-check  on a GPU machine: float16 training, predict GPU vs CPU, loader vs step, nccl
#               DDP (2 GPUs); one table, < 5 min (scripts/gpu_check.py)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch/torchvision pinned here (not in setup.cfg) so a user's CUDA machine can pick its own build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo_out
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: demo test test-slow test-kaggle bench gpu-check venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	# the Cellpose peer: cellpose 3 pins numpy<2.1, its code runs on numpy 2 (docs/peers.md)
	$(PY) -m pip install -q --no-deps cellpose==3.1.1.3
	touch $@

demo: venv
	$(VENV)/bin/cellseg demo --out $(DEMO_OUT)

test: venv
	$(PY) -m pytest -q -n 2 --dist loadfile

test-slow: venv
	$(PY) -m pytest -q -n 2 --dist loadfile --runslow

test-kaggle: venv
	CELLSEG_KAGGLE_IMAGE=1 $(PY) -m pytest -q -p no:xdist tests/test_rehearse.py -k kaggles_image

bench: venv
	$(PY) -m bench

gpu-check: venv
	$(PY) scripts/gpu_check.py --out gpu_check_out

clean:
	rm -rf $(DEMO_OUT) build dist *.egg-info
