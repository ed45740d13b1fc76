# Eventfold: one image for every process (api, ingest, stream processors, `eventfold run`).
# docker-compose.yml builds it; the process is chosen by the command.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Where schemas/ are found and var/ (scratch files) lives.
    EVENTFOLD_HOME=/app \
    # Containers refuse to start without real secrets: EVENTFOLD_JWT_SECRET (>= 32
    # bytes, no published value) and EVENTFOLD_SECRET_KEYS (shared by every container).
    EVENTFOLD_MODE=production \
    EVENTFOLD_HTTP_HOST=0.0.0.0 \
    EVENTFOLD_HTTP_PORT=8080

WORKDIR /app

RUN groupadd --system eventfold && useradd --system --gid eventfold --home-dir /app eventfold

# Dependencies first, so a source change does not reinstall them: install the
# project's dependency list from pyproject.toml with an empty package (and the OTLP
# exporter: OTEL_TRACES_EXPORTER=otlp sends spans to a collector).
COPY pyproject.toml README.md ./
RUN mkdir -p src/eventfold && touch src/eventfold/__init__.py \
    && pip install '.[otlp]' \
    && pip uninstall -y eventfold \
    && rm -rf src build

COPY src ./src
COPY schemas ./schemas
RUN pip install --no-deps . \
    && rm -rf build \
    && mkdir -p /app/var \
    && chown -R eventfold:eventfold /app/var

USER eventfold
EXPOSE 8080

# Every process answers /health/ready on 8080 (docker-compose.yml checks each with it).
ENTRYPOINT ["eventfold"]
CMD ["run"]
