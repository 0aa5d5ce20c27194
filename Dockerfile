# syntax=docker/dockerfile:1
# Berth images, one Dockerfile, three targets:
#
#   docker build --target operator    -t berth-operator:0.1.0 .     # kopf operator, no TensorFlow
#   docker build --target trainer     -t berth-trainer:0.1.0 .      # TensorFlow/Keras BERT trainer
#   docker build --target trainer-gpu -t berth-trainer:0.1.0-gpu .  # + TensorFlow's CUDA libraries
#
# `make images` (hack/build-images.sh) builds them with podman from a Debian-built base image,
# pip installing from a wheelhouse the host downloaded (no network inside the build).
#
# Every package comes from a hash-locked file (hack/lock-requirements.sh makes them from the
# requirements.txt ranges) and pip runs with --require-hashes: a file whose sha256 is not in
# the lock fails the build. Berth's own wheels and sdist-only requirements are built by the
# locked setuptools (requirements-build.lock) with --no-build-isolation, so no build step
# fetches an unchecked package either (--use-pep517: a wheel, not a legacy setup.py install).
#
# Each final stage copies a ready virtual environment from a build stage, so pip caches, wheels
# and sources stay behind. All run as the numeric non-root user 65532 and work with a
# read-only root filesystem (HOME and caches live under /tmp, which the chart mounts).
# The runtimes are exactly trainer/requirements.lock and operator/requirements.lock, as CI installs.

# The default base by the digest of its multi-architecture index: the tag says what it is, the
# digest decides what is pulled. `make images` passes its own Debian-built base instead.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# --- wheels of the two Berth distributions --------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheels
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements-build.lock /tmp/requirements-build.lock
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes -r /tmp/requirements-build.lock
COPY trainer/pyproject.toml trainer/
COPY trainer/src trainer/src
COPY operator/pyproject.toml operator/
COPY operator/src operator/src
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels ./trainer ./operator

# --- operator virtual environment: operator/requirements.lock + both wheels, no TensorFlow ---
FROM ${PYTHON_IMAGE} AS operator-venv
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY operator/requirements.lock /tmp/requirements.lock
# --no-build-isolation: should a locked package ever come as source, nothing unlocked is fetched
# to build it.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-build-isolation --use-pep517 \
        -r /tmp/requirements.lock
COPY --from=wheels /wheels /wheels
# berth-trainer comes --no-deps: the operator needs only its config models (pydantic, pyyaml).
RUN /opt/venv/bin/pip install --no-deps /wheels/berth_trainer-*.whl /wheels/berth_operator-*.whl \
    && /opt/venv/bin/berth-operator --help >/dev/null

# --- trainer virtual environment: trainer/requirements.lock (TensorFlow stack) + trainer wheel --
FROM ${PYTHON_IMAGE} AS trainer-venv
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY requirements-build.lock /tmp/requirements-build.lock
COPY trainer/requirements.lock /tmp/requirements.lock
# The requirements come first, in their own layer: a change to Berth's sources alone reuses it.
# The locked setuptools (also pinned in the trainer lock) builds the sdist-only requirements.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes -r /tmp/requirements-build.lock \
    && /opt/venv/bin/pip install --require-hashes --no-build-isolation --use-pep517 \
        -r /tmp/requirements.lock
COPY --from=wheels /wheels /wheels
RUN /opt/venv/bin/pip install --no-deps /wheels/berth_trainer-*.whl \
    && /opt/venv/bin/berth-trainer --help >/dev/null

# --- trainer image --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS trainer
LABEL org.opencontainers.image.title="berth-trainer" \
      org.opencontainers.image.description="Berth BERT trainer (TensorFlow/Keras, tf.distribute)"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    KERAS_HOME=/tmp/keras \
    TF_CPP_MIN_LOG_LEVEL=1
COPY --from=trainer-venv /opt/venv /opt/venv
USER 65532:65532
WORKDIR /tmp
# tf-port (TF_CONFIG cluster) and the Prometheus metrics the operator scrapes.
EXPOSE 2222 9090
ENTRYPOINT ["berth-trainer"]

# --- GPU trainer image: the trainer image + TensorFlow's CUDA libraries (nvidia.com/gpu pods) -
# One layer on top of the trainer image's (a node holding both stores those once): the CUDA
# wheels of trainer/requirements-gpu.lock, which pins every trainer package as the trainer lock
# does (those are already installed) plus tensorflow[and-cuda]'s nvidia-* wheels, hashed. The
# node provides the driver.
FROM trainer AS trainer-gpu
LABEL org.opencontainers.image.description="Berth BERT trainer with CUDA (TensorFlow/Keras)"
USER 0
COPY trainer/requirements-gpu.lock /tmp/requirements-gpu.lock
RUN PIP_DISABLE_PIP_VERSION_CHECK=1 pip install --no-cache-dir --require-hashes \
        -r /tmp/requirements-gpu.lock \
    && berth-trainer --help >/dev/null
USER 65532:65532

# --- operator image (the default target) ----------------------------------------------------
FROM ${PYTHON_IMAGE} AS operator
LABEL org.opencontainers.image.title="berth-operator" \
      org.opencontainers.image.description="Berth kopf operator for BertTraining resources"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=operator-venv /opt/venv /opt/venv
USER 65532:65532
WORKDIR /tmp
# Prometheus metrics and kopf's liveness endpoint (/healthz).
EXPOSE 8000 8080
ENTRYPOINT ["berth-operator"]
