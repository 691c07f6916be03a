# archive-local entry points. `make run` and `make test` work on a fresh Debian/Ubuntu machine (root).
VENV      ?= .venv
PYTHON    ?= python3
BIN       := $(VENV)/bin
# Debian packages the tests drive for real: apt-ftparchive, dpkg-deb, gpg, curl, qemu-img,
# promtool + prometheus, headless chromium, ip (network namespaces), strace (the fuzzer
# watches which files the service opens), util-linux (unshare, mount of a small tmpfs),
# systemd (systemd-analyze verify; systemd as PID 1 of private namespaces runs the unit),
# memcached (the tests' OpenStack Swift keeps its auth tokens there), haproxy (in front of
# several units in the fleet tests)
TEST_DEBS := apt apt-utils dpkg-dev gnupg gpgv curl xz-utils openssl bsdutils qemu-utils \
             prometheus chromium iproute2 cloud-init dnsmasq-base strace util-linux systemd \
             memcached haproxy lxd-client python-apt-common
# the distributions' mirror lists (data only): the default configuration reads them
RUN_DEBS  := python-apt-common
# real servers the tests start, each in its own venv: Glance (gunicorn) and moto (EC2/S3)
COMPONENTS ?= .components
GLANCE_VERSION := 33.0.0
MOTO_VERSION := 5.2.5
BENCH_DEBS := wrk nginx-light apt-cacher-ng squid curl apt-utils gnupg time bc
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# the Juju charm, packed without charmcraft (charm/pack.py): reproducible, wheels for the
# unit's Python (Ubuntu 24.04: 3.12) bundled so that a unit installs offline
CHARM_FILE   ?= build/archive-local_amd64.charm
CHARM_PYTHON ?= 3.12

.PHONY: charm install components run test check soak lint bench bench-apt bench-sync bench-seed bench-observability bench-fleet bench-status venv debs-test debs-bench clean

venv: $(BIN)/.installed
$(BIN)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3 python3-venv; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV) || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

# install the Debian packages in $(1) that are missing; no service they bring may start
# (prometheus's would listen on every interface): a policy-rc.d denies it during the install
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  own_policy=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null; \
	    $(SUDO) chmod +x /usr/sbin/policy-rc.d; own_policy=1; fi; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q \
	    --no-install-recommends $$missing; rc=$$?; \
	  [ -z "$$own_policy" ] || $(SUDO) rm -f /usr/sbin/policy-rc.d; exit $$rc; fi
endef

components: $(COMPONENTS)/glance/.installed $(COMPONENTS)/moto/.installed \
            $(COMPONENTS)/swift/.installed \
            $(COMPONENTS)/auto-apt-proxy/usr/bin/auto-apt-proxy \
            $(COMPONENTS)/apt-cacher-ng/.installed \
            $(COMPONENTS)/cloud-init-trixie/.installed
$(COMPONENTS)/glance/.installed: tests/components/glance-constraints.txt
	$(PYTHON) -m venv $(COMPONENTS)/glance
	$(COMPONENTS)/glance/bin/pip install -q --disable-pip-version-check \
	    -c tests/components/glance-constraints.txt glance==$(GLANCE_VERSION) gunicorn
	@touch $@
# OpenStack Swift with its S3 API: the object store the shared-store tests run against
SWIFT_VERSION := 2.38.3
$(COMPONENTS)/swift/.installed: tests/components/swift-constraints.txt
	$(PYTHON) -m venv $(COMPONENTS)/swift
	$(COMPONENTS)/swift/bin/pip install -q --disable-pip-version-check \
	    -c tests/components/swift-constraints.txt swift==$(SWIFT_VERSION)
	@touch $@
$(COMPONENTS)/moto/.installed:
	$(PYTHON) -m venv $(COMPONENTS)/moto
	$(COMPONENTS)/moto/bin/pip install -q --disable-pip-version-check \
	    "moto[s3,ec2]==$(MOTO_VERSION)" flask flask-cors
	@touch $@

# a modern cloud-init (Debian 13's 25.1, architecture all) beside the system's 22.4, unpacked,
# not installed: the discovery tests import it in place of 22.4 (the machine's apt sources,
# lists and cache are not touched: tests/components/fetch-debian-package.sh)
$(COMPONENTS)/cloud-init-trixie/.installed:
	rm -rf $(COMPONENTS)/debs-trixie $(COMPONENTS)/cloud-init-trixie
	sh tests/components/fetch-debian-package.sh trixie cloud-init $(COMPONENTS)/debs-trixie
	dpkg-deb -x $(COMPONENTS)/debs-trixie/cloud-init_*.deb $(COMPONENTS)/cloud-init-trixie
	@touch $@

# apt-cacher-ng's mirror lists as its package ships them, unpacked, not installed (it would
# run a proxy on port 3142): the mirror-list tests read them
$(COMPONENTS)/apt-cacher-ng/.installed:
	mkdir -p $(COMPONENTS)/debs
	cd $(COMPONENTS)/debs && { apt-get download apt-cacher-ng 2>/dev/null || \
	    { $(SUDO) apt-get update -q && apt-get download apt-cacher-ng; }; }
	dpkg-deb -x $(COMPONENTS)/debs/apt-cacher-ng_*.deb $(COMPONENTS)/apt-cacher-ng
	@touch $@

# Debian's auto-apt-proxy, unpacked, not installed: installed it would hook the machine's apt
$(COMPONENTS)/auto-apt-proxy/usr/bin/auto-apt-proxy:
	mkdir -p $(COMPONENTS)/debs
	cd $(COMPONENTS)/debs && { apt-get download auto-apt-proxy 2>/dev/null || \
	    { $(SUDO) apt-get update -q && apt-get download auto-apt-proxy; }; }
	dpkg-deb -x $(COMPONENTS)/debs/auto-apt-proxy_*.deb $(COMPONENTS)/auto-apt-proxy
	@touch $@

debs-test:
	$(call apt_install,$(TEST_DEBS))
	@# cloud-init is here for its code; it must never run at this machine's boot
	@[ -e /etc/cloud/cloud-init.disabled ] || $(SUDO) touch /etc/cloud/cloud-init.disabled

debs-bench:
	$(call apt_install,$(BENCH_DEBS))

run: venv
	$(call apt_install,$(RUN_DEBS))
	$(BIN)/archive-local serve $(ARGS)

# make install (root): the service on this machine. A venv under PREFIX with the package,
# the systemd unit, the user archive-local, a starting configuration (an existing one is
# kept), then daemon-reload and enable --now. DESTDIR stages it instead, ACTIVATE=no
# installs without creating the user or telling systemd; PACKAGE is what pip installs (this
# tree, or a built wheel), PIP_INSTALL_ARGS reaches pip.
PREFIX     ?= /opt/archive-local
SYSCONFDIR ?= /etc/archive-local
UNITDIR    ?= /etc/systemd/system
ACTIVATE   ?= yes
PACKAGE    ?= .
# the system's Python: the service user must be able to run it (not one under /root)
INSTALL_PYTHON ?= /usr/bin/python3
install:
	@[ -x $(INSTALL_PYTHON) ] || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3 python3-venv; }
	$(INSTALL_PYTHON) -m venv $(DESTDIR)$(PREFIX) || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3-venv && $(INSTALL_PYTHON) -m venv $(DESTDIR)$(PREFIX); }
	$(DESTDIR)$(PREFIX)/bin/pip install -q --disable-pip-version-check $(PIP_INSTALL_ARGS) $(PACKAGE)
	sed -e 's#/opt/archive-local#$(PREFIX)#g' -e 's#/etc/archive-local/config.yaml#$(SYSCONFDIR)/config.yaml#g' \
	    appliance/data/archive-local.service > $(DESTDIR)$(PREFIX)/archive-local.service
	install -D -m 0644 $(DESTDIR)$(PREFIX)/archive-local.service $(DESTDIR)$(UNITDIR)/archive-local.service
	[ -e $(DESTDIR)$(SYSCONFDIR)/config.yaml ] || install -D -m 0644 appliance/config/default.yaml $(DESTDIR)$(SYSCONFDIR)/config.yaml
	@if [ -n "$(DESTDIR)" ] || [ "$(ACTIVATE)" != yes ]; then echo "installed in $(DESTDIR)$(PREFIX) (no user created, systemd not told)"; exit 0; fi; \
	dpkg -s $(RUN_DEBS) >/dev/null 2>&1 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends $(RUN_DEBS); }; \
	id -u archive-local >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
	    --home-dir /var/lib/archive-local --shell /usr/sbin/nologin archive-local; \
	if [ -d /run/systemd/system ]; then systemctl daemon-reload && systemctl enable --now archive-local \
	    && systemctl --no-pager status archive-local | head -3; \
	else echo "installed; systemd is not running here: start it with $(PREFIX)/bin/archive-local --config $(SYSCONFDIR)/config.yaml serve"; fi

# the suite in two processes (pytest-xdist): most of its time is spent waiting on the real
# servers it starts. Their temp dirs sit under a short base: gpg-agent's socket path must
# fit in 108 bytes. PYTEST_ARGS="-n 0" runs it in one process.
TEST_JOBS ?= 2
TEST_TMP  ?= /tmp/alt
test: venv debs-test components
	$(BIN)/ruff check appliance tests cloud-init charm
	$(BIN)/lint-imports
	$(BIN)/pytest -q -n $(TEST_JOBS) --dist worksteal --basetemp=$(TEST_TMP) $(PYTEST_ARGS)

# the developer's loop: lint and the unit and in-process layers (markers set by folder in
# tests/conftest.py), with only the venv: no Debian packages, no components, under a minute
check: venv
	$(BIN)/ruff check appliance tests cloud-init charm
	$(BIN)/ruff format --check appliance tests cloud-init charm
	$(BIN)/lint-imports
	$(BIN)/pytest -q -n $(TEST_JOBS) --basetemp=$(TEST_TMP)-check -m "unit or inprocess" \
	    tests/unit tests/inprocess charm/tests/unit $(PYTEST_ARGS)

# the fault and abuse suite, ten times longer (more trials, cases, connections);
# figures for docs/reliability.md are appended to $(FAULTS_REPORT)
FAULTS_REPORT ?= $(abspath bench/results/faults-soak.jsonl)
soak: venv debs-test components
	mkdir -p $(dir $(FAULTS_REPORT))
	FAULTS_SCALE=$${FAULTS_SCALE:-10} FAULTS_REPORT=$(FAULTS_REPORT) $(BIN)/pytest -q tests/e2e/faults $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check appliance tests cloud-init charm
	$(BIN)/ruff format --check appliance tests cloud-init charm
	$(BIN)/lint-imports

# ARCHIVE_LOCAL_BIN: benchmark another build (e.g. a clean checkout's venv) instead of this one
ARCHIVE_LOCAL_BIN ?= $(abspath $(BIN)/archive-local)
FLEET_ROUNDS ?= 3
bench: bench-apt bench-sync bench-seed bench-observability bench-fleet bench-status

bench-apt: venv debs-bench
	ARCHIVE_LOCAL_BIN=$(ARCHIVE_LOCAL_BIN) bench/run.sh $(BENCH_ARGS)

bench-sync: venv debs-bench
	ARCHIVE_LOCAL_BIN=$(ARCHIVE_LOCAL_BIN) bench/sync_bench.sh $(SYNC_ITEM_MB)

bench-seed: venv debs-test debs-bench components
	ARCHIVE_LOCAL_BIN=$(ARCHIVE_LOCAL_BIN) bench/seed_bench.sh $(SEED_IMAGE_MB)

bench-observability: venv debs-bench
	ARCHIVE_LOCAL_BIN=$(ARCHIVE_LOCAL_BIN) bench/observability_bench.sh

# several units on one object store (a real Swift): hits from the store vs local disk,
# upstream fetches for the fleet, time to first byte of the waiting units
bench-fleet: venv debs-test components
	mkdir -p bench/results
	$(BIN)/python bench/fleet_bench.py --rounds $(FLEET_ROUNDS) $(FLEET_ARGS) \
	    --out bench/results/fleet-$$(date +%Y%m%d-%H%M%S).json

# the status page of a big cache (10,000 files, 200 images): time and size of /, /api/status,
# /metrics under the defaults
bench-status: venv
	$(BIN)/python bench/status_bench.py $(STATUS_ARGS)

charm: venv
	$(BIN)/python charm/pack.py --python $(CHARM_PYTHON) $(CHARM_FILE)

clean:
	rm -rf $(VENV) .pytest_cache build
