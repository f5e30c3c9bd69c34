# One image for every Python service of edgepipe (bridge, model_worker, api,
# sensor); compose picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

# openssl: the `credentials` service makes the local CA and the broker's certificate.
RUN apt-get update && apt-get install -y --no-install-recommends openssl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY bridge ./bridge
COPY edge_simulator ./edge_simulator
COPY model_worker ./model_worker
COPY api ./api
RUN pip install .

# Services run as an unprivileged user; models are mounted read-write at /app/models.
# /secrets is owned by that user so the `credentials` named volume, created from
# this folder, is writable by the one-shot service that fills it.
RUN useradd --create-home --uid 10001 edgepipe && mkdir -p /app/models /secrets \
    && chown edgepipe /app/models /secrets && chmod 0700 /secrets
USER edgepipe
