# Berth — the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test prerequisites venv lock control-plane images images-gpu cluster-up cluster-down \
        crds verify lint pytest clean

## demo: train the quickstart manifest locally (2 worker processes, tiny BERT)
demo: $(STAMP)
	bash hack/demo.sh

## test: lint, verify generated files, build the images, start the control plane, run every
## test, stop it
test: prerequisites lint verify
	bash hack/test.sh

## prerequisites: .venv, the control plane and the images, two at a time: on a cold machine the
## control plane's Go builds (CPU) run beside the pip downloads and image builds (network, disk)
prerequisites:
	$(MAKE) --no-print-directory -j2 $(STAMP) control-plane images

venv: $(STAMP)
# The runtime comes from the hash-locked files the images install, so the tests run what ships,
# when this Python is the one they are locked for (CPython 3.11 on Linux); any other Python gets
# the ranges they are locked from. The dev tools come from their ranges.
$(STAMP): trainer/requirements.txt operator/requirements.txt requirements-dev.txt \
          trainer/requirements.lock operator/requirements.lock \
          trainer/pyproject.toml operator/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if $(PY) -c 'import sys; sys.exit(sys.implementation.name != "cpython" or \
	        sys.platform != "linux" or sys.version_info[:2] != (3, 11))'; then \
	    $(PY) -m pip install -q --require-hashes \
	        -r trainer/requirements.lock -r operator/requirements.lock; \
	else \
	    $(PY) -m pip install -q -r trainer/requirements.txt -r operator/requirements.txt; \
	fi
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e trainer -e operator
	touch $@

## lock: re-lock the images' requirements (hash-locked, from the requirements.txt ranges)
lock:
	bash hack/lock-requirements.sh

## control-plane: build kube-apiserver, controller-manager, scheduler, kubectl, etcd, kwok, helm,
## Kueue, and the real node's kubelet, kube-proxy, CoreDNS and pause; apt-get what the node runs
control-plane:
	bash hack/install-node-deps.sh
	bash hack/build-control-plane.sh

## images: build localhost/berth-operator and localhost/berth-trainer (:appVersion) with podman,
## cached as archives in ~/.cache/berth/images (a warm run takes seconds)
images: $(STAMP)
	bash hack/build-images.sh

## images-gpu: build localhost/berth-trainer:<appVersion>-gpu (CUDA libraries, several GB)
images-gpu: $(STAMP)
	bash hack/build-images.sh gpu

cluster-up: control-plane
	$(PYTHON) hack/cluster.py up

cluster-down:
	$(PYTHON) hack/cluster.py down

## crds: regenerate the CRD (and the chart's copy) from the typed API models
crds: $(STAMP)
	$(PY) -m berth_operator.crdgen
	bash hack/sync-chart-crds.sh

## verify: fail when a generated file is stale
verify: $(STAMP)
	$(PY) -m berth_operator.crdgen --check
	bash hack/sync-chart-crds.sh --check

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile
	bash hack/helm-lint.sh

clean: cluster-down
	rm -rf $(VENV) .cluster
