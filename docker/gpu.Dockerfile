# GPU image for clusters: CUDA runtime, Python 3.11, the project with the CUDA builds of torch,
# fbgemm-gpu and torchrec (pins come from pyproject.toml's `gpu` extra).
#
#   docker build -f docker/gpu.Dockerfile -t tml:gpu .
#   docker run --gpus all --ipc=host -e NPROC_PER_NODE=8 -v /data:/data tml:gpu \
#       --config_path /data/configs/prod.yaml training.save_dir=/data/runs/prod
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common ca-certificates \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md ./
COPY tml ./tml
COPY projects ./projects
RUN pip install --upgrade pip && pip install ".[gpu]"
COPY docker/entrypoint.sh /usr/local/bin/tml-entrypoint
RUN chmod +x /usr/local/bin/tml-entrypoint

ENTRYPOINT ["tml-entrypoint"]
