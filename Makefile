# bayesfed: the README's two commands are `make demo` and `make test`.
# Each target finds a Python >= 3.12 (scripts/find-python.sh), creates or refreshes .venv and
# installs what it needs; a stamp file per extra re-installs when pyproject.toml changes.

SHELL := /bin/sh
VENV := .venv
VPY := $(VENV)/bin/python
DEMO_OUT ?= out/demo

.PHONY: help demo test test-all docs clean venv

help:
	@echo "make demo      fit the paper's models by year to the shipped study and report (writes $(DEMO_OUT)/)"
	@echo "make test      install and run the default test suite (slow checks excluded)"
	@echo "make test-all  the full test suite, slow statistical checks included"
	@echo "make docs      build the documentation site into site/ (strict: any warning fails)"

$(VENV)/.created:
	@py=$$(sh scripts/find-python.sh) || exit 1; \
	echo "bayesfed: creating $(VENV) with $$py"; \
	"$$py" -m venv $(VENV) && $(VPY) -m pip install --quiet --upgrade pip
	@touch $@

$(VENV)/.installed-%: pyproject.toml $(VENV)/.created
	@echo "bayesfed: installing bayesfed[$*] into $(VENV) (first time takes a few minutes)"
	@$(VPY) -m pip install --quiet --disable-pip-version-check -e ".[$*]"
	@touch $@

$(VENV)/.installed-base: pyproject.toml $(VENV)/.created
	@echo "bayesfed: installing bayesfed into $(VENV) (first time takes a few minutes)"
	@$(VPY) -m pip install --quiet --disable-pip-version-check -e .
	@touch $@

venv: $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	@$(VENV)/bin/bayesfed demo --out $(DEMO_OUT)

test: $(VENV)/.installed-test
	@$(VPY) -m pytest -q

test-all: $(VENV)/.installed-test
	@$(VPY) -m pytest -q -m "slow or not slow"

# -W --keep-going: every warning is reported, then fails the build; -n: every reference must
# resolve. tests/test_docs.py runs the same build.
docs: $(VENV)/.installed-docs
	@$(VPY) -m sphinx -W --keep-going -n -b html docs site
	@echo "documentation built: site/index.html"

clean:
	rm -rf $(VENV) out site build *.egg-info
