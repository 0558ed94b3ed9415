# unitrans inference server: one frozen BLIP backbone, many per-request adapters.
#
#   docker build -t unitrans .                        # CPU (default)
#   docker run -p 8000:8000 unitrans                  # serves models/blip-shapes + models/adapters
#   docker run -e UNITRANS_PORT=9000 -p 9000:9000 unitrans   # another port: CMD and HEALTHCHECK both read it
#   docker build -t unitrans:cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#                --build-arg DEVICE=cuda .            # then: docker run --gpus all -p 8000:8000 unitrans:cuda
#   docker run -p 8000:8000 -v ~/blip-vqa-base:/blip:ro unitrans \
#          python -m server --backbone /blip --no-shipped-adapters   # a real BLIP from a mounted directory
#
# Build context: the repo root, after models/blip-shapes has been built (see README).
# Settings come from UNITRANS_* variables (e.g. -e UNITRANS_API_KEY=...); galleries live in /data.

ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

# CPU wheels by default; a CUDA build points this at a CUDA wheel index (cu126, cu128, ...).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG DEVICE=cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    UNITRANS_DEVICE=${DEVICE} \
    UNITRANS_DATA=/data \
    UNITRANS_HOST=0.0.0.0 \
    UNITRANS_PORT=8000

WORKDIR /app

# torch first, from the CPU (or CUDA) wheel index only, so PyPI's default CUDA build is
# never picked; the largest layer, cached across code changes.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0"

COPY pyproject.toml README.md ./
COPY adapters/ adapters/
COPY server/ server/
COPY client/ client/
RUN pip install -e .

# The default backbone and adapters, served with no arguments (paths resolve from /app/server).
# chmod: files written through temp files (mkstemp, mkdtemp) are 0600/0700 in a working tree,
# and COPY keeps modes, which the non-root user below could not read.
COPY models/ models/
# the demo page's example images (the page at / lists what is there)
COPY examples/ examples/
RUN test -f models/blip-shapes/config.json || { \
      echo "models/blip-shapes is missing: build it before the image (python -m training.shapes.pretrain, see README)" >&2; \
      exit 1; } \
    && chmod -R a+rX /app

RUN useradd --create-home --uid 10001 --user-group unitrans \
    && mkdir -p /data \
    && chown unitrans:unitrans /data
USER unitrans
VOLUME ["/data"]
EXPOSE 8000

# One port setting: the server and its health probe both read UNITRANS_PORT (set it with -e, not --port).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('UNITRANS_PORT', '8000'), timeout=4)"]

CMD ["python", "-m", "server"]
