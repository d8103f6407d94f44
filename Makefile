# The two commands of the README. Both work on a fresh machine with only python3.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint clean

$(BIN)/orchestrd: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# Run the demo plan (four phases, bundled demo worker) on the bundled local default config.
run: $(BIN)/orchestrd
	rm -rf .demo && mkdir -p .demo/repo
	@# a git checkout of its own, when git is there, so the demo shows worker.changes and the git rules
	-command -v git >/dev/null && git -C .demo/repo init -q && \
	  git -C .demo/repo -c user.name=demo -c user.email=demo@localhost commit -q --allow-empty -m "empty demo repo"
	$(BIN)/orchestrd run config/examples/demo.toml --config orchestrd/local.toml
	@echo
	$(BIN)/orchestrd report DEMO-calc --config orchestrd/local.toml
	@echo
	$(BIN)/orchestrd usage --config orchestrd/local.toml
	@echo "also: orchestrd tail --plan DEMO-calc, orchestrd logs DEMO-calc P03 (see README, Day to day)"

# Four processes: most tests wait on real subprocesses. Tests of one machine-wide resource share
# an xdist group (tests/conftest.py), which runs on one worker.
test: $(BIN)/orchestrd
	$(BIN)/python -m pytest -q -rs -n 4 --dist loadgroup --durations=15

# Formatting, lint and types, as CI checks them before the tests.
lint: $(BIN)/orchestrd
	$(BIN)/ruff format --check orchestrd tests bench
	$(BIN)/ruff check orchestrd tests bench
	$(BIN)/mypy orchestrd

clean:
	rm -rf $(VENV) .demo .orchestrd
