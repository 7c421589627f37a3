# `make setup` creates .venv if missing; `make test` runs the suite; `make demo` runs the default model.
PY := .venv/bin/python

.PHONY: setup test demo
setup: .venv/.installed
.venv/.installed: pyproject.toml
	test -d .venv || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

test: setup
	$(PY) -m pytest tests

demo: setup
	$(PY) -m vos.demo
