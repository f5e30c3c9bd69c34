# One image for every Python service of edgepipe (bridge, model_worker, api,
# sensor); compose picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY bridge ./bridge
COPY edge_simulator ./edge_simulator
COPY model_worker ./model_worker
COPY api ./api
RUN pip install .

# Services run as an unprivileged user; models are mounted read-write at /app/models.
RUN useradd --create-home --uid 10001 edgepipe && mkdir -p /app/models && chown edgepipe /app/models
USER edgepipe
