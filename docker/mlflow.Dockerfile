# MLflow tracking server with the PostgreSQL driver and the S3 client for MinIO artifacts.
# BASE_IMAGE: any Debian-based image with Python 3.11 and pip; scripts/containerize.py --compose
# passes its local Debian image where Docker Hub cannot be reached.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG MLFLOW_VERSION=3.17.2
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN pip install "mlflow==${MLFLOW_VERSION}" psycopg2-binary boto3 \
    && useradd --create-home --uid 10001 mlflow
USER mlflow
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --retries=12 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health')"
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
