# brace-watchdog: developer and packaging targets.
#
#   make run      create .venv if needed, run the daemon in the foreground with etc/brace-watchdog.toml
#   make test     create .venv if needed, `make lint`, then the whole test suite (PYTEST_ARGS=... to
#                 narrow it; LINT=0 skips the lint step while iterating)
#   make lint     ruff + mypy --strict + promtool (alert rules)   make format-check   ruff format --check
#   make bench    run the benchmarks in bench/ (BENCH_ARGS=... passed through)
#   make demo     the rollback demo (demo/, owned by the rollback work)
#   make install  PREFIX=/usr/local DESTDIR= : venv in $(PREFIX)/lib/brace-watchdog, commands in
#                 $(PREFIX)/bin, systemd unit, config in /etc/brace-watchdog (never overwritten)
#   make clean    remove the venv, caches and var/
#
# Every target is idempotent: the venv is rebuilt only when pyproject.toml changes (stamp file).

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.brace-installed
CONFIG      ?= etc/brace-watchdog.toml
PYTEST_ARGS ?=
BENCH_ARGS  ?=
DEMO_ARGS   ?=

PREFIX      ?= /usr/local
DESTDIR     ?=
LIBDIR      := $(PREFIX)/lib/brace-watchdog
BINDIR      := $(PREFIX)/bin
DOCDIR      := $(PREFIX)/share/doc/brace-watchdog
CONFDIR     ?= /etc/brace-watchdog
# Distribution packages (PREFIX=/usr) ship units in /usr/lib; local installs go to /etc.
UNITDIR     ?= $(if $(filter /usr,$(PREFIX)),/usr/lib/systemd/system,/etc/systemd/system)

.PHONY: all venv run check-config test lint format-check bench demo install clean

all: lint test

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: venv
	mkdir -p var/backups
	$(VENV)/bin/brace-watchdog run --config $(CONFIG)

check-config: venv
	$(VENV)/bin/brace-watchdog check-config --config $(CONFIG)

LINT ?= 1

# CI runs `make test`: the lint step is part of it, so a ruff or mypy finding turns CI red.
test: venv
	@if [ "$(LINT)" != 0 ]; then $(MAKE) --no-print-directory lint; fi
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check brace_watchdog tests $(wildcard bench) etc/grafana/generate.py
	$(VENV)/bin/mypy
	promtool check rules etc/prometheus/brace-watchdog.rules.yml
	promtool test rules etc/prometheus/tests/*.yml

format-check: venv
	$(VENV)/bin/ruff format --check brace_watchdog tests

# Benchmarks: `python -m bench` when bench/__main__.py exists, else each bench/bench_*.py as a
# module (python -m bench.bench_x), stopping at the first failure. BENCH_ARGS go to each.
bench: venv
	@if [ -f bench/__main__.py ]; then \
		echo "$(PY) -m bench $(BENCH_ARGS)"; $(PY) -m bench $(BENCH_ARGS); \
	else \
		found=0; for script in bench/bench_*.py; do \
			[ -e "$$script" ] || continue; found=1; \
			module="bench.$$(basename "$$script" .py)"; \
			echo "== $(PY) -m $$module $(BENCH_ARGS)"; $(PY) -m "$$module" $(BENCH_ARGS) || exit 1; \
		done; \
		[ $$found = 1 ] || { echo "make bench: no benchmarks in bench/"; exit 1; }; \
	fi

# The rollback demo: demo/__main__.py (filled by the rollback work), run as `python -m demo`.
demo: venv
	@[ -f demo/__main__.py ] || { echo "make demo: demo/__main__.py does not exist yet"; exit 1; }
	$(PY) -m demo $(DEMO_ARGS)

# A self-contained venv under $(LIBDIR). With DESTDIR the venv is built in the staging tree and
# its absolute paths (script shebangs, activate) are rewritten to the final location.
install:
	$(PYTHON) -m venv --clear $(DESTDIR)$(LIBDIR)
	$(DESTDIR)$(LIBDIR)/bin/python -m pip install --quiet --no-warn-script-location .
	if [ -n "$(DESTDIR)" ]; then \
		grep -rlI -- '$(DESTDIR)$(LIBDIR)' $(DESTDIR)$(LIBDIR)/bin \
			| xargs -r sed -i 's|$(DESTDIR)$(LIBDIR)|$(LIBDIR)|g'; \
	fi
	install -d $(DESTDIR)$(BINDIR)
	ln -sf $(LIBDIR)/bin/brace-watchdog $(DESTDIR)$(BINDIR)/brace-watchdog
	ln -sf $(LIBDIR)/bin/brace-watchdogctl $(DESTDIR)$(BINDIR)/brace-watchdogctl
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|/usr/local/|$(PREFIX)/|g' \
		systemd/brace-watchdog.service > $(DESTDIR)$(UNITDIR)/brace-watchdog.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/brace-watchdog.service
	install -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -d -m 0750 $(DESTDIR)$(CONFDIR)
	[ -e $(DESTDIR)$(CONFDIR)/brace-watchdog.toml ] || \
		install -m 0640 etc/brace-watchdog.production.toml $(DESTDIR)$(CONFDIR)/brace-watchdog.toml
	@echo "installed; then: systemctl daemon-reload && systemctl enable --now brace-watchdog"

clean:
	rm -rf $(VENV) var build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
