# bayesfed: the README's two commands are `make demo` and `make test`.
# Each target finds a Python >= 3.12 (scripts/find-python.sh), creates or refreshes .venv and
# installs what it needs; a stamp file per extra re-installs when pyproject.toml changes.

SHELL := /bin/sh
VENV := .venv
VPY := $(VENV)/bin/python
DEMO_OUT ?= out/demo

.PHONY: help demo test test-all docs browser clean venv bench bench-r

help:
	@echo "make demo      fit the paper's models by year to the shipped study and report (writes $(DEMO_OUT)/)"
	@echo "make test      install and run the default test suite (slow checks excluded)"
	@echo "make test-all  the full test suite, slow statistical checks included"
	@echo "make docs      build the documentation site into site/ (strict: any warning fails),"
	@echo "               with the demo's report page (runs the demo first if $(DEMO_OUT)/fits is missing)"
	@echo "make browser   install headless Chromium (Debian's chromium, chromium-driver) if missing"
	@echo "make bench     bayesfed against its Python peers (bambi, PyMC, statsmodels), paper and"
	@echo "               national size (bench/peers.py, bench/event_time_scale.py; R not needed)"
	@echo "make bench-r   the same plus R's lme4 and brms (installs R, lme4 and brms with apt-get"
	@echo "               from Debian's packages if missing; brms compiles a Stan model)"

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

# One process (--jobs 1): on the 2-core development machine `--jobs 2` was slower, 136-141 s
# against 106-116 s, with the same numbers (docs/benchmarks.md).
demo: $(VENV)/.installed-base
	@$(VENV)/bin/bayesfed demo --out $(DEMO_OUT)

test: $(VENV)/.installed-test
	@$(VPY) -m pytest -q

# test-all installs Chromium first: the browser check of the rendered report
# (tests/test_docs_report.py) then always runs instead of skipping.
test-all: $(VENV)/.installed-test browser
	@$(VPY) -m pytest -q -m "slow or not slow"

# Headless Chromium for the browser check of the docs report (Debian's packages, root or sudo).
browser:
	@if [ -x /usr/bin/chromium ]; then :; else \
	  echo "bayesfed: installing chromium and chromium-driver with apt-get"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends \
	    chromium chromium-driver; \
	fi

# Benchmarks against peers: figures, machine and commands in docs/benchmarks.md. The national
# study and the peers' CSVs are made once under out/bench/ and reused.
bench: $(VENV)/.installed-bench
	@$(VPY) bench/peers.py
	@$(VPY) bench/event_time_scale.py --tools bayesfed,statsmodels
	@$(VPY) bench/csv_reading.py

# R from Debian's packages (root or sudo, as `browser`): r-base-dev for the compiler brms's
# Stan models need, posterior for brms's ESS, data.table to read the national-size CSV,
# performance for Nakagawa's R-squared (bench/r2_agreement.py); Debian's BH is the system's
# Boost (libboost-dev), which bench/r/brms_school_variation.R points rstan at.
R_BENCH_CHECK := for (p in c("lme4", "brms", "posterior", "jsonlite", "data.table", \
  "performance")) \
  if (!requireNamespace(p, quietly = TRUE)) quit(status = 1)
bench-r: $(VENV)/.installed-bench
	@if command -v Rscript >/dev/null 2>&1 && Rscript -e '$(R_BENCH_CHECK)' >/dev/null 2>&1; \
	then :; else \
	  echo "bayesfed: installing R, lme4 and brms with apt-get"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends \
	    r-base-core r-base-dev r-cran-lme4 r-cran-brms r-cran-posterior r-cran-jsonlite \
	    r-cran-data.table r-cran-performance r-cran-bh libboost-dev; \
	fi
	@$(VPY) bench/peers.py --r
	@$(VPY) bench/event_time_scale.py
	@$(VPY) bench/job_speed.py --national out/bench/event_time/national.parquet --brms
	@$(VPY) bench/national_event_job.py
	@$(VPY) bench/r2_agreement.py
	@$(VPY) bench/random_slopes_agreement.py --brms
	@$(VPY) bench/location_scale_agreement.py

# -W --keep-going: every warning is reported, then fails the build; -n: every reference must
# resolve. tests/test_docs.py runs the same build.
# The demo's report page (docs/reports/demo/, generated, gitignored) is rewritten from
# $(DEMO_OUT)/fits on every build; the demo runs first (about 2 minutes) when it is missing.
docs: $(VENV)/.installed-docs
	@[ -f $(DEMO_OUT)/fits/summary.json ] || $(MAKE) --no-print-directory demo
	@$(VENV)/bin/bayesfed report $(DEMO_OUT)/fits --format docs --out docs/reports/demo \
	  --title "Demo: the paper's models on the shipped synthetic study"
	@$(VPY) -m sphinx -W --keep-going -n -b html docs site
	@echo "documentation built: site/index.html"

clean:
	rm -rf $(VENV) out site build *.egg-info
