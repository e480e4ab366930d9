# Torch-free API image: FastAPI + ONNX Runtime on CPU.
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system breastdx && useradd --system --gid breastdx --home-dir /app breastdx
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY breastdx ./breastdx
COPY imaging ./imaging
COPY models_registry ./models_registry
COPY service ./service
RUN pip install -c constraints.txt ".[serve]"
USER breastdx
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["breastdx", "serve", "--host", "0.0.0.0", "--port", "8000"]
