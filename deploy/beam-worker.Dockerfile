# Beam SDK worker image for Dataflow, Flink and Spark (--sdk_container_image=REGISTRY/ssdflow-beam:TAG),
# built as Beam documents custom containers: from Beam's own SDK image, whose /opt/apache/beam/boot
# entrypoint starts the SDK harness, with ssdflow (and TensorFlow, for scoring) installed on top.
# Build from the repo root:  docker build -f deploy/beam-worker.Dockerfile -t REGISTRY/ssdflow-beam:TAG .
# The tag's Beam and Python versions must equal the launcher's (pyproject.toml, deploy/Dockerfile).
FROM apache/beam_python3.11_sdk:2.77.0

ARG EXTRAS=aws
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /opt/ssdflow
COPY pyproject.toml README.md ./
COPY ssdflow ssdflow
COPY beam_jobs beam_jobs
COPY model model
COPY flows flows
COPY deploy deploy
# Beam is already in the base image at the pinned version; pip keeps it (the pin matches).
RUN pip install ".[${EXTRAS}]"

ENTRYPOINT ["/opt/apache/beam/boot"]
