# syntax=docker/dockerfile:1
# The exporter image: the runtime (MLflow's client package, mlflow-skinny), the `aws` extra (bills on
# S3, Cost Explorer) and `bills` (DuckDB: large FOCUS exports in columns, Parquet too). EXTRAS picks the
# extras, and
# `aws,local` adds the full MLflow (its server, SQL store and model serving): the image the compose
# stack builds alongside (tagged -local) to run MLflow, the demo seeder and the model server, and the
# Kubernetes demo overlay runs `demo` from. Both are built from this file at once, so the client and
# the server are the same MLflow release.
FROM python:3.11-slim-bookworm AS build
ARG EXTRAS=aws,bills
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir ".[${EXTRAS}]"

FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# A fixed, unprivileged user; /mlflow is where the stack's MLflow keeps its database and artifacts.
RUN groupadd --system --gid 10150 exporter \
 && useradd --system --uid 10150 --gid exporter --create-home --home-dir /home/exporter exporter \
 && mkdir -p /mlflow /etc/mlops-kpi-exporter /var/lib/mlops-kpi-exporter \
 && chown exporter:exporter /mlflow /var/lib/mlops-kpi-exporter
COPY --from=build /opt/venv /opt/venv
USER 10150:10150
WORKDIR /home/exporter
# state_dir (what survives a restart: Cost Explorer's calls of the day, the bill files read)
ENV XDG_STATE_HOME=/var/lib
VOLUME ["/var/lib/mlops-kpi-exporter"]
EXPOSE 10150
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:10150/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["mlops-kpi-exporter"]
CMD ["serve", "--config", "/etc/mlops-kpi-exporter/config.yml"]
