# Plexus — the two commands a new user needs: `make demo` and `make test` (as root, Debian 12).
SHELL := /bin/bash
PYTHON ?= $(shell [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || command -v python3)
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
RUN_DIR ?= /run/plexus
LOG_DIR ?= /var/log/plexus
PIDFILE ?= $(RUN_DIR)/plexus-ipamd.pid
export PLEXUS_TEST_CACHE ?= /var/cache/plexus-test

.PHONY: help deps venv proto crds build install start stop restart uninstall demo demo-clean test test-unit test-netns test-compat test-kube bench bench-kube bench-sim image lint cnitool clean

help:
	@echo "make demo        set everything up and show Plexus attaching two pods (make demo-clean undoes it)"
	@echo "make test        run the whole test suite: unit, netns, compatibility, API server and node tiers (builds the image; make test-unit alone takes ~2 min)"
	@echo "make lint        ruff and mypy"
	@echo "make bench       measure Plexus against Debian's reference plugins (BENCH_ARGS=--quick for a smoke run)"
	@echo "make bench-sim   the scale simulation: 10 and 50 simulated nodes, 1,000 pods each at a steady 100 pods/s and as fast as it goes, per-address leases against node blocks"
	@echo "make bench-kube  Kubernetes-mode figures: ADD/DEL with the API in the loop, API requests per ADD/DEL, racing daemons, the webhook's cost per pod"
	@echo "make build       freeze the plexus CNI plugin (dist/plexus/)"
	@echo "make image       the container image the manifests name, as an OCI archive (dist/plexus-image.tar)"
	@echo "make install     install into /opt/cni/bin, /etc/cni/net.d and /usr/local/bin (make uninstall undoes it, keeping the store; PURGE=1 too)"
	@echo "make start|stop  run plexus-ipamd in the background (pidfile $(PIDFILE), log $(LOG_DIR)/ipamd.log)"

deps:
	@bash scripts/install-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

proto: venv
	PYTHON=$(PY) scripts/gen-proto.sh

crds: venv
	$(PY) scripts/gen-crds.py

build/bootloader/run: $(VENV)/.installed scripts/build-bootloader.sh
	PYTHON=$(PY) bash scripts/build-bootloader.sh

dist/plexus/plexus: $(VENV)/.installed build/bootloader/run $(shell find cni -name '*.py') packaging/plexus.spec packaging/frozen_boot.py
	@command -v patchelf >/dev/null || { echo "patchelf is missing: scripts/install-deps.sh installs it" >&2; exit 1; }
	rm -rf build/plexus  # PyInstaller's own cache would keep an executable built on another bootloader
	$(VENV)/bin/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build packaging/plexus.spec
	@# the bootloader does not restart itself with LD_LIBRARY_PATH (scripts/build-bootloader.sh): libpython finds
	@# the libraries bundled next to it (libexpat, libz) by its RUNPATH, not on the node
	patchelf --set-rpath '$$ORIGIN' dist/plexus/_internal/libpython*.so* || { rm -f dist/plexus/plexus; exit 1; }

build: dist/plexus/plexus

dist/plexus-ipamd/plexus-ipamd: $(VENV)/.installed $(shell find cni ipamd -name '*.py') packaging/plexus-ipamd.spec packaging/entry_*.py
	$(VENV)/bin/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build packaging/plexus-ipamd.spec

image: deps build dist/plexus-ipamd/plexus-ipamd
	$(PY) scripts/build-image.py --out dist/plexus-image.tar

install: build
	VENV=$(VENV) packaging/install.sh

start: install
	@bash scripts/daemon.sh start

stop:
	@bash scripts/daemon.sh stop

restart: stop start

uninstall:
	@bash scripts/uninstall.sh

demo: deps start
	@bash scripts/demo.sh

demo-clean:
	@bash scripts/demo-clean.sh

cnitool:
	@bash scripts/install-cni-client.sh >/dev/null

test: deps venv build image cnitool
	$(PY) -m pytest -q tests

test-unit: venv
	$(PY) -m pytest -q tests/unit

test-netns: venv build
	$(PY) -m pytest -q tests/netns

test-compat: venv build cnitool
	$(PY) -m pytest -q tests/compat

test-kube: deps venv build image
	$(PY) -m pytest -q tests/kube tests/node

bench: deps venv build
	$(PY) -m bench $(BENCH_ARGS)

bench-kube: deps venv build
	$(PY) -m bench.kube $(BENCH_ARGS)

bench-sim: deps venv
	$(PY) -m bench.sim $(BENCH_ARGS)

lint: venv
	$(VENV)/bin/ruff check cni ipamd tests bench scripts
	$(VENV)/bin/mypy cni ipamd bench tests

clean:
	rm -rf build dist
