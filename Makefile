# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo diagnostics lint test benchmark clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,nerfstudio]"
	touch $(STAMP)

# Trains gaussian-esgd-cpu on the embedded (generated) forward-facing scene, then ns-eval and ns-render;
# then the project's ESGD against schedule-free AdamW on the embedded image, side by side. The README quotes
# its measured time (the one place it is written).
demo: $(STAMP)
	$(BIN)/nf-precond nerf-demo --output-dir outputs/demo
	$(BIN)/nf-precond image-demo --output-dir outputs/demo
	@echo ""
	@echo "Next, from this folder (or 'source $(BIN)/activate' first and drop the '$(BIN)/'):"
	@echo "  $(BIN)/python standalone/image.py --image YOUR_PHOTO.png --compare adam,esgd --epochs 20"
	@echo "  $(BIN)/nf-precond advise image --image YOUR_PHOTO.png"
	@echo "  $(BIN)/ns-train gaussian-esgd-cpu --data YOUR_LLFF_SCENE"

# The paper's Fig. 2 and Fig. 4 diagnostics.
diagnostics: $(STAMP)
	$(BIN)/nf-precond sparsity --activation gaussian --output-dir outputs/diagnostics
	$(BIN)/nf-precond sparsity --activation relu-pe --output-dir outputs/diagnostics
	$(BIN)/nf-precond condition --output-dir outputs/diagnostics

# ruff (configured in pyproject.toml): lint and format check; `make test` runs it first.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -m "not benchmark"

benchmark: $(STAMP)
	$(BIN)/python benchmarks/step_time.py --json-out benchmarks/results/step_time_cpu.json

clean:
	rm -rf $(VENV) outputs .pytest_cache
