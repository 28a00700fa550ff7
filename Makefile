# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv if absent and install lbfood into it (with its dev, export and postgres extras).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The PyTorch build to install into a fresh venv (override on machines that need another one).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

# The demo whose runs `make pictures` draws (it runs the demo first when that folder has no runs).
DEMO_RUNS ?= runs/demo

.PHONY: demo test lint bench pictures clean

$(VENV)/.lbfood-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev,export,postgres]'
	touch $@

demo: $(VENV)/.lbfood-installed
	$(VENV)/bin/lbfood demo

test: $(VENV)/.lbfood-installed
	$(VENV)/bin/ruff check lbfood tests benchmarks
	$(PY) -m pytest

# The README's pictures (docs/fig5-norms.png, docs/fig7-explain.png) from the demo's runs.
pictures: $(VENV)/.lbfood-installed
	test -f $(DEMO_RUNS)/lff/run.json || $(VENV)/bin/lbfood demo --out $(DEMO_RUNS)
	$(PY) docs/make_pictures.py $(DEMO_RUNS) docs

bench: $(VENV)/.lbfood-installed
	$(PY) benchmarks/lff_overhead.py
	$(PY) benchmarks/trainer_vs_minimal.py
	$(PY) benchmarks/loader_share.py
	$(PY) benchmarks/report_scaling.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
