# Two commands for a new user: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch/torchvision: these releases are on the build machines' disk; override for other platforms,
# e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= demo

.PHONY: install demo test test-all lint format bench clean mutation

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC) || $(BIN)/python -m pip install --quiet torch torchvision
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The whole path on the bundled Fashion-MNIST subset: export, inspect, fine-tune, evaluate (runs/demo/eval/report.html),
# predict (a cat photo should come out 'unknown'); a few minutes on 2 CPU cores.
demo: $(STAMP)
	$(BIN)/visiontune datasets export fashion-mnist $(DEMO_DIR) --overwrite
	$(BIN)/visiontune inspect $(DEMO_DIR) --out $(DEMO_DIR)-inspect
	$(BIN)/visiontune train $(DEMO_DIR) --out runs/demo --overwrite
	$(BIN)/visiontune evaluate runs/demo $(DEMO_DIR)
	$(BIN)/python -c "from skimage import data; from PIL import Image; Image.fromarray(data.chelsea()).save('$(DEMO_DIR)-cat.jpg')"
	$(BIN)/visiontune predict runs/demo '$(DEMO_DIR)/test/*/0001?.png' $(DEMO_DIR)-cat.jpg --topk 3

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

test: lint
	$(BIN)/python -m pytest -m "not slow" -q

test-all: lint
	$(BIN)/python -m pytest -q

# Mutation testing of data/split.py, data/sources.py, calibration.py and bundle.py against their fast tests
# ([tool.mutmut] in pyproject.toml); not part of `make test` or CI: about 30 min on 2 cores. Results: docs/mutation.md.
mutation: $(STAMP)
	OMP_NUM_THREADS=1 nice -n 19 $(BIN)/mutmut run --max-children 2  # forked torch + OpenMP pool: deadlock
	$(BIN)/python scripts/mutation_summary.py --survivors

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench scripts
	$(BIN)/ruff format src tests bench scripts

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(DEMO_DIR)-inspect $(DEMO_DIR)-cat.jpg runs/demo .pytest_cache .ruff_cache
