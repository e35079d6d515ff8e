# edgeproof: `make test` and `make demo` work on a fresh Debian / Raspberry Pi OS machine
# that has python3 and make. They create .venv, install edgeproof with its extras, and
# install the Debian packages the tests need (mosquitto, postgresql) when run as root.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SIM_STAMP := $(VENV)/.installed-sim

.PHONY: test lint typecheck pytest demo soak bench clean deps broker chain postgresql \
	homeassistant dashboard browser screenshot

test: deps lint typecheck pytest

$(PY):
	$(PYTHON) -m venv $(VENV) || { echo "error: python3 -m venv failed; install python3-venv (apt-get install python3-venv)"; exit 1; }

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP) $(SIM_STAMP)

# The demo needs only the sim extra (no linters, no test tools): its own stamp in the same
# venv, so `make demo` on a fresh checkout installs that much and `make test` the rest.
$(SIM_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[sim]'
	touch $(SIM_STAMP)

deps: $(STAMP) broker chain postgresql homeassistant dashboard browser

broker:
	@sh scripts/ensure-debian-packages.sh mosquitto:mosquitto
	@sh scripts/ensure-debian-packages.sh shellcheck:shellcheck 2>/dev/null || \
		echo "note: shellcheck is not installed; the installer lint test will be skipped"

# PostgreSQL for the PostgreSQL store's tests (tests/pg.py runs a private cluster; the
# server this package may start on 5432 is never used). Debian keeps initdb off PATH.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		sh scripts/ensure-debian-packages.sh initdb:postgresql

# The dashboard's chart library (uPlot from npm at a pinned version, its tarball checked
# against the pinned integrity hash) into gateway/static/vendor/ (gitignored).
dashboard:
	@sh scripts/ensure-dashboard-assets.sh

# Headless Chromium and its driver for the dashboard's browser tests and screenshot.
browser:
	@sh scripts/ensure-debian-packages.sh chromium:chromium chromedriver:chromium-driver

# Retake docs/img/dashboard.png: runs the demo, photographs its dashboard, stops it.
screenshot: deps
	$(PY) scripts/dashboard_screenshot.py --out docs/img/dashboard.png

# ganache (a real local Ethereum node for the chain-anchor tests) in .tools/node_modules.
chain:
	@sh scripts/ensure-ganache.sh

# Home Assistant (a pinned release in .tools/ha-venv) for the Home Assistant test
# (tests/homeassistant/): the agent's discovery configs checked by Home Assistant itself.
homeassistant:
	@sh scripts/ensure-home-assistant.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# What mypy checks, and how strictly, is in pyproject.toml ([tool.mypy]).
typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest --durations=15

# Benchmarks print figures and ratios against bare baselines; each ends with a JSON line.
bench: deps
	$(PY) bench/protocol_bench.py
	$(PY) bench/agent_bench.py
	$(PY) bench/gateway_bench.py
	$(PY) bench/e2e_bench.py
	$(PY) bench/store_bench.py
	$(PY) bench/scale_bench.py
	$(PY) bench/chain_bench.py
	$(PY) bench/dashboard_bench.py
	nice $(PY) bench/quality_bench.py

# The one-command demo (README, "Demo"); options go in DEMO_ARGS, for example
# make demo DEMO_ARGS="--devices 3 --duration 30". It needs the sim extra and mosquitto only.
DEMO_ARGS ?=
demo: $(SIM_STAMP) broker chain dashboard
	$(PY) -m firmware_sim.cli demo $(DEMO_ARGS)

# The fault-injection soak (tests/faults/test_soak.py): SOAK_FAULTS seeded faults against a
# provisioned broker, gateway and agents, then the delivery invariants from the outside.
SOAK_FAULTS ?= 200
soak: deps
	SOAK_FAULTS=$(SOAK_FAULTS) $(PY) -m pytest tests/faults/test_soak.py -m soak -s

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
