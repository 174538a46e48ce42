# The two commands of the README. Both set up .venv on first use (see scripts/bootstrap.sh).
VENV ?= .venv
OUT ?= demo-out
# one test process per core (pytest-xdist); PYTEST_ARGS="-n 0" runs them in one
PYTEST_ARGS ?=

.PHONY: demo test bench bench-gpu lint clean

$(VENV)/.installed: pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(VENV) dev,bench
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/palimpsest demo --out $(OUT)

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -n auto --durations=15 $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/train_throughput.py

# the prepared GPU run (README, "On a GPU"); GPU_ARGS="--device cpu" is its dry run
bench-gpu:
	PYTHON=$(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3) bash benchmarks/gpu.sh --out gpu-run $(GPU_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(OUT) .pytest_cache
