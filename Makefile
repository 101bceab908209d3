# `make demo` and `make test` work on a fresh machine: they create .venv and install with constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install -q -c constraints.txt

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/nntune tune --dataset digits --timeout 90s --ensemble 3 --evidence --evidence-budget 150s --resume \
		--out runs/demo
	@echo "open the report: $$(pwd)/runs/demo/report.html"

test: install
	bash scripts/with_postgres.sh $(PY) -m pytest -q -n auto --dist loadfile

clean:
	rm -rf $(VENV) runs .pytest_cache
