PY ?= python3

.PHONY: install up test test-slow bench

install:
	bash scripts/install-torch.sh
	$(PY) -m pip install -q -e .

up: install
	dlite up

test:
	bash scripts/test.sh

test-slow:
	bash scripts/test.sh -m slow

bench: install
	$(PY) bench/bench_dlite.py
