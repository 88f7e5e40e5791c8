# procmond developer entry points. `make run` and `make test` are the two
# fresh-machine commands of the README: both install what they need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
APT    := DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: run test lint typecheck unit soak bench diagrams system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# redis-server: the embedded default and the test suite's private servers.
# openssl: certificates for the TLS test. e2fsprogs (mkfs.ext4): the read-only disk test.
# graphviz (dot): the SVG diagram; optional, so a failed install is not fatal.
# prometheus (and promtool): the metrics tests start their own server on a private
# port; the package's service (port 9090) is stopped and disabled where it was started.
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { $(APT) update -qq && $(APT) install -y -qq redis-server >/dev/null; }
	@command -v redis-server >/dev/null 2>&1 || { echo "redis-server is required: apt-get install redis-server" >&2; exit 1; }
	@command -v openssl >/dev/null 2>&1 || { $(APT) update -qq && $(APT) install -y -qq openssl >/dev/null; }
	@command -v mkfs.ext4 >/dev/null 2>&1 || { $(APT) update -qq && $(APT) install -y -qq e2fsprogs >/dev/null; }
	@command -v prometheus >/dev/null 2>&1 || { $(APT) update -qq && $(APT) install -y -qq --no-install-recommends prometheus >/dev/null && { systemctl disable --now prometheus >/dev/null 2>&1 || service prometheus stop >/dev/null 2>&1 || true; }; }
	@command -v promtool >/dev/null 2>&1 || { echo "prometheus is required: apt-get install prometheus" >&2; exit 1; }
	@command -v dot >/dev/null 2>&1 || { $(APT) install -y -qq graphviz >/dev/null 2>&1 || echo "note: graphviz not installed; SVG diagrams are skipped" >&2; }

run: $(STAMP) system-deps
	$(BIN)/procmond demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) system-deps
	HYPOTHESIS_PROFILE=ci $(BIN)/pytest -m "not soak"

test: lint typecheck unit

soak: $(STAMP) system-deps
	HYPOTHESIS_PROFILE=soak $(BIN)/pytest -m soak

bench: $(STAMP) system-deps
	$(BIN)/python -m bench

diagrams: $(STAMP)
	$(BIN)/procmond diagram

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
