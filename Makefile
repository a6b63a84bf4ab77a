# make run   : serve the bundled inventory.yaml on loopback (HTTPS 127.0.0.1:8443, TFTP 127.0.0.1:6969)
# make test  : the whole test suite (real peers: curl, tftp-hpa, ...; .ci/run installs them on Debian)
# make bench : benchmarks against nginx / tftpd-hpa, printed as ratios
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
HOME_DIR ?= ./var
PYTEST_ARGS ?=

.PHONY: run test bench check clean venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade "pip>=23"
	$(BIN)/pip install -qq -c constraints.txt -e '.[test]'
	touch $@

run: venv
	$(BIN)/provisioner --home $(HOME_DIR) --inventory inventory.yaml check --offline
	$(BIN)/provisioner --home $(HOME_DIR) --inventory inventory.yaml serve --https 127.0.0.1:8443 --tftp 127.0.0.1:6969

check: venv
	$(BIN)/provisioner --home $(HOME_DIR) --inventory inventory.yaml check

# pytest exits 5 when it collected no test: make treats that as a failure, as it should. The run ends with
# "skips: N (permanent: M)"; with CI=true in the environment (.ci/run sets it) every skip whose reason does
# not start with "permanent:" is a failure (tests/conftest.py).
test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: venv
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
