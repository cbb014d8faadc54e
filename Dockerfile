# The tuner-service image: GPU agent and dashboard (docker-compose.yml runs both from it).
# TensorFlow's `and-cuda` wheels bring CUDA/cuDNN; the host needs only the NVIDIA driver and
# the NVIDIA Container Toolkit.
FROM python:3.11-slim

# NVIDIA_DRIVER_CAPABILITIES: the agent finds GPUs with nvidia-smi, which the NVIDIA toolkit
# mounts into the container only with the `utility` capability.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=3 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /work

# Dependencies first, so editing dashboards/ or studies/ does not reinstall TensorFlow.
# (README.md* so the build works whether or not the readme pyproject names is present.)
COPY pyproject.toml README.md* ./
COPY tuner_service ./tuner_service
# gunicorn serves the dashboard; it is only in the dev extra, so install it explicitly.
# EXTRAS: add `ray` for a Ray cluster's image (deploy/kuberay-raycluster.yaml):
#   docker build --build-arg EXTRAS=gpu,postgres,ray -t tuner-service .
ARG EXTRAS=gpu,postgres
RUN pip install ".[${EXTRAS}]" 'gunicorn>=22' \
    && rm -rf build ./*.egg-info

COPY dashboards ./dashboards

# Never run as root: the agent executes study code it loads from /work/studies.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin tuner \
    && mkdir -p /work/studies \
    && chown -R tuner:tuner /work
USER tuner

# docker-compose.yml sets the command per service; this default only shows the help.
CMD ["tuner-service", "--help"]
