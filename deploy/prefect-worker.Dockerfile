# Prefect worker image for docker and kubernetes work pools: the worker only polls the server and
# starts each flow run as a container (docker) or a Job (kubernetes) from the flow-run image
# (deploy/Dockerfile); it needs Prefect and the pool type's package, not ssdflow.
# Build:  docker build -f deploy/prefect-worker.Dockerfile -t REGISTRY/ssdflow-prefect-worker:TAG deploy
# Run:    prefect worker start --pool ssdflow-k8s --type kubernetes   (or --pool ssdflow-docker --type docker)
FROM prefecthq/prefect:3.9.1-python3.11

ENV PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 PIP_NO_CACHE_DIR=1
RUN pip install "prefect-kubernetes==0.8.0" "prefect-docker==0.7.4"

CMD ["prefect", "worker", "start", "--pool", "ssdflow-k8s", "--type", "kubernetes"]
