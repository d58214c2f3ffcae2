# Image for the docker-compose deployment: the package with the PostgreSQL driver and Flower.
FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 1000 dxf
WORKDIR /app
COPY . /app
RUN pip install ".[postgres]" "flower>=2.0"
USER dxf
CMD ["celery", "-A", "dxf_celery.demo_app", "worker", "--loglevel", "info"]
