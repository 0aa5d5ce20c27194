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
# Each final stage copies a ready virtual environment from a build stage, so pip caches, wheels
# and sources stay behind. All run as the numeric non-root user 65532 and work with a
# read-only root filesystem (HOME and caches live under /tmp, which the chart mounts).
# The runtimes are exactly trainer/requirements.txt and operator/requirements.txt, as CI installs.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- wheels of the two Berth distributions --------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheels
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY trainer/pyproject.toml trainer/
COPY trainer/src trainer/src
COPY operator/pyproject.toml operator/
COPY operator/src operator/src
RUN python -m pip wheel --no-deps --wheel-dir /wheels ./trainer ./operator

# --- operator virtual environment: operator/requirements.txt + both wheels, no TensorFlow ---
FROM ${PYTHON_IMAGE} AS operator-venv
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY operator/requirements.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY --from=wheels /wheels /wheels
# berth-trainer comes --no-deps: the operator needs only its config models (pydantic, pyyaml).
RUN /opt/venv/bin/pip install --no-deps /wheels/berth_trainer-*.whl /wheels/berth_operator-*.whl \
    && /opt/venv/bin/berth-operator --help >/dev/null

# --- trainer virtual environment: trainer/requirements.txt (TensorFlow stack) + trainer wheel --
FROM ${PYTHON_IMAGE} AS trainer-venv
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY trainer/requirements.txt /tmp/requirements.txt
# The requirements come first, in their own layer: a change to Berth's sources alone reuses it.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt
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
# One layer on top of the trainer image's (a node holding both stores those once):
# tensorflow[and-cuda] at exactly the TensorFlow version the trainer image has. The node
# provides the driver.
FROM trainer AS trainer-gpu
LABEL org.opencontainers.image.description="Berth BERT trainer with CUDA (TensorFlow/Keras)"
USER 0
RUN tf=$(python -c 'from importlib.metadata import version; print(version("tensorflow"))') \
    && PIP_DISABLE_PIP_VERSION_CHECK=1 pip install --no-cache-dir "tensorflow[and-cuda]==${tf}" \
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
