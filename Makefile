# Two commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the project's bytecode, as `pip install .` would leave it (an editable
# install under PYTHONDONTWRITEBYTECODE=1 compiles every module at each start)
BYTECODE := $(PY) -m compileall -q dataflows operators connectors >/dev/null
# the compiled portfolio step built ahead of time (operators/portfolio_step.py);
# without a C compiler the JIT serves, only slower to start
STEP := $(PY) tools/build_portfolio_step.py || true

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@$(BYTECODE)
	@$(STEP)
	@touch $(STAMP)

demo: $(STAMP)
	@$(BYTECODE)
	@$(STEP)
	$(VENV)/bin/cuts demo

test: $(STAMP)
	@$(STEP)
	$(PY) -m pytest -n 2 --dist loadfile

bench: $(STAMP)
	@$(BYTECODE)
	@$(STEP)
	$(PY) bench/backtest.py

clean:
	rm -rf $(VENV) data/demo operators/_portfolio_step_*
