# Two entry points for a newcomer on a fresh Debian machine, as root:
#   make demo   installs everything and runs `wiremesh lab demo`
#   make test   installs everything and runs the linters, the type checker and the test suite
VENV ?= .venv
PYTHON ?= python3
DEB_PACKAGES = wireguard-go wireguard-tools nftables iproute2 iputils-ping procps python3-venv iperf3 chromium iptables
STAMP = $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml wiremesh/lab/idp/package-lock.json
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(DEB_PACKAGES)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	# The lab's OpenID provider (Node.js and npm come with the machine, not from apt here).
	npm ci --prefix wiremesh/lab/idp --no-audit --no-fund
	touch $(STAMP)

demo: install
	$(VENV)/bin/wiremesh lab demo

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q --durations=20

clean:
	-$(VENV)/bin/wiremesh lab clean
