# `make demo` and `make test` work on a fresh clone: both set up .venv first.
VENV := .venv
PY := $(VENV)/bin/python
DEMO_MODEL := models/tiny-flux
DEMO_PROMPT := a red circle on a blue background

.PHONY: setup demo test bench

setup: $(VENV)/.installed

# torch is pinned first, alone: a bare `torch` requirement could pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	test -f $(DEMO_MODEL)/model_index.json || \
		$(PY) -c "from easel.testing import build_tiny_pipeline; build_tiny_pipeline('flux', '$(DEMO_MODEL)')"
	$(VENV)/bin/easel generate --model-path $(DEMO_MODEL) --prompt "$(DEMO_PROMPT)" \
		--height 256 --width 256 --num-inference-steps 8 --output-path demo.png

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/bench_vs_diffusers.py
