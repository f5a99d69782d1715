# One command to try voicebot, one to test it. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint check clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,local]"
	touch $(STAMP)

CALLER := voicebot/testing/data
DEMO_TURNS := $(foreach t,bill account pin balance,--audio $(CALLER)/bank_$(t).wav)

## demo: set up, then place a simulated phone call to the bank (offline, no credentials)
demo: $(STAMP)
	$(BIN)/voicebot validate pipelines/*.yaml examples/*/pipeline.yaml
	$(BIN)/voicebot --log-level WARNING call --pipeline pipelines/acs_phone.yaml $(DEMO_TURNS) --out demo-bot.wav

## test: set up, then run every test (unit, integration, examples)
test: $(STAMP)
	$(BIN)/pytest

## browser: install Debian's Chromium for the browser tests (skipped without it, outside CI)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@chromium --version 2>/dev/null

## lint: ruff and mypy, as CI runs them
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy voicebot

check: test lint

clean:
	rm -rf $(VENV) demo-bot.wav
