# `make demo` and `make test` work on a fresh clone: both set up .venv first.
VENV := .venv
PY := $(VENV)/bin/python
# The built-in demo model (easel/demo/model, trained by `python -m easel.demo.train`) draws simple scenes of shapes;
# `easel generate` uses it when no --model-path is given, at the sizes and steps its folder states.
DEMO_PROMPT := a large yellow circle on the right, on a blue background

.PHONY: setup demo test bench

setup: $(VENV)/.installed

# torch is pinned first, alone: a bare `torch` requirement could pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The checker then says what demo.png shows.
demo: setup
	$(VENV)/bin/easel generate --prompt "$(DEMO_PROMPT)" --output-path demo.png
	$(PY) -m easel.demo.check demo.png --prompt "$(DEMO_PROMPT)"

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/bench_vs_diffusers.py
