# Pipeline worker: runs `train_pipeline` flow runs as subprocesses (Prefect process work pool).
# Build context: the repository root (see compose.yaml). CPU-only torch keeps the image small;
# for a GPU worker, start from an nvidia/cuda runtime image and drop the CPU index URL.
# BASE_IMAGE: any Debian-based image with Python 3.11 and pip; scripts/containerize.py --compose
# passes its local Debian image where Docker Hub cannot be reached.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PBF_STATE_DIR=/var/lib/pbf \
    PREFECT_HOME=/var/lib/pbf/prefect \
    DO_NOT_TRACK=1

# OpenCV (headless) still needs libGL-free glib; curl for the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libglib2.0-0 curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/pbf
COPY constraints.txt ./
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" -c constraints.txt torch torchvision
COPY pyproject.toml README.md prefect.yaml ./
COPY pbf_core ./pbf_core
COPY tasks ./tasks
COPY flows ./flows
COPY configs ./configs
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" -c constraints.txt . psycopg2-binary boto3 \
    && useradd --create-home --uid 10001 pbf \
    && mkdir -p /var/lib/pbf && chown -R pbf /var/lib/pbf /opt/pbf

USER pbf
VOLUME ["/var/lib/pbf"]
COPY --chmod=0755 docker/worker-entrypoint.sh /usr/local/bin/worker-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/worker-entrypoint.sh"]
CMD ["prefect", "worker", "start", "--pool", "pbf-process", "--type", "process"]
