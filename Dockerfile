# Visitgate gateway image: slim, non-root, with a health check. Needs DATABASE_URL (no embedded database).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
COPY launch ./launch
COPY presence ./presence
COPY sandbox ./sandbox
COPY sql ./sql
RUN pip install . && useradd --system --uid 10001 --home /app visitgate
USER visitgate
ENV VISITGATE_HOST=0.0.0.0 VISITGATE_PORT=8080 VISITGATE_DATA_DIR=/tmp/visitgate
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2).status != 200)"
CMD ["visitgate", "serve"]
