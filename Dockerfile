# Image for the worker, beat, flower and fakecloud services of docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY atlas_tasks ./atlas_tasks
COPY workers ./workers
# [testing]: the compose file's fakecloud service. workers/ is not installed: the entry
# points run from WORKDIR (`python -m workers.worker`).
RUN pip install --no-cache-dir '.[flower,testing]'
RUN useradd --create-home atlas
USER atlas
CMD ["python", "-m", "workers.worker"]
