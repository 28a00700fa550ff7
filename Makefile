# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv if absent and install lbfood into it (with its dev, export, timm and postgres extras).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The PyTorch build to install into a fresh venv (override on machines that need another one).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

# The demo whose runs `make pictures` draws (it runs the demo first when that folder has no runs).
DEMO_RUNS ?= runs/demo

.PHONY: demo test test-fast lint bench pictures real-images clean

$(VENV)/.lbfood-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev,export,timm,postgres]'
	touch $@

demo: $(VENV)/.lbfood-installed
	$(VENV)/bin/lbfood demo

# The tests run in one process per core (pytest-xdist; TEST_WORKERS=0 runs them in this one process).
TEST_WORKERS ?= auto
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

test: $(VENV)/.lbfood-installed
	$(VENV)/bin/ruff check lbfood tests benchmarks
	$(PYTEST)

# A developer's quicker loop: everything but the tests marked slow (the benchmark scripts at tiny size).
test-fast: $(VENV)/.lbfood-installed
	$(VENV)/bin/ruff check lbfood tests benchmarks
	$(PYTEST) -m "not slow"

# The README's pictures (docs/fig5-norms.png, docs/fig7-explain.png) from the demo's runs.
pictures: $(VENV)/.lbfood-installed
	test -f $(DEMO_RUNS)/lff/run.json || $(VENV)/bin/lbfood demo --out $(DEMO_RUNS)
	$(PY) docs/make_pictures.py $(DEMO_RUNS) docs

bench: $(VENV)/.lbfood-installed
	$(PY) benchmarks/lff_overhead.py
	$(PY) benchmarks/trainer_vs_minimal.py
	$(PY) benchmarks/loader_share.py
	$(PY) benchmarks/report_scaling.py

# The offline real-photo set (README, Datasets): its two Debian packages (as root), then the script.
REAL_IMAGES ?= data/real
real-images: $(VENV)/.lbfood-installed
	test -d /usr/share/tuxpaint/stamps -a -d /usr/share/gcompris-qt/rcc || \
		apt-get install -y --no-install-recommends tuxpaint-stamps-default gcompris-qt-data
	$(PY) benchmarks/real_images.py --out $(REAL_IMAGES)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
