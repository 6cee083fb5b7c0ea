# overlayd: every target installs what it needs first (idempotent), as root on Debian 12.
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup setup-vm demo test test-unit test-kernel lint bench install clean

setup:
	@bash tools/setup.sh

# also qemu, mmdebstrap and the cached Debian guest of the root-on-overlay VM tests
setup-vm:
	@bash tools/setup.sh --vm

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
