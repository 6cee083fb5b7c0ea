# overlayd: every target installs what it needs first (idempotent), as root on Debian 12.
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup setup-vm setup-deb deb-fetch deb demo test test-unit test-kernel lint bench install clean

setup:
	@bash tools/setup.sh

# also qemu, mmdebstrap and the cached Debian guest of the root-on-overlay VM tests
setup-vm:
	@bash tools/setup.sh --vm --deb

# the Debian package: fetching what it bundles (network) is its own step, the build is offline
setup-deb:
	@bash tools/setup.sh --deb

deb-fetch: setup-deb
	@bash tools/deb.sh fetch

# the .deb lands in $(OUT) (default build/deb), never in the parent directory
deb: deb-fetch
	@bash tools/deb.sh build "$(or $(OUT),build/deb)"

demo: setup
	@$(PY) -m overlayd.demo

test: setup-vm lint
	$(PY) -m pytest -q -p no:cacheprovider tests

test-unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

lint: setup
	.venv/bin/ruff check overlayd tests tools
	.venv/bin/mypy
	.venv/bin/lint-imports --no-cache

# DESTDIR= and PREFIX= (default /usr) as usual; see tools/install.sh for the layout.
install: setup
	@DESTDIR="$(DESTDIR)" PREFIX="$(or $(PREFIX),/usr)" bash tools/install.sh

bench: setup
	@$(PY) -m tools.bench $(ARGS)

clean:
	rm -rf .venv .mypy_cache .ruff_cache build *.egg-info
