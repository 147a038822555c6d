# The two commands of the README: `make drill` (the main job on the embedded lab) and `make test`.
.PHONY: setup drill test test-nightly lint lab-down clean

VENV := .venv
BIN := $(VENV)/bin

setup:
	@bash scripts/setup.sh

drill: setup
	@SCENARIO="$(SCENARIO)" bash scripts/drill.sh

test: setup
	$(BIN)/pytest

# Every drill scenario on the lab (about 10 minutes more; see docs/drills.md).
test-nightly: setup
	$(BIN)/pytest -m 'nightly or not nightly'

lint: setup
	$(BIN)/ruff check drtool tests bench images inventory
	$(BIN)/yamllint -s playbooks roles inventory
	cd $(CURDIR) && $(BIN)/ansible-lint --profile production playbooks roles

lab-down: setup
	$(BIN)/drtool lab down

clean: lab-down
	rm -rf $(VENV)
