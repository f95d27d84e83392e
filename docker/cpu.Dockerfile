# CPU image: the CPU builds of torch and fbgemm (no CUDA package), torchrec without its
# CUDA-only dependency. Same entrypoint as the GPU image.
#
#   docker build -f docker/cpu.Dockerfile -t tml:cpu .
#   docker run -e NPROC_PER_NODE=2 -v $PWD/runs:/runs tml:cpu \
#       --config_path /app/projects/home/recap/config/local_cpu.yaml
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 TML_RUN_DIR=/runs
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tml ./tml
COPY projects ./projects
RUN pip install --upgrade pip \
    && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install ".[cpu]" \
    && pip install --no-deps torchrec==1.8.0
COPY docker/entrypoint.sh /usr/local/bin/tml-entrypoint
RUN chmod +x /usr/local/bin/tml-entrypoint

ENTRYPOINT ["tml-entrypoint"]
