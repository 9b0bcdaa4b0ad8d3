# DiffuserLite Lab for a CUDA machine: `docker build -t dlite-lab .` then
# `docker run --gpus all -p 8000:8000 -v dlite-data:/data -e HF_TOKEN dlite-lab`
# The base image's CUDA torch satisfies the package's torch requirement, so pip keeps it.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV MUJOCO_GL=egl \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DLITE_DATA_DIR=/data \
    DLITE_DATASETS=/data/datasets

# EGL/GL libraries for MuJoCo's headless rendering backend; curl for the health check;
# tini as PID 1, so `docker stop` reaches `dlite up` and the worker checkpoints before exiting.
# Versions follow the base image's Ubuntu release, so they are not pinned here.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libegl1 libgl1 libgl1-mesa-dri libglib2.0-0 curl tini \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/dlite
COPY pyproject.toml README.md ./
COPY dlite ./dlite
COPY app ./app
COPY worker ./worker
RUN pip install --no-cache-dir '.[postgres]'  # psycopg: deploy/compose.yaml runs the server on PostgreSQL

RUN useradd --create-home --uid 1000 lab && mkdir -p /data && chown lab:lab /data
USER 1000
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8000/healthz"]

# `dlite up` stops on SIGTERM like on Ctrl-C: the worker saves a checkpoint, then both exit.
# Saving can outlast docker's 10 s default: stop with `docker stop -t 120`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["dlite", "up", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/data"]
