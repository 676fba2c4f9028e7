# segvec3d: `make demo` sets everything up and runs the product on bundled data;
# `make test` runs every test (what CI runs). See README.md.
SHELL := /bin/bash
ENV := . scripts/env.sh &&
OUT ?= out

.PHONY: setup demo test test-all clean

setup:
	bash scripts/setup.sh

demo: setup
	$(ENV) python -m segvec3d_ros.ros.demo --out-dir $(OUT)/demo

test: setup
	$(ENV) python -m pytest -q -m "not slow"

test-all: setup
	$(ENV) python -m pytest -q

clean:
	rm -rf .ws $(OUT)
