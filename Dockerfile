# syntax=docker/dockerfile:1
# ecoflow-collector: a slim, non-root image. `docker run IMAGE` runs the daemon (`ecoflow-collector run`,
# configured by ECOFLOW_COLLECTOR_* variables); any other command line runs that command instead
# (`docker run IMAGE simulate ...`, `docker run IMAGE check`). Health: GET /healthz on port 8080.

FROM python:3.11-slim AS build
WORKDIR /src
# the package and every dependency as wheels (no compiler needed: all have binary wheels)
COPY pyproject.toml README.md ./
COPY collector ./collector
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ECOFLOW_COLLECTOR_COLLECTOR__STATE_DIR=/var/lib/ecoflow-collector \
    ECOFLOW_COLLECTOR_COLLECTOR__HEALTHZ_PORT=8080 \
    ECOFLOW_COLLECTOR_LOGGING__FORMAT=json
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels ecoflow-collector \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin collector \
    && install -d -o collector -g collector -m 0750 /var/lib/ecoflow-collector
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/ecoflow-entrypoint
COPY --chmod=0644 docker/healthcheck.py /usr/local/lib/ecoflow-healthcheck.py
USER collector
WORKDIR /var/lib/ecoflow-collector
# the spool, the client id (EcoFlow allows ~10 client ids per account per day) and the instance lock
VOLUME ["/var/lib/ecoflow-collector"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=10s --start-period=90s --retries=3 \
    CMD ["python", "/usr/local/lib/ecoflow-healthcheck.py"]
ENTRYPOINT ["/usr/local/bin/ecoflow-entrypoint"]
CMD ["run"]
