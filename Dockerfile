# Image for the worker, beat, flower and fakecloud services of docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY atlas_tasks ./atlas_tasks
COPY workers ./workers
RUN pip install --no-cache-dir '.[flower]'
RUN useradd --create-home atlas
USER atlas
CMD ["python", "-m", "workers.worker"]
